//! Hints: what the user can do next, as data. The library attaches them to errors and
//! reports them as events; each front end renders them in its own terms (the CLI as a
//! command line to type, an MCP server as a tool to call). No library crate spells a CLI
//! command.

use serde::Serialize;

use crate::command::RemoteCommand;

/// Something the user can do about what just happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Hint {
    /// Release a lease (and its box, if it still exists).
    #[serde(rename_all = "camelCase")]
    Stop { provider: String, lease_id: String },
    /// Release a crabbox box this machine holds no claim for.
    #[serde(rename_all = "camelCase")]
    Reclaim { provider: String, id: String },
    /// Run a command again on a kept box.
    #[serde(rename_all = "camelCase")]
    Rerun {
        provider: String,
        lease_id: String,
        command: RemoteCommand,
    },
    /// Run commands on a box (instead of what the provider cannot do).
    RunOn { provider: String, id: String },
    /// See the boxes of a provider.
    List { provider: String },
    /// Lease a box to reuse.
    Warmup { provider: String },
    /// Name one lease of several.
    #[serde(rename_all = "camelCase")]
    PickLease {
        provider: String,
        /// `(lease id, slug)` of each candidate.
        leases: Vec<(String, String)>,
    },
    /// A claim file that no longer matches its box; inspect or remove it by hand.
    StaleClaim { path: std::path::PathBuf },
    /// Follow, wait for or stop a detached run.
    #[serde(rename_all = "camelCase")]
    DetachedRun { provider: String, run_id: String },
}
