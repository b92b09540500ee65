//! One file per subcommand.

mod cleanup;
mod config;
mod detached;
mod doctor;
mod download;
mod fork;
mod lifecycle;
mod list;
mod mcp;
mod run;
mod shard;
mod shell;
mod snapshot;
mod status;
mod stop;
mod url;
mod usage;
mod warmup;
mod workspaces;

use crabbox_core::Result;

use crate::cli::{Cli, Command};

/// Runs the parsed command; returns the process exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Warmup(a) => warmup::run(&g, a).await,
        Command::Run(a) => run::run(&g, *a).await,
        Command::Status(a) => status::run(&g, a).await,
        Command::Stop(a) => stop::run(&g, a).await,
        Command::List(a) => list::run(&g, a).await,
        Command::Cleanup(a) => cleanup::run(&g, a).await,
        Command::Download(a) => download::run(&g, a).await,
        Command::Logs(a) => detached::logs(&g, a).await,
        Command::Wait(a) => detached::wait(&g, a).await,
        Command::Kill(a) => detached::kill(&g, a).await,
        Command::Runs(a) => detached::runs(&g, a).await,
        Command::Workspaces(a) => workspaces::run(&g, a).await,
        Command::Shard(a) => shard::run(&g, *a).await,
        Command::Pause(a) => lifecycle::pause(&g, a).await,
        Command::Resume(a) => lifecycle::resume(&g, a).await,
        Command::Snapshot(a) => snapshot::run(&g, a).await,
        Command::Fork(a) => fork::run(&g, a).await,
        Command::Url(a) => url::run(&g, a).await,
        Command::Usage(a) => usage::run(&g, a),
        Command::Shell(a) => shell::run(&g, a).await,
        Command::Doctor(a) => doctor::run(&g, a).await,
        Command::Config { command } => config::run(&g, command),
        Command::Mcp(a) => mcp::run(&g, a).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut crate::cli::command(),
                "crabbox",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    }
}

/// Prints a serializable value as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}
