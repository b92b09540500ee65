//! `crabbox url ID PORT`: where a port of a box is reached, and the headers to send.

use crabbox_core::Result;

use crate::cli::{GlobalArgs, UrlArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: UrlArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let out = engine.port_url(&a.id, a.port, cfg.core.ttl).await?;
    if a.json {
        super::print_json(&out);
        return Ok(0);
    }
    println!("{}", out.url);
    for (name, value) in &out.headers {
        eprintln!("crabbox: the box takes no public traffic: send the header `{name}: {value}`");
    }
    Ok(0)
}
