//! `e2b-emulator`: serves E2B's control plane and envd on one loopback address.
//!
//! Once ready it prints one JSON line, `{"api_url", "sandbox_url", "pid"}`, and
//! runs until SIGTERM or SIGINT, then kills every sandbox and exits. Tests program faults
//! into it over HTTP (see `e2b_emulator::faults`).

use clap::Parser;
use e2b_emulator::config::{ConfigError, DEFAULT_MAX_TIMEOUT_SECS};
use e2b_emulator::{Emulator, EmulatorConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "e2b-emulator",
    version,
    about = "A local, loopback-only E2B emulator"
)]
struct Args {
    /// Loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The API key clients must send in X-API-Key.
    #[arg(long, env = "E2B_EMULATOR_API_KEY")]
    api_key: String,
    /// Directory for sandbox files (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Largest sandbox timeout accepted, in seconds.
    #[arg(long, default_value_t = DEFAULT_MAX_TIMEOUT_SECS)]
    max_timeout: u64,
    /// A template the template lookup knows, besides `base` (repeatable).
    #[arg(long = "template", value_name = "NAME")]
    templates: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = EmulatorConfig::new(args.api_key);
    config.listen = args.listen;
    config.state_dir = args.state_dir;
    config.max_timeout = Duration::from_secs(args.max_timeout);
    config.templates.extend(args.templates);
    if let Err(err) = config.validate() {
        eprintln!("e2b-emulator: {err}");
        return match err {
            ConfigError::NotLoopback(_) | ConfigError::EmptyApiKey => ExitCode::from(2),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("e2b-emulator: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

/// The one line printed on stdout once the emulator serves.
#[derive(serde::Serialize)]
struct ReadyLine {
    api_url: String,
    sandbox_url: String,
    pid: u32,
}

async fn run(config: EmulatorConfig) -> ExitCode {
    let handle = match Emulator::start(config).await {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("e2b-emulator: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let ready = ReadyLine {
        api_url: handle.api_url(),
        sandbox_url: handle.sandbox_url(),
        pid: std::process::id(),
    };
    let ready = serde_json::to_string(&ready).expect("ready line serializes");
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{ready}")
        .and_then(|_| stdout.flush())
        .is_err()
    {
        handle.shutdown().await;
        return ExitCode::FAILURE;
    }
    drop(stdout);
    wait_for_stop_signal().await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, fall back to Ctrl-C handling only.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
