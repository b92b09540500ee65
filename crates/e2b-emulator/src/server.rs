//! The HTTP server: one loopback address for the control plane and envd, with the faults
//! tests program ([`crate::faults`]) applied before routing.

use crate::config::EmulatorConfig;
use crate::error::HttpError;
use crate::faults::{Fault, FaultAction, Faults, Plane, ADMIN_PREFIX};
use crate::isolation::HostTools;
use crate::sandbox::Registry;
use crate::state::AppState;
use crate::{control, envd, ports};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use crabbox_e2b_wire::headers;
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Sends envd traffic (the `E2b-Sandbox-Id` header, or an envd-only path) to
/// envd and everything else to the control plane, as E2B's proxy does.
pub fn app(state: AppState) -> Router {
    let envd = envd::router(state.clone());
    let control = control::router(state.clone());
    let ports_state = state.clone();
    Router::new()
        .route(
            ADMIN_PREFIX,
            axum::routing::get(list_faults)
                .post(add_faults)
                .delete(clear_faults),
        )
        .with_state(state)
        .fallback_service(tower::service_fn(move |mut request: Request| {
            let envd = envd.clone();
            let control = control.clone();
            let state = ports_state.clone();
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
                let router = match plane_of(&request) {
                    Plane::Envd => envd,
                    _ => control,
                };
                router.oneshot(request).await
            }
        }))
}

fn plane_of(request: &Request) -> Plane {
    if request.headers().contains_key(headers::SANDBOX_ID)
        || envd::is_envd_path(request.uri().path())
    {
        Plane::Envd
    } else {
        Plane::Control
    }
}

/// The admin routes answer only to the emulator's API key.
fn admin_allowed(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), HttpError> {
    let key = headers.get(headers::API_KEY).and_then(|v| v.to_str().ok());
    if key == Some(state.config.api_key.as_str()) {
        Ok(())
    } else {
        Err(HttpError::unauthorized(
            "the fault admin routes need the emulator's API key in X-API-Key",
        ))
    }
}

async fn list_faults(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, HttpError> {
    admin_allowed(&state, &headers)?;
    Ok(Json(state.faults.list()).into_response())
}

async fn add_faults(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, HttpError> {
    admin_allowed(&state, &headers)?;
    let faults: Vec<Fault> = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid faults: {e}")))?;
    state.faults.add(faults);
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, HttpError> {
    admin_allowed(&state, &headers)?;
    state.faults.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// A connection closed on purpose, without an answer (a fault).
#[derive(Debug)]
struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by an injected fault")
    }
}

impl std::error::Error for InjectedReset {}

/// The sandbox a request names: its `E2b-Sandbox-Id`, else the id after `sandboxes/`.
fn sandbox_named(request: &Request) -> Option<String> {
    if let Some(id) = request
        .headers()
        .get(headers::SANDBOX_ID)
        .and_then(|v| v.to_str().ok())
    {
        return Some(id.to_string());
    }
    let mut segments = request.uri().path().split('/');
    segments.find(|s| *s == "sandboxes")?;
    segments.next().filter(|s| !s.is_empty()).map(String::from)
}

/// Handles one request, applying the fault armed for it if any. `Err` closes the connection
/// without an answer.
///
/// A request with a body answered with an error may leave its body unread (a sandbox that
/// is gone answers before reading it), and then the connection cannot carry another
/// request: it is closed. As Go's servers (E2B's) do, the answer says so (`Connection:
/// close`), so a client does not send its next request down a connection about to go.
async fn handle(app: Router, state: AppState, request: Request) -> Result<Response, InjectedReset> {
    let has_body = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        || request
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut response = answer(app, state, request).await?;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

/// [`handle`], but for the connection's fate.
async fn answer(app: Router, state: AppState, request: Request) -> Result<Response, InjectedReset> {
    let path = request.uri().path().to_string();
    let (plane, method) = (plane_of(&request), request.method().as_str().to_string());
    // Read first when a fault looks for text in it and it says it is short enough to hold
    // (a body of no stated length, or a longer one, is not looked in).
    let short = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= crate::faults::BODY_MATCHED_AT_MOST);
    let (request, body) =
        if short && path != ADMIN_PREFIX && state.faults.wants_body(plane, &method, &path) {
            let (parts, body) = request.into_parts();
            match axum::body::to_bytes(body, crate::faults::BODY_MATCHED_AT_MOST).await {
                Ok(bytes) => (
                    Request::from_parts(parts, axum::body::Body::from(bytes.clone())),
                    Some(bytes),
                ),
                // Cut short by the client: nothing to handle.
                Err(_) => return Err(InjectedReset),
            }
        } else {
            (request, None)
        };
    // With how often the faults were cleared when it was taken: a clear after that ends a
    // stall.
    let taken = if path == ADMIN_PREFIX {
        None
    } else {
        state
            .faults
            .take_counted(plane, &method, &path, body.as_deref())
    };
    let Some((action, clears)) = taken else {
        return Ok(app.oneshot(request).await.unwrap_or_else(|e| match e {}));
    };
    match action {
        FaultAction::Status {
            status,
            retry_after,
            message,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = message.unwrap_or_else(|| format!("injected {}", status.as_u16()));
            let mut response = HttpError::new(status, message).into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            Ok(response)
        }
        FaultAction::Stall { ms } => {
            // Handled to the end even when the client gave up meanwhile, as a slow service
            // goes on with a request whose caller left (a create still makes its sandbox).
            let faults = state.faults.clone();
            let handled = tokio::spawn(async move {
                faults.stall(ms, clears).await;
                app.oneshot(request).await.unwrap_or_else(|e| match e {})
            });
            handled.await.map_err(|_| InjectedReset)
        }
        FaultAction::ResetBefore => Err(InjectedReset),
        FaultAction::ResetAfter => {
            let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
            // The whole answer is made (a stream runs to its end) and then lost.
            let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await;
            Err(InjectedReset)
        }
        FaultAction::DropStreamAfter { chunks } => {
            let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
            let (parts, body) = response.into_parts();
            let cut = body
                .into_data_stream()
                .take(chunks as usize)
                .chain(futures::stream::once(async {
                    // Pending for a moment first, so the server flushes what went before
                    // instead of discarding it with the connection.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(axum::Error::new(InjectedReset))
                }));
            Ok(Response::from_parts(parts, Body::from_stream(cut)))
        }
        FaultAction::KillSandbox => {
            if let Some(id) = sandbox_named(&request) {
                state.registry.kill(&id).await;
            }
            Ok(app.oneshot(request).await.unwrap_or_else(|e| match e {}))
        }
    }
}

/// Serves connections until `stop` fires; connections still open then are dropped.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    state: AppState,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of descriptors or similar: try again shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // As Go's servers (E2B's) do: a response written in parts (headers, then a streamed
        // body) must not wait for the client's delayed ACK between them.
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let (app, state) = (app.clone(), state.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    handle(app.clone(), state.clone(), request.map(Body::new))
                },
            );
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
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
        let faults = Faults::default();
        let state = AppState {
            config: Arc::new(config),
            registry: registry.clone(),
            faults: faults.clone(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = app(state.clone());
        let server = tokio::spawn(serve(listener, router, state, stop_rx));
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
            faults,
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
    faults: Faults,
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

    /// The faults armed in this emulator (also reachable over HTTP at [`ADMIN_PREFIX`]).
    pub fn faults(&self) -> &Faults {
        &self.faults
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
