//! `crabbox mcp`: the MCP server (crates/mcp) over this binary's providers. Nothing but the
//! protocol goes to stdout.

use crabbox_core::Result;
use crabbox_mcp::{CrabboxServer, HttpOptions, ServerOptions};

use crate::cli::{GlobalArgs, McpArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: McpArgs) -> Result<i32> {
    if g.class.is_some() || g.machine_type.is_some() {
        return Err(crabbox_core::Error::Usage(
            "--class/--type are not taken by `crabbox mcp`: no provider here has machine sizes"
                .into(),
        ));
    }
    let options =
        ServerOptions::from_process(crate::registry::registry(), context::flag_layers(g))?;
    let server = CrabboxServer::new(options);
    match a.http {
        None => crabbox_mcp::serve_stdio(server).await?,
        Some(addr) => {
            let opts = HttpOptions {
                addr,
                allow_remote: a.allow_remote,
            };
            crabbox_mcp::serve_http(server, opts, |local| {
                eprintln!("crabbox mcp: serving MCP at http://{local}/mcp");
            })
            .await?
        }
    }
    Ok(0)
}
