//! crabbox-mcp: crabbox as a Model Context Protocol server, so that a coding agent leases,
//! syncs and runs on boxes through tool calls instead of scraping the CLI's text.
//!
//! A front end like the CLI, over the same library: each tool call loads the config layers
//! for its repository (the server's current directory or the call's `root`), builds the
//! engine with [`crabbox_core::frontend`], calls it, and returns the outcome as structured
//! JSON. The engine's status lines and the command's output become progress notifications;
//! an MCP cancel fires the run's cancel token, as Ctrl-C does in the CLI.
//!
//! - [`server`]: the server, its state, and the tool registry (`tools/`, one file per tool).
//! - `call`: what one tool call sets up (config, engine, reporter, credentials to mask).
//! - `progress`: the engine's reports and the command's output lines as progress notifications.
//! - `output`: the command's output kept as tails, the whole of it in a file when cut.
//! - `failure`: crabbox errors as protocol errors (bad input) or failed tool results.
//! - [`transport`]: stdio, and Streamable HTTP on loopback.
//!
//! Nothing here writes to stdout: the stdio transport owns it.

mod call;
mod failure;
mod inflight;
mod output;
mod progress;
pub mod server;
mod tools;
pub mod transport;

pub use server::{CrabboxServer, ServerOptions};
pub use transport::{serve_http, serve_stdio, HttpOptions};
