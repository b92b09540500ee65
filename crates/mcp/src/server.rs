//! The server: what every tool call shares (the providers, the directory and environment it
//! was started with, the runs in flight) and the MCP handler over the tool registry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crabbox_core::config::FlagValue;
use crabbox_core::registry::Registry;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool_handler, ServerHandler};

use crate::inflight::InFlight;

/// How the server was started.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The providers tool calls may use (the CLI's registry).
    pub registry: Registry,
    /// The directory a call without `root` works in (the server's current directory).
    pub cwd: PathBuf,
    /// The server's environment: config layers, credentials, what `env.allow` forwards.
    pub env: BTreeMap<String, String>,
    /// Flags given to `crabbox mcp` itself (`--provider`, `--e2b-*`), laid over each call's
    /// config as in the CLI.
    pub flags: Vec<FlagValue>,
    /// Bytes of each output stream a `run` result holds by default (its tail).
    pub output_limit: usize,
    /// Where cut output is kept in full (`<state dir>/mcp-output`).
    pub output_dir: PathBuf,
}

/// Default tail of each stream in a `run` result: enough for a failing test's report,
/// little enough for an agent's context.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024;

impl ServerOptions {
    /// From the process's own directory and environment.
    pub fn from_process(registry: Registry, flags: Vec<FlagValue>) -> crabbox_core::Result<Self> {
        let inv = crabbox_core::frontend::Invocation::from_process(flags)?;
        Ok(Self {
            registry,
            cwd: inv.cwd,
            env: inv.env,
            flags: inv.flags,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            output_dir: crabbox_core::paths::state_dir()?.join("mcp-output"),
        })
    }
}

/// The MCP server; cheap to clone (one per HTTP session shares the runs in flight).
#[derive(Clone)]
pub struct CrabboxServer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub options: ServerOptions,
    pub inflight: InFlight,
    pub tools: ToolRouter<CrabboxServer>,
}

impl CrabboxServer {
    pub fn new(options: ServerOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                inflight: InFlight::default(),
                tools: crate::tools::router(),
            }),
        }
    }

    /// Waits until no tool call is running (a cancelled run stops its command and releases
    /// its box first), at most `budget`; whether they all ended.
    pub async fn wait_idle(&self, budget: std::time::Duration) -> bool {
        self.inner.inflight.wait_idle(budget).await
    }

    pub(crate) fn options(&self) -> &ServerOptions {
        &self.inner.options
    }
}

const INSTRUCTIONS: &str = "crabbox syncs a repository's working tree to a box (a local \
directory or an E2B sandbox) and runs a command there. `run` does it in one call on a fresh \
box that is released afterwards; for repeated runs, `warmup` leases a box and `run` with its \
`id` sends only what changed. `stop` releases a lease. Tools work in the server's directory \
unless given `root`.";

#[tool_handler(router = self.inner.tools)]
impl ServerHandler for CrabboxServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("crabbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
