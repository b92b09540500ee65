//! envd's Connect RPC services, JSON codec: `process.Process` (server streams
//! `Start`/`Connect`, unary `List`/`SendSignal`/`SendInput`/`CloseStdin`/`Update`)
//! and `filesystem.Filesystem` (unary `Stat`/`MakeDir`/`ListDir`/`Remove`/`Move`).

use super::{rpc_user, SandboxExt};
use crate::error::RpcError;
use crate::isolation::SandboxUser;
use crate::process::{self, OutputEvent, ProcessHandle, SpawnSpec};
use crate::sandbox::Sandbox;
use crate::sandbox_fs::{fs_error, Resolved};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use crabbox_e2b_wire::connect::{STREAM_CONTENT_TYPE, UNARY_CONTENT_TYPE};
use crabbox_e2b_wire::envelope::{self, EnvelopeDecoder};
use crabbox_e2b_wire::filesystem::{
    EntryInfo, EntryResponse, FileType, ListDirRequest, ListDirResponse, MoveRequest, PathRequest,
    RemoveResponse,
};
use crabbox_e2b_wire::process::{
    CloseStdinRequest, ConnectRequest, Empty, KeepAlive, ListResponse, ProcessEvent, ProcessInput,
    ProcessSelector, SendInputRequest, SendSignalRequest, StartEvent, StartRequest, StartResponse,
    UpdateRequest,
};
use crabbox_e2b_wire::{headers, Code, ConnectError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

fn unary_ok<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, UNARY_CONTENT_TYPE)],
            json,
        )
            .into_response(),
        Err(e) => {
            RpcError::new(Code::Internal, format!("encoding the response: {e}")).into_response()
        }
    }
}

/// Answers 415 unless the request's `Content-Type` is `expected`, as envd's Connect handlers
/// do (a unary call must be `application/json`, a stream `application/connect+json`).
fn wrong_content_type(headers: &HeaderMap, expected: &str) -> Option<Response> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if got.as_deref() == Some(expected) {
        return None;
    }
    Some(
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::ACCEPT, expected)],
            format!("unsupported content type {got:?}, expected {expected}"),
        )
            .into_response(),
    )
}

fn parse_unary<T: DeserializeOwned>(body: &Bytes) -> Result<T, ConnectError> {
    if body.is_empty() {
        // envd's JSON codec refuses a zero-length payload rather than reading it as `{}`.
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "zero-length payload is not a valid JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ConnectError::new(
            Code::InvalidArgument,
            format!("invalid request message: {e}"),
        )
    })
}

/// The request message of a server-streaming call: exactly one envelope, as the Connect
/// protocol requires (a bare JSON body is refused, as envd refuses it).
fn parse_stream_request<T: DeserializeOwned>(body: &Bytes) -> Result<T, ConnectError> {
    let mut decoder = EnvelopeDecoder::new();
    let first = decoder
        .decode(body)
        .map_err(|e| ConnectError::new(Code::InvalidArgument, e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "empty request stream"))?;
    if first.is_compressed() {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "compressed messages are not supported",
        ));
    }
    parse_unary(&first.payload)
}

fn stream_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, STREAM_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// A stream that fails before its first message: only the end-of-stream envelope.
fn stream_error(err: ConnectError) -> Response {
    stream_response(Body::from(envelope::encode_end_stream(Some(&err))))
}

fn event_envelope(event: ProcessEvent) -> Bytes {
    envelope::encode_message(&StartResponse::new(event)).expect("process events serialize")
}

enum Phase {
    Start,
    Events,
    Done,
}

/// Start event, then output as it comes (keepalives during silence), then the
/// end event and the end-of-stream envelope. When the sandbox is killed under the command
/// the stream is dropped instead, with no end event: E2B's proxy cuts the connection of a
/// sandbox that goes away, so a client learns it from the control plane, not from envd.
fn event_stream(
    pid: u32,
    events: mpsc::UnboundedReceiver<OutputEvent>,
    keepalive: Duration,
    killed: Arc<AtomicBool>,
) -> Body {
    let stream = futures::stream::unfold((Phase::Start, events), move |(phase, mut events)| {
        let killed = killed.clone();
        async move {
            let chunk = match phase {
                Phase::Done => return None,
                Phase::Start => {
                    let start = event_envelope(ProcessEvent::Start(StartEvent { pid }));
                    return Some((Ok::<_, std::io::Error>(start), (Phase::Events, events)));
                }
                Phase::Events => tokio::time::timeout(keepalive, events.recv()).await,
            };
            Some(match chunk {
                Ok(Some(OutputEvent::Data(data))) => (
                    Ok(event_envelope(ProcessEvent::Data(data))),
                    (Phase::Events, events),
                ),
                Ok(Some(OutputEvent::End(_))) | Ok(None) if killed.load(Ordering::SeqCst) => (
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the sandbox was killed",
                    )),
                    (Phase::Done, events),
                ),
                Ok(Some(OutputEvent::End(end))) => {
                    let mut out = event_envelope(ProcessEvent::End(end)).to_vec();
                    out.extend_from_slice(&envelope::encode_end_stream(None));
                    (Ok(Bytes::from(out)), (Phase::Done, events))
                }
                Ok(None) => {
                    let err = ConnectError::new(
                        Code::Unavailable,
                        "the process output ended without an exit status",
                    );
                    (
                        Ok(envelope::encode_end_stream(Some(&err))),
                        (Phase::Done, events),
                    )
                }
                Err(_) => (
                    Ok(event_envelope(ProcessEvent::Keepalive(KeepAlive {}))),
                    (Phase::Events, events),
                ),
            })
        }
    });
    Body::from_stream(stream)
}

fn keepalive_interval(state: &AppState, headers: &HeaderMap) -> Duration {
    let requested = headers
        .get(headers::KEEPALIVE_PING_INTERVAL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
        .unwrap_or(state.config.max_keepalive_interval);
    requested.min(state.config.max_keepalive_interval)
}

fn connect_timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(headers::CONNECT_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

fn select_process(
    sandbox: &Sandbox,
    selector: Option<&ProcessSelector>,
) -> Result<Arc<ProcessHandle>, ConnectError> {
    match selector {
        Some(ProcessSelector::Pid(pid)) => sandbox.processes.get(*pid).ok_or_else(|| {
            ConnectError::new(Code::NotFound, format!("process with pid {pid} not found"))
        }),
        Some(ProcessSelector::Tag(tag)) => sandbox.processes.by_tag(tag).ok_or_else(|| {
            ConnectError::new(Code::NotFound, format!("process with tag {tag} not found"))
        }),
        None => Err(ConnectError::new(
            Code::InvalidArgument,
            "a process selector (pid or tag) is required",
        )),
    }
}

/// `POST /process.Process/{method}`.
pub async fn process(
    State(state): State<AppState>,
    axum::Extension(sandbox): SandboxExt,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = match method.as_str() {
        "Start" | "Connect" => STREAM_CONTENT_TYPE,
        _ => UNARY_CONTENT_TYPE,
    };
    if let Some(refused) = wrong_content_type(&headers, expected) {
        return refused;
    }
    match method.as_str() {
        "Start" => start(&state, &sandbox, &headers, &body).await,
        "Connect" => connect(&state, &sandbox, &headers, &body),
        _ => match process_unary(&sandbox, &method, &body).await {
            Ok(response) => response,
            Err(err) => RpcError(err).into_response(),
        },
    }
}

async fn start(state: &AppState, sandbox: &Sandbox, headers: &HeaderMap, body: &Bytes) -> Response {
    match start_process(state, sandbox, headers, body).await {
        Ok((handle, events)) => stream_response(event_stream(
            handle.pid,
            events,
            keepalive_interval(state, headers),
            sandbox.killed.clone(),
        )),
        Err(err) => stream_error(err),
    }
}

async fn start_process(
    state: &AppState,
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Arc<ProcessHandle>, mpsc::UnboundedReceiver<OutputEvent>), ConnectError> {
    let request: StartRequest = parse_stream_request(body)?;
    let user = rpc_user(headers)?;
    let config = request
        .process
        .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "`process` is required"))?;
    if config.cmd.is_empty() {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "`process.cmd` is required",
        ));
    }
    let cwd = config
        .cwd
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| user.home.to_string());
    let resolved = sandbox.fs.resolve(&cwd, user, true)?;
    if !resolved.host.is_dir() {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!("cwd '{}' does not exist", resolved.path),
        ));
    }
    sandbox.fs.check_readable(&resolved, user)?;
    let mut envs: Vec<(String, String)> = vec![
        ("HOME".into(), user.home.into()),
        ("USER".into(), user.name.into()),
        ("LOGNAME".into(), user.name.into()),
        ("PATH".into(), process::DEFAULT_PATH.into()),
    ];
    envs.extend(sandbox.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    envs.extend(config.envs.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = SpawnSpec {
        user,
        cwd: resolved.path,
        envs,
        config,
        tag: request.tag,
        stdin: request.stdin.unwrap_or(false),
        pty: request.pty.map(|p| p.size.unwrap_or_default()),
        deadline: connect_timeout(headers),
    };
    let cmd = {
        let namespace = sandbox.namespace.lock().expect("namespace lock");
        let namespace = namespace.as_ref().ok_or_else(|| {
            ConnectError::new(
                Code::Unavailable,
                format!("sandbox {} is shutting down", sandbox.id),
            )
        })?;
        namespace.command(
            &state.registry.tools,
            spec.user,
            &spec.cwd,
            &spec.envs,
            &spec.config.cmd,
            &spec.config.args,
        )
    };
    process::spawn(&sandbox.processes, cmd, spec).await
}

fn connect(state: &AppState, sandbox: &Sandbox, headers: &HeaderMap, body: &Bytes) -> Response {
    let attached = parse_stream_request::<ConnectRequest>(body)
        .and_then(|request| select_process(sandbox, request.process.as_ref()));
    match attached {
        Ok(handle) => stream_response(event_stream(
            handle.pid,
            handle.subscribe(),
            keepalive_interval(state, headers),
            sandbox.killed.clone(),
        )),
        Err(err) => stream_error(err),
    }
}

async fn process_unary(
    sandbox: &Sandbox,
    method: &str,
    body: &Bytes,
) -> Result<Response, ConnectError> {
    match method {
        "List" => {
            let processes = sandbox.processes.list().iter().map(|p| p.info()).collect();
            Ok(unary_ok(&ListResponse { processes }))
        }
        "SendSignal" => {
            let request: SendSignalRequest = parse_unary(body)?;
            let handle = select_process(sandbox, request.process.as_ref())?;
            let Some(signal) = request.signal.posix_number() else {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "a signal is required",
                ));
            };
            handle.signal(signal);
            Ok(unary_ok(&Empty {}))
        }
        "SendInput" => {
            let request: SendInputRequest = parse_unary(body)?;
            let handle = select_process(sandbox, request.process.as_ref())?;
            match request.input {
                Some(ProcessInput::Stdin(bytes)) => handle.write_input(&bytes, false).await?,
                Some(ProcessInput::Pty(bytes)) => handle.write_input(&bytes, true).await?,
                None => {}
            }
            Ok(unary_ok(&Empty {}))
        }
        "CloseStdin" => {
            let request: CloseStdinRequest = parse_unary(body)?;
            let handle = select_process(sandbox, request.process.as_ref())?;
            handle.close_stdin().await?;
            Ok(unary_ok(&Empty {}))
        }
        "Update" => {
            let request: UpdateRequest = parse_unary(body)?;
            let handle = select_process(sandbox, request.process.as_ref())?;
            if let Some(size) = request.pty.and_then(|p| p.size) {
                handle.resize(size)?;
            }
            Ok(unary_ok(&Empty {}))
        }
        other => Err(ConnectError::new(
            Code::Unimplemented,
            format!("process.Process/{other} is not implemented by the emulator"),
        )),
    }
}

/// `POST /filesystem.Filesystem/{method}`.
pub async fn filesystem(
    axum::Extension(sandbox): SandboxExt,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = wrong_content_type(&headers, UNARY_CONTENT_TYPE) {
        return refused;
    }
    let result = match rpc_user(&headers) {
        Ok(user) => filesystem_unary(&sandbox, user, &method, &body).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(response) => response,
        Err(err) => RpcError(err).into_response(),
    }
}

async fn filesystem_unary(
    sandbox: &Sandbox,
    user: SandboxUser,
    method: &str,
    body: &Bytes,
) -> Result<Response, ConnectError> {
    let fs = &sandbox.fs;
    match method {
        "Stat" => {
            let request: PathRequest = parse_unary(body)?;
            let resolved = fs.resolve(&request.path, user, false)?;
            fs.check_readable(&resolved, user)?;
            let entry = fs.entry_info(&resolved, user)?;
            Ok(unary_ok(&EntryResponse { entry: Some(entry) }))
        }
        "MakeDir" => {
            let request: PathRequest = parse_unary(body)?;
            let resolved = fs.resolve(&request.path, user, true)?;
            fs.check_writable(&resolved, user)?;
            if std::fs::symlink_metadata(&resolved.host).is_ok() {
                return Err(ConnectError::new(
                    Code::AlreadyExists,
                    format!("directory '{}' already exists", resolved.path),
                ));
            }
            fs.create_parents(&resolved, user)?;
            std::fs::create_dir(&resolved.host).map_err(|e| fs_error(&e, &resolved.path))?;
            fs.give_to(&resolved.host, user);
            let entry = fs.entry_info(&resolved, user)?;
            Ok(unary_ok(&EntryResponse { entry: Some(entry) }))
        }
        "ListDir" => {
            let request: ListDirRequest = parse_unary(body)?;
            let resolved = fs.resolve(&request.path, user, true)?;
            fs.check_readable(&resolved, user)?;
            let meta =
                std::fs::metadata(&resolved.host).map_err(|e| fs_error(&e, &resolved.path))?;
            if !meta.is_dir() {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    format!("path '{}' is not a directory", resolved.path),
                ));
            }
            let mut entries = Vec::new();
            list_dir(sandbox, user, &resolved, request.depth.max(1), &mut entries)?;
            Ok(unary_ok(&ListDirResponse { entries }))
        }
        "Remove" => {
            let request: PathRequest = parse_unary(body)?;
            let resolved = fs.resolve(&request.path, user, false)?;
            fs.check_writable(&resolved, user)?;
            let result = match std::fs::symlink_metadata(&resolved.host) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&resolved.host),
                Ok(_) => std::fs::remove_file(&resolved.host),
            };
            result.map_err(|e| fs_error(&e, &resolved.path))?;
            Ok(unary_ok(&RemoveResponse {}))
        }
        "Move" => {
            let request: MoveRequest = parse_unary(body)?;
            let source = fs.resolve(&request.source, user, false)?;
            let destination = fs.resolve(&request.destination, user, false)?;
            fs.check_writable(&source, user)?;
            fs.check_writable(&destination, user)?;
            std::fs::symlink_metadata(&source.host).map_err(|e| fs_error(&e, &source.path))?;
            fs.create_parents(&destination, user)?;
            std::fs::rename(&source.host, &destination.host)
                .map_err(|e| fs_error(&e, &destination.path))?;
            let entry = fs.entry_info(&destination, user)?;
            Ok(unary_ok(&EntryResponse { entry: Some(entry) }))
        }
        other => Err(ConnectError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{other} is not implemented by the emulator"),
        )),
    }
}

fn list_dir(
    sandbox: &Sandbox,
    user: SandboxUser,
    dir: &Resolved,
    depth: u32,
    out: &mut Vec<EntryInfo>,
) -> Result<(), ConnectError> {
    let mut names: Vec<String> = std::fs::read_dir(&dir.host)
        .map_err(|e| fs_error(&e, &dir.path))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let child_path = if dir.path == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", dir.path)
        };
        let Ok(child) = sandbox.fs.resolve(&child_path, user, false) else {
            continue;
        };
        let Ok(entry) = sandbox.fs.entry_info(&child, user) else {
            continue;
        };
        let descend = depth > 1 && entry.file_type == FileType::Directory && !entry.is_symlink;
        out.push(entry);
        if descend {
            list_dir(sandbox, user, &child, depth - 1, out)?;
        }
    }
    Ok(())
}
