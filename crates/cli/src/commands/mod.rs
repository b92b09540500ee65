//! One file per subcommand.

mod cleanup;
mod config;
mod list;
mod mcp;
mod run;
mod status;
mod stop;
mod warmup;

use crabbox_core::Result;

use crate::cli::{Cli, Command};

/// Runs the parsed command; returns the process exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Warmup(a) => warmup::run(&g, a).await,
        Command::Run(a) => run::run(&g, a).await,
        Command::Status(a) => status::run(&g, a).await,
        Command::Stop(a) => stop::run(&g, a).await,
        Command::List(a) => list::run(&g, a).await,
        Command::Cleanup(a) => cleanup::run(&g, a).await,
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
