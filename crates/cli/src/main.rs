//! `crabbox`: warm a box, sync the working tree, run the suite.
//!
//! This crate is the clap front end only: each subcommand is a file in `commands/` that parses
//! its arguments and calls the core library and the chosen provider.

mod cli;
mod commands;
mod context;
mod registry;
mod render;

fn main() {
    let cli = cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crabbox: error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crabbox: error: {e}");
            for hint in e.hints() {
                eprintln!("crabbox: hint: {}", render::hint(hint));
            }
            e.exit_code()
        }
    };
    // Do not wait for stray blocking tasks (e.g. a stdin reader) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
