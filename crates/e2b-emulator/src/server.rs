//! The HTTP server: one loopback address for the control plane and envd.

use crate::config::EmulatorConfig;
use crate::isolation::HostTools;
use crate::sandbox::Registry;
use crate::state::AppState;
use crate::{control, envd, ports};
use axum::extract::Request;
use axum::Router;
use crabbox_e2b_wire::headers;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Sends envd traffic (the `E2b-Sandbox-Id` header, or an envd-only path) to
/// envd and everything else to the control plane, as E2B's proxy does.
pub fn app(state: AppState) -> Router {
    let envd = envd::router(state.clone());
    let control = control::router(state.clone());
    Router::new().fallback_service(tower::service_fn(move |mut request: Request| {
        let envd = envd.clone();
        let control = control.clone();
        let state = state.clone();
        async move {
            match ports::target(&request) {
                ports::Target::Port { sandbox_id, port } => {
                    return Ok(ports::forward(state, sandbox_id, port, request).await)
                }
                ports::Target::EnvdByHost { sandbox_id } => {
                    ports::tag_envd(&mut request, &sandbox_id)
                }
                ports::Target::Other => {}
            }
            let is_envd = request.headers().contains_key(headers::SANDBOX_ID)
                || envd::is_envd_path(request.uri().path());
            let router = if is_envd { envd } else { control };
            router.oneshot(request).await
        }
    }))
}

/// Entry point of the library API.
pub struct Emulator;

impl Emulator {
    /// Checks the host, binds the address and serves until [`EmulatorHandle::shutdown`].
    pub async fn start(config: EmulatorConfig) -> anyhow::Result<EmulatorHandle> {
        config.validate()?;
        let tools = tokio::task::spawn_blocking(HostTools::check)
            .await
            .map_err(|e| anyhow::anyhow!("checking the host: {e}"))??;
        let (state_dir, temp_dir) = match &config.state_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("e2b-emulator-")
                    .tempdir()
                    .map_err(|e| anyhow::anyhow!("creating a temporary state directory: {e}"))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let sandboxes_dir = state_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir).map_err(|e| {
            anyhow::anyhow!(
                "creating the state directory {}: {e}",
                sandboxes_dir.display()
            )
        })?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(sandboxes_dir, tools, config.max_timeout));
        let state = AppState {
            config: Arc::new(config),
            registry: registry.clone(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app(state))
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let reaper_registry = registry.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                reaper_registry.reap_expired().await;
            }
        });
        Ok(EmulatorHandle {
            addr,
            registry,
            stop: Some(stop_tx),
            server: Some(server),
            reaper,
            _temp_dir: temp_dir,
        })
    }
}

/// A running emulator.
pub struct EmulatorHandle {
    addr: SocketAddr,
    registry: Arc<Registry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    reaper: tokio::task::JoinHandle<()>,
    _temp_dir: Option<tempfile::TempDir>,
}

impl EmulatorHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the control plane (`E2B_API_URL`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL of envd for every sandbox (`E2B_SANDBOX_URL`).
    pub fn sandbox_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills every sandbox and stops serving; the temporary state directory goes too.
    pub async fn shutdown(mut self) {
        self.reaper.abort();
        self.registry.kill_all().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.reaper.abort();
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}
