//! How the server is reached: stdio (what agents start as a child process), or Streamable
//! HTTP at `/mcp` on a loopback address. Either way, when the client goes (stdin closes,
//! Ctrl-C), runs in flight are cancelled and the server waits for them to stop their
//! commands and release their boxes before it returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crabbox_core::error::{Error, Result};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::server::CrabboxServer;

/// How long the server waits at exit for cancelled runs to clean up (a run's own cancel
/// budget is 30 s).
const EXIT_BUDGET: Duration = Duration::from_secs(40);

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(server: CrabboxServer) -> Result<()> {
    prune_output(&server);
    let running = server
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::Transport(format!("MCP over stdio: the client's handshake: {e}")))?;
    let _ = running.waiting().await;
    settle(&server).await;
    Ok(())
}

/// Where Streamable HTTP listens.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    /// Listen on an address other machines can reach (`--allow-remote`). Anyone who reaches
    /// it can run commands with this user's credentials, so it must be asked for.
    pub allow_remote: bool,
}

/// Serves MCP over Streamable HTTP at `http://<addr>/mcp` until Ctrl-C / SIGTERM. `ready` is
/// told the bound address (the port, when `addr` asked for port 0).
pub async fn serve_http(
    server: CrabboxServer,
    opts: HttpOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    if !opts.addr.ip().is_loopback() && !opts.allow_remote {
        return Err(Error::Usage(format!(
            "--http {}: not a loopback address; anyone who reaches it could run commands with \
             your credentials. Use 127.0.0.1 or [::1], or pass --allow-remote if you mean it",
            opts.addr
        )));
    }
    prune_output(&server);
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(Error::io("listening on", opts.addr.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(Error::io("reading the address of", opts.addr.to_string()))?;
    let stop = CancellationToken::new();
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = stop.child_token();
    if opts.allow_remote {
        // The default host check admits loopback names only (DNS rebinding); a remote
        // listener is reached by its own address.
        let mut hosts = config.allowed_hosts.clone();
        hosts.push(local.ip().to_string());
        config = config.with_allowed_hosts(hosts);
    }
    let for_sessions = server.clone();
    let service = StreamableHttpService::new(
        move || Ok(for_sessions.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().route_service("/mcp", service);
    ready(local);
    let shutdown = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(Error::io("serving MCP over HTTP on", local.to_string()))?;
    settle(&server).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Waits for runs in flight (cancelled as their client went) to clean up.
async fn settle(server: &CrabboxServer) {
    if !server.wait_idle(Duration::ZERO).await {
        eprintln!("crabbox mcp: the client went: waiting for runs in flight to stop");
        if !server.wait_idle(EXIT_BUDGET).await {
            eprintln!(
                "crabbox mcp: runs still going after {}s; exiting (`list` shows boxes left)",
                EXIT_BUDGET.as_secs()
            );
        }
    }
}

fn prune_output(server: &CrabboxServer) {
    crate::output::prune(&server.options().output_dir, crate::output::KEEP_OUTPUT);
}
