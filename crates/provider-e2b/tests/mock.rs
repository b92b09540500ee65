//! Wire-level behaviour the emulator cannot provoke, against a tiny scripted E2B mock:
//! streams that end without an end event, retries honouring `Retry-After`, create never
//! retried, list pagination, the cancel signal sequence, no redirects followed; a create
//! that made its sandbox then failed, hung or was cancelled, a failed DELETE, a failed claim
//! write, an apply script that outlives `sync.timeout`, and answers of both planes that quote
//! every secret the client holds, in every encoding. Faults: connections reset mid-call, a
//! `Retry-After` beyond the cap, create refused for load, envd refusing the sync's upload or
//! saying the sandbox is gone, and a sandbox killed while its command runs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::World;
use crabbox_core::conformance::{request, run_and_cancel, CapturedOutput, RepoFixture};
use crabbox_core::engine::StatusRequest;
use crabbox_core::events::SilentReporter;
use crabbox_core::Error;
use crabbox_e2b_wire::envelope;
use crabbox_provider_e2b::RetryPolicy;
use serde_json::{json, Value};

const TOKEN: &str = "tok-secret-123456";
/// The traffic access token every sandbox answer carries.
const TRAFFIC: &str = "trf-secret-7890abcdef";

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamMode {
    /// start, some output, then the body just ends.
    NoEnd,
    /// start, output, then keepalives forever.
    Forever,
}

/// What the create handler does after recording the sandbox (when it records one).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CreateMode {
    /// 201 with the sandbox.
    Created,
    /// Makes the sandbox, then answers 500.
    MadeThen500,
    /// Makes the sandbox, then breaks the connection without an answer.
    MadeThenDrop,
    /// Makes the sandbox, then never answers.
    MadeThenHang,
}

/// One request as it reached the mock: what the SDK comparison tests look at.
#[derive(Clone, Debug)]
struct Wire {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn query_keys(&self) -> Vec<&str> {
        let mut keys: Vec<_> = self.query.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort();
        keys
    }

    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

struct Mock {
    wire: Mutex<Vec<Wire>>,
    log: Mutex<Vec<String>>,
    get_failures: AtomicUsize,
    list_failures: AtomicUsize,
    retry_after: &'static str,
    create_status: u16,
    create_mode: CreateMode,
    delete_status: u16,
    /// Sandboxes the create handler made: id and metadata.
    made: Mutex<Vec<(String, Value)>>,
    /// Claims directory to sabotage from inside create (the claim write then fails).
    break_claim_in: Option<std::path::PathBuf>,
    /// Signalled when a create that does not answer 201 has made its sandbox: the point a
    /// test cancels at to catch the provider mid-create.
    made_one: tokio::sync::Notify,
    stream: StreamMode,
    /// Connections to reset (no answer, an RST) on `GET /sandboxes/{id}` and `DELETE`.
    reset_gets: AtomicUsize,
    reset_deletes: AtomicUsize,
    /// The command's start kills the sandbox: from then on it is gone from the control plane.
    kill_on_start: bool,
    gone: AtomicBool,
    /// Status of `POST /files` (200: taken).
    upload_status: u16,
    /// Status and body of `process.Process/Start` when it refuses (0: it starts).
    start_refusal: Option<(u16, &'static str)>,
    /// Error answers quote every secret in the forms of [`quoted_secrets`].
    leak: bool,
    /// The command stream ends with an end-of-stream error that quotes the secrets.
    leak_in_stream_end: bool,
    /// MakeDir answers 200 with a body of the wrong shape that quotes the secrets.
    leak_in_make_dir: bool,
    /// A fork makes its sandboxes (with the source's tags), then the connection drops.
    fork_then_drop: bool,
}

type S = State<Arc<Mock>>;

impl Mock {
    fn new(stream: StreamMode) -> Self {
        Self {
            wire: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            get_failures: AtomicUsize::new(0),
            list_failures: AtomicUsize::new(0),
            retry_after: "1",
            create_status: 201,
            create_mode: CreateMode::Created,
            delete_status: 204,
            made: Mutex::new(Vec::new()),
            break_claim_in: None,
            made_one: tokio::sync::Notify::new(),
            stream,
            reset_gets: AtomicUsize::new(0),
            reset_deletes: AtomicUsize::new(0),
            kill_on_start: false,
            gone: AtomicBool::new(false),
            upload_status: 200,
            start_refusal: None,
            leak: false,
            leak_in_stream_end: false,
            leak_in_make_dir: false,
            fork_then_drop: false,
        }
    }

    fn note(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }

    fn entries(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.entries()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }

    fn overloaded(&self) -> Response {
        self.refusing(503)
    }

    fn refusing(&self, status: u16) -> Response {
        (
            StatusCode::from_u16(status).unwrap(),
            [("retry-after", self.retry_after)],
            axum::Json(json!({"code": status, "message": "overloaded"})),
        )
            .into_response()
    }

    /// An error answer quoting the secrets (when `leak`), as plain text.
    fn leaking(&self, status: u16) -> Response {
        (StatusCode::from_u16(status).unwrap(), quoted_secrets()).into_response()
    }

    /// Takes one of `counter`'s pending resets: this request's connection is to be reset.
    fn take_reset(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Every secret the client holds, quoted the ways a server might: raw, the key without its
/// `e2b_` prefix, JSON-escaped and URL-encoded. Short enough to survive a 300-character cut.
fn quoted_secrets() -> String {
    let json = |s: &str| s.replace('_', "\\u005f").replace('-', "\\u002d");
    let url = |s: &str| s.replace('_', "%5F").replace('-', "%2d");
    format!(
        "k={} b={} j={} u={} t={} tj={} tu={} x={} xu={}",
        common::KEY,
        &common::KEY[4..],
        json(common::KEY),
        url(common::KEY),
        TOKEN,
        json(TOKEN),
        url(TOKEN),
        TRAFFIC,
        url(TRAFFIC),
    )
}

/// Fails unless `text` is free of every secret however it is quoted: checked after undoing
/// doubled backslashes, JSON `\uXXXX` escapes and percent-encoding.
fn assert_no_secret(text: &str) {
    // Quoted more than once (a parser's complaint quotes the escapes it was given).
    let mut unquoted = text.to_string();
    while unquoted.contains("\\\\") {
        unquoted = unquoted.replace("\\\\", "\\");
    }
    let mut plain = String::new();
    let mut rest = unquoted.as_str();
    while let Some(i) = rest.find("\\u") {
        plain.push_str(&rest[..i]);
        let hex = rest.get(i + 2..i + 6).unwrap_or("");
        match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
            Some(c) if hex.len() == 4 => {
                plain.push(c);
                rest = &rest[i + 6..];
            }
            _ => {
                plain.push_str("\\u");
                rest = &rest[i + 2..];
            }
        }
    }
    plain.push_str(rest);
    let plain = crabbox_e2b_wire::control::percent_decode(&plain);
    for secret in [&common::KEY[4..], TOKEN, TRAFFIC] {
        assert!(!plain.contains(secret), "a secret leaked: {text}");
    }
}

/// A connection the mock can reset: once `reset` is set, its next write fails and it is
/// closed with `SO_LINGER` 0, so the client sees a reset instead of an answer.
struct ResettableIo {
    stream: tokio::net::TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResettableIo {
    fn broken(&self) -> Option<std::io::Error> {
        if !self.reset.load(Ordering::SeqCst) {
            return None;
        }
        let _ = self.stream.set_zero_linger();
        Some(std::io::ErrorKind::ConnectionReset.into())
    }
}

impl tokio::io::AsyncRead for ResettableIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ResettableIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(e) = self.broken() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(e) = self.broken() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The handle a handler resets its request's connection with.
#[derive(Clone, Debug)]
struct Conn(Arc<AtomicBool>);

impl Conn {
    /// Resets the connection instead of answering: what the handler returns is never sent.
    fn reset(&self) -> Response {
        self.0.store(true, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

struct ResettableListener(tokio::net::TcpListener);

impl axum::serve::Listener for ResettableListener {
    type Io = ResettableIo;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((stream, _)) = self.0.accept().await {
                let reset = Arc::new(AtomicBool::new(false));
                let io = ResettableIo {
                    stream,
                    reset: reset.clone(),
                };
                return (io, Conn(reset));
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Conn(Arc::default()))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ResettableListener>>
    for Conn
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ResettableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

fn sandbox(id: &str) -> Value {
    json!({"templateID": "base", "sandboxID": id, "clientID": "mock", "envdVersion": "0.6.13",
           "envdAccessToken": TOKEN, "trafficAccessToken": TRAFFIC, "domain": null})
}

fn listed(id: &str, lease: &str) -> Value {
    json!({"templateID": "base", "sandboxID": id, "clientID": "mock",
           "startedAt": "2024-01-01T00:00:00Z", "endAt": "2024-01-01T01:00:00Z",
           "cpuCount": 2, "memoryMB": 512, "diskSizeMB": 1024, "state": "running",
           "envdVersion": "0.6.13",
           "metadata": {"crabbox": "true", "provider": "e2b", "lease": lease, "slug": "blue-crab"}})
}

async fn create(State(m): S, body: Bytes) -> Response {
    m.note("POST /v2/sandboxes".into());
    if m.create_status != 201 {
        return m.refusing(m.create_status);
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    let meta = body["metadata"].clone();
    if let (Some(dir), Some(lease)) = (&m.break_claim_in, meta["lease"].as_str()) {
        // A directory where the claim goes: renaming the finished claim into place fails.
        let at = dir.join(format!("{lease}.json"));
        let _ = std::fs::remove_file(&at);
        std::fs::create_dir_all(at.join("in-the-way")).unwrap();
    }
    if m.create_mode == CreateMode::Created {
        m.made.lock().unwrap().push(("sbx1".into(), meta));
        return (StatusCode::CREATED, axum::Json(sandbox("sbx1"))).into_response();
    }
    let id = format!("made{}", m.count("made ") + 1);
    m.note(format!(
        "made {id} lease={}",
        meta["lease"].as_str().unwrap_or("")
    ));
    m.made.lock().unwrap().push((id, meta));
    m.made_one.notify_one();
    match m.create_mode {
        CreateMode::MadeThen500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"code": 500, "message": "internal error"})),
        )
            .into_response(),
        CreateMode::MadeThenDrop => {
            let broken = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped"))
            });
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Body::from_stream(broken))
                .unwrap()
        }
        _ => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

/// The sandboxes the create handler made, with the lease tag `lease`.
fn made_with_lease(m: &Mock, lease: &str) -> Vec<Value> {
    m.made
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, meta)| meta["lease"] == lease)
        .map(|(id, meta)| {
            let mut l = listed(id, lease);
            l["metadata"] = meta.clone();
            if id.starts_with("lost") {
                // Made by the fork call, after its leases were reserved.
                l["startedAt"] = json!(time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap());
            }
            l
        })
        .collect()
}

async fn detail(
    State(m): S,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(id): Path<String>,
) -> Response {
    m.note(format!("GET /sandboxes/{id}"));
    if Mock::take_reset(&m.reset_gets) {
        return conn.reset();
    }
    if m.leak && id == "leaky" {
        return m.leaking(500);
    }
    if m.gone.load(Ordering::SeqCst) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"code": 404, "message": format!("sandbox {id} not found")})),
        )
            .into_response();
    }
    if id == "redirect" {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/sandboxes/elsewhere")],
        )
            .into_response();
    }
    if m.get_failures.load(Ordering::SeqCst) > 0 {
        m.get_failures.fetch_sub(1, Ordering::SeqCst);
        return m.overloaded();
    }
    let made = m
        .made
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _)| *i == id)
        .cloned();
    let mut d = listed(&id, "cbx_0123456789ab");
    if let Some((_, meta)) = made {
        d["metadata"] = meta;
    }
    d["envdAccessToken"] = json!(TOKEN);
    d["domain"] = Value::Null;
    if m.leak && id == "leakjson" {
        // A well-formed answer of the wrong shape: the parser's complaint quotes the value.
        d["cpuCount"] = json!(quoted_secrets());
    }
    axum::Json(d).into_response()
}

async fn kill(
    State(m): S,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(id): Path<String>,
) -> Response {
    m.note(format!("DELETE /sandboxes/{id}"));
    if Mock::take_reset(&m.reset_deletes) {
        return conn.reset();
    }
    if m.leak {
        return m.leaking(500);
    }
    if m.delete_status != 204 {
        return (
            StatusCode::from_u16(m.delete_status).unwrap(),
            axum::Json(json!({"code": m.delete_status, "message": "cannot kill right now"})),
        )
            .into_response();
    }
    m.made.lock().unwrap().retain(|(i, _)| *i != id);
    StatusCode::NO_CONTENT.into_response()
}

async fn list(State(m): S, Query(q): Query<HashMap<String, String>>) -> Response {
    m.note(format!(
        "GET /v2/sandboxes metadata={} token={}",
        q.get("metadata").cloned().unwrap_or_default(),
        q.get("nextToken").cloned().unwrap_or_default()
    ));
    if m.list_failures.load(Ordering::SeqCst) > 0 {
        m.list_failures.fetch_sub(1, Ordering::SeqCst);
        return m.overloaded();
    }
    let filter = crabbox_e2b_wire::control::decode_metadata_filter(
        q.get("metadata").map(String::as_str).unwrap_or(""),
    );
    if let Some((_, lease)) = filter.iter().find(|(k, _)| k == "lease") {
        return axum::Json(json!(made_with_lease(&m, lease))).into_response();
    }
    match q.get("nextToken").map(String::as_str) {
        None => (
            [("x-next-token", "page2")],
            axum::Json(json!([listed("sbxA", "cbx_aaaaaaaaaaaa")])),
        )
            .into_response(),
        _ => axum::Json(json!([listed("sbxB", "cbx_bbbbbbbbbbbb")])).into_response(),
    }
}

async fn connect(State(m): S, Path(id): Path<String>) -> Response {
    m.note(format!("POST /v2/sandboxes/{id}/connect"));
    axum::Json(sandbox(&id)).into_response()
}

async fn health(State(m): S, headers: HeaderMap) -> StatusCode {
    m.note(format!(
        "GET /health sandbox={}",
        headers
            .get("e2b-sandbox-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    ));
    StatusCode::NO_CONTENT
}

async fn make_dir(State(m): S) -> Response {
    m.note("MakeDir".into());
    if m.leak_in_make_dir {
        return axum::Json(json!(quoted_secrets())).into_response();
    }
    axum::Json(json!({})).into_response()
}

async fn upload(State(m): S, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    // One file by `path`, or several each named by its part's filename.
    let path = q.get("path").cloned().unwrap_or_default();
    if path.is_empty() {
        let text = String::from_utf8_lossy(&body);
        for part in text.split("filename=\"").skip(1) {
            m.note(format!("upload {}", part.split('"').next().unwrap_or("")));
        }
    } else {
        m.note(format!("upload {path}"));
    }
    if m.leak {
        return m.leaking(503);
    }
    if m.upload_status != 200 {
        return (
            StatusCode::from_u16(m.upload_status).unwrap(),
            axum::Json(json!({"code": m.upload_status, "message": "service unavailable"})),
        )
            .into_response();
    }
    axum::Json(json!([{"path": path, "name": "f", "type": "file"}])).into_response()
}

async fn remove(State(m): S, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap();
    m.note(format!("Remove {}", v["path"].as_str().unwrap_or("")));
    axum::Json(json!({})).into_response()
}

async fn send_signal(State(m): S, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap();
    m.note(format!(
        "SendSignal {} pid={}",
        v["signal"].as_str().unwrap_or(""),
        v["process"]["pid"]
    ));
    axum::Json(json!({})).into_response()
}

async fn start(State(m): S, headers: HeaderMap, body: Bytes) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    m.note(format!(
        "Start sandbox={} port={} token={} auth={} proto={} ctype={}",
        h("e2b-sandbox-id"),
        h("e2b-sandbox-port"),
        h("x-access-token") == TOKEN,
        h("authorization"),
        h("connect-protocol-version"),
        h("content-type"),
    ));
    let req = envelope::EnvelopeDecoder::new().decode(&body).unwrap();
    m.note(format!(
        "Start body {}",
        String::from_utf8_lossy(&req[0].payload)
    ));
    if m.leak {
        return m.leaking(500);
    }
    if let Some((status, body)) = m.start_refusal {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    if m.leak_in_stream_end {
        let err =
            crabbox_e2b_wire::ConnectError::new(crabbox_e2b_wire::Code::Internal, quoted_secrets());
        let done = [
            envelope::encode(0, br#"{"event":{"start":{"pid":42}}}"#),
            envelope::encode_end_stream(Some(&err)),
        ];
        return Response::builder()
            .header("content-type", "application/connect+json")
            .body(Body::from_stream(futures::stream::iter(
                done.into_iter().map(Ok::<Bytes, std::io::Error>),
            )))
            .unwrap();
    }
    if m.kill_on_start {
        m.gone.store(true, Ordering::SeqCst);
    }
    if String::from_utf8_lossy(&req[0].payload).contains("for d in /proc/") {
        // The reaper after an abandoned sync: runs and ends at once.
        m.note("reaper ran".into());
        let done = [
            envelope::encode(0, br#"{"event":{"start":{"pid":43}}}"#),
            envelope::encode(
                0,
                br#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#,
            ),
            envelope::encode(2, b"{}"),
        ];
        return Response::builder()
            .header("content-type", "application/connect+json")
            .body(Body::from_stream(futures::stream::iter(
                done.into_iter().map(Ok::<Bytes, std::io::Error>),
            )))
            .unwrap();
    }
    let first = [
        envelope::encode(0, br#"{"event":{"start":{"pid":42}}}"#),
        envelope::encode(0, br#"{"event":{"data":{"stdout":"cGFydGlhbAo="}}}"#),
    ];
    let head = futures::stream::iter(first.into_iter().map(Ok::<Bytes, std::io::Error>));
    let body = match m.stream {
        StreamMode::NoEnd => Body::from_stream(head),
        StreamMode::Forever => {
            use futures::StreamExt;
            let tail = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Ok::<Bytes, std::io::Error>(envelope::encode(
                        0,
                        br#"{"event":{"keepalive":{}}}"#,
                    )),
                    (),
                ))
            });
            Body::from_stream(head.chain(tail))
        }
    };
    Response::builder()
        .header("content-type", "application/connect+json")
        .body(body)
        .unwrap()
}

/// Pause, timeout and snapshot delete: 204.
async fn lifecycle_no_content() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn take_snapshot(body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let names = body["name"]
        .as_str()
        .map(|n| vec![n.to_string()])
        .unwrap_or_default();
    (
        StatusCode::CREATED,
        axum::Json(json!({"snapshotID": "snap1", "names": names})),
    )
        .into_response()
}

async fn list_snapshots() -> Response {
    axum::Json(json!([{"snapshotID": "snap1", "names": ["deps"]}])).into_response()
}

/// One sandbox per fork asked for, the last one failing on its own; or, with
/// `fork_then_drop`, the forks made (tagged as their source) and no answer.
async fn fork(State(m): S, Path(id): Path<String>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let count = body["count"].as_u64().unwrap_or(1);
    if m.fork_then_drop {
        let meta = m
            .made
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, meta)| meta.clone())
            .unwrap();
        for i in 1..=count {
            m.made
                .lock()
                .unwrap()
                .push((format!("lost{i}"), meta.clone()));
        }
        let broken = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped"))
        });
        return Response::builder()
            .status(StatusCode::CREATED)
            .body(Body::from_stream(broken))
            .unwrap();
    }
    let mut results: Vec<Value> = (1..count)
        .map(|i| json!({"sandbox": sandbox(&format!("fork{i}"))}))
        .collect();
    results.push(json!({"error": {"code": 429, "message": "too many sandboxes"}}));
    (StatusCode::CREATED, axum::Json(json!(results))).into_response()
}

/// Records every request verbatim (body buffered) before the handler sees it.
async fn record(
    State(m): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let query = url_pairs(parts.uri.query().unwrap_or(""));
    m.wire.lock().unwrap().push(Wire {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    next.run(axum::extract::Request::from_parts(parts, Body::from(body)))
        .await
}

/// `application/x-www-form-urlencoded` pairs, decoded once (as a server's query parser does).
fn url_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| crabbox_e2b_wire::control::percent_decode(&s.replace('+', " "));
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn serve(mock: Mock) -> (Arc<Mock>, String) {
    let mock = Arc::new(mock);
    let app = Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(lifecycle_no_content))
        .route("/sandboxes/{id}/timeout", post(lifecycle_no_content))
        .route("/sandboxes/{id}/snapshots", post(take_snapshot))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/snapshots", get(list_snapshots))
        .route(
            "/templates/{id}",
            axum::routing::delete(lifecycle_no_content),
        )
        .route("/health", get(health))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .route("/files", post(upload))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/Start", post(start))
        .layer(axum::middleware::from_fn_with_state(mock.clone(), record))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = ResettableListener(listener);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Conn>()).await;
    });
    (mock, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_without_end_event_is_a_transport_error_not_success() {
    let (mock, url) = serve(Mock::new(StreamMode::NoEnd)).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["echo", "hi"]);
    req.sync = None;
    req.env.insert("CI".into(), "1".into());
    let mut out = CapturedOutput::default();
    let err = p.run(&req, &mut out, &SilentReporter).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert_eq!(err.exit_code(), 1);
    assert!(!err.to_string().contains(TOKEN));
    assert_eq!(
        out.stdout_str(),
        "partial\n",
        "output before the break still arrives"
    );
    let log = mock.entries();
    let start = log.iter().find(|e| e.starts_with("Start sandbox")).unwrap();
    assert_eq!(
        start,
        "Start sandbox=sbx1 port=49983 token=true auth=Basic dXNlcjo= proto=1 ctype=application/connect+json"
    );
    let body = log.iter().find(|e| e.starts_with("Start body")).unwrap();
    let body: Value = serde_json::from_str(body.trim_start_matches("Start body ")).unwrap();
    assert_eq!(body["process"]["cmd"], "/bin/bash");
    assert_eq!(body["process"]["args"], json!(["-l", "-c", "'echo' 'hi'"]));
    assert_eq!(body["process"]["cwd"], "/home/user/crabbox");
    let envs = body["process"]["envs"].as_object().unwrap();
    assert_eq!(envs["CI"], "1", "env goes as envs");
    let run_id = envs["CRABBOX_RUN_ID"].as_str().unwrap();
    assert!(
        run_id.len() == 32 && run_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a fresh run id marks the run's processes: {run_id}"
    );
    assert_eq!(envs.len(), 2, "{envs:?}");
    assert_eq!(
        mock.count("DELETE /sandboxes/sbx1"),
        1,
        "the broken run releases its sandbox"
    );
    assert!(world.claims().list().unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_list_retry_503_honouring_retry_after() {
    let mock = Mock::new(StreamMode::NoEnd);
    mock.get_failures.store(1, Ordering::SeqCst);
    mock.list_failures.store(1, Ordering::SeqCst);
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();

    let t = Instant::now();
    let st = p
        .status(&StatusRequest {
            id: Some("sbx9".into()),
            wait: None,
        })
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 honoured"
    );
    assert_eq!(mock.count("GET /sandboxes/sbx9"), 2);
    assert!(st.ready && !st.claimed);
    assert_eq!(st.lease_id, "cbx_0123456789ab");
    assert_eq!(mock.count("GET /health sandbox=sbx9"), 1);

    let t = Instant::now();
    let boxes = p.list().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(950));
    let ids: Vec<_> = boxes.iter().map(|b| b.remote_id.as_str()).collect();
    assert_eq!(ids, ["sbxA", "sbxB"], "X-Next-Token is followed");
    let lists: Vec<_> = mock
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("GET /v2/sandboxes"))
        .collect();
    assert_eq!(
        lists,
        [
            "GET /v2/sandboxes metadata=crabbox=true&provider=e2b token=",
            "GET /v2/sandboxes metadata=crabbox=true&provider=e2b token=",
            "GET /v2/sandboxes metadata=crabbox=true&provider=e2b token=page2",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_after_three_attempts() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.retry_after = "0";
    mock.get_failures.store(10, Ordering::SeqCst);
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let err = p
        .status(&StatusRequest {
            id: Some("sbx9".into()),
            wait: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(mock.count("GET /sandboxes/sbx9"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_is_never_retried() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.create_status = 503;
    mock.retry_after = "0";
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut out = CapturedOutput::default();
    let err = p
        .run(&request(&repo, None, &["true"]), &mut out, &SilentReporter)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert_eq!(mock.count("POST /v2/sandboxes"), 1);
    assert!(
        world.claims().list().unwrap().0.is_empty(),
        "the reserved lease is released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_sends_sigterm_then_sigkill_then_deletes_the_sandbox() {
    let (mock, url) = serve(Mock::new(StreamMode::Forever)).await;
    let world = World::new();
    let p = world
        .provider_at(&url, &url, &[])
        .unwrap()
        .with_cancel_grace(Duration::from_millis(200));
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["sleep", "100"]);
    req.sync = None;
    // Cancelled at the command's first output, which the mock sends after its start event:
    // the provider knows the pid to signal.
    let t = Instant::now();
    let err = run_and_cancel(&p, &req).await;
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let tail: Vec<_> = mock
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("SendSignal") || e.starts_with("DELETE"))
        .collect();
    assert_eq!(
        tail,
        [
            "SendSignal SIGNAL_SIGTERM pid=42",
            "SendSignal SIGNAL_SIGKILL pid=42",
            "DELETE /sandboxes/sbx1"
        ]
    );
    assert!(world.claims().list().unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed() {
    let (mock, url) = serve(Mock::new(StreamMode::NoEnd)).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let err = p
        .status(&StatusRequest {
            id: Some("redirect".into()),
            wait: None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redirect"), "{err}");
    assert_eq!(mock.count("GET /sandboxes/elsewhere"), 0);
}

/// The lease a reserved claim (or the made sandbox) carries.
fn made_lease(mock: &Mock) -> String {
    let entries = mock.entries();
    let made = entries.iter().find(|e| e.starts_with("made ")).unwrap();
    made.rsplit_once("lease=").unwrap().1.to_string()
}

async fn one_shot(p: &crabbox_core::engine::Engine) -> crabbox_core::Result<()> {
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["true"]);
    req.sync = None;
    let mut out = CapturedOutput::default();
    p.run(&req, &mut out, &SilentReporter).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn create_that_made_the_sandbox_then_failed_deletes_it() {
    for mode in [CreateMode::MadeThen500, CreateMode::MadeThenDrop] {
        let mut mock = Mock::new(StreamMode::NoEnd);
        mock.create_mode = mode;
        let (mock, url) = serve(mock).await;
        let world = World::new();
        let p = world.provider_at(&url, &url, &[]).unwrap();
        let err = one_shot(&p).await.unwrap_err();
        assert_eq!(err.exit_code(), 1, "{err}");
        let lease = made_lease(&mock);
        assert_eq!(mock.count("POST /v2/sandboxes"), 1, "create is not retried");
        assert!(
            mock.entries().contains(&format!(
                "GET /v2/sandboxes metadata=crabbox=true&lease={lease}&provider=e2b token="
            )),
            "looked up by its lease tag: {:?}",
            mock.entries()
        );
        assert_eq!(mock.count("DELETE /sandboxes/made1"), 1, "orphan deleted");
        assert!(mock.made.lock().unwrap().is_empty());
        assert!(
            world.claims().list().unwrap().0.is_empty(),
            "the reserved lease is released"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_whose_cleanup_lookup_fails_keeps_the_claim_and_says_how_to_stop() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.create_mode = CreateMode::MadeThen500;
    mock.retry_after = "0";
    mock.list_failures.store(1000, Ordering::SeqCst);
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let err = one_shot(&p).await.unwrap_err();
    let lease = made_lease(&mock);
    let text = err.to_string();
    assert_eq!(err.exit_code(), 1, "{text}");
    assert_eq!(
        err.hints(),
        [&crabbox_core::hint::Hint::Stop {
            provider: "e2b".into(),
            lease_id: lease.clone()
        }],
        "{text}"
    );
    assert!(!text.contains(TOKEN) && !text.contains(common::KEY));
    assert!(!text.contains("  "), "one line of prose: {text}");
    let claim = world
        .claims()
        .get(&lease)
        .unwrap()
        .expect("placeholder kept");
    assert!(claim.remote_id.is_empty());
    assert_eq!(mock.count("DELETE"), 0);

    // Once E2B answers again, the advertised stop finds the sandbox by its tag.
    mock.list_failures.store(0, Ordering::SeqCst);
    let o = p
        .stop(&crabbox_core::engine::StopRequest {
            id: lease.clone(),
            reclaim: false,
        })
        .await
        .unwrap();
    assert!(!o.already_gone);
    assert_eq!(mock.count("DELETE /sandboxes/made1"), 1);
    assert!(world.claims().get(&lease).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_create_deletes_the_sandbox_it_made() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.create_mode = CreateMode::MadeThenHang;
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["true"]);
    req.sync = None;
    let mut out = CapturedOutput::default();
    let t = Instant::now();
    let run = p.run(&req, &mut out, &SilentReporter);
    tokio::pin!(run);
    // Cancelled once the mock made the sandbox and left the create unanswered; a run that
    // ends before that is returned as it is (and fails the assertion below).
    let res = tokio::select! {
        res = &mut run => res,
        () = mock.made_one.notified() => {
            req.cancel.cancel();
            run.await
        }
    };
    assert!(matches!(res, Err(Error::Interrupted)), "{res:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cancel must not wait for create: {:?}",
        t.elapsed()
    );
    assert_eq!(
        mock.count("DELETE /sandboxes/made1"),
        1,
        "{:?}",
        mock.entries()
    );
    assert!(world.claims().list().unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_delete_keeps_the_claim_and_names_the_sandbox() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.delete_status = 500;
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let warm = p
        .warmup(
            &crabbox_core::engine::WarmupRequest {
                slug: None,
                ttl: Duration::from_secs(600),
                repo_root: Some(repo.root().to_path_buf()),
                from_snapshot: None,
                idle_timeout: None,
            },
            &SilentReporter,
        )
        .await
        .unwrap();
    let err = p
        .stop(&crabbox_core::engine::StopRequest {
            id: warm.lease_id.clone(),
            reclaim: false,
        })
        .await
        .unwrap_err();
    assert_ne!(err.exit_code(), 0);
    assert!(err.to_string().contains("sbx1"), "{err}");
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(
        mock.count("DELETE /sandboxes/sbx1"),
        1,
        "500 is not retried"
    );
    let claim = world
        .claims()
        .get(&warm.lease_id)
        .unwrap()
        .expect("claim kept");
    assert_eq!(claim.remote_id, "sbx1");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_claim_write_after_create_deletes_the_sandbox() {
    let world = World::new();
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.break_claim_in = Some(world.claims().dir().to_path_buf());
    let (mock, url) = serve(mock).await;
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["true"]);
    req.sync = None;
    let rec = common::Recorder::default();
    let err = p
        .run(&req, &mut CapturedOutput::default(), &rec)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(
        rec.text().contains("box sbx1 was deleted again"),
        "{}",
        rec.text()
    );
    assert_eq!(
        mock.count("DELETE /sandboxes/sbx1"),
        1,
        "{:?}",
        mock.entries()
    );
    assert_eq!(
        mock.count("Start"),
        0,
        "nothing runs on an unclaimed sandbox"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_timeout_kills_the_apply_script_and_removes_its_files() {
    // The apply script starts (pid 42) and never ends.
    let (mock, url) = serve(Mock::new(StreamMode::Forever)).await;
    let world = World::new();
    let p = world
        .provider_at(&url, &url, &[("CRABBOX_SYNC_TIMEOUT", "1s")])
        .unwrap();
    let repo = RepoFixture::new();
    let mut out = CapturedOutput::default();
    let t = Instant::now();
    let err = p
        .run(&request(&repo, None, &["true"]), &mut out, &SilentReporter)
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(err.exit_code(), 6, "{err}");
    assert!(err.to_string().contains("sync.timeout"), "{err}");
    let log = mock.entries();
    let archive = log
        .iter()
        .filter_map(|e| e.strip_prefix("upload "))
        .find(|p| p.starts_with("/tmp/"))
        .expect("archive uploaded")
        .to_string();
    assert!(
        archive.starts_with("/tmp/crabbox-") && archive.ends_with("-0.tar"),
        "{archive}"
    );
    let tag = &archive["/tmp/crabbox-".len()..archive.len() - "-0.tar".len()];
    let tail: Vec<_> = log
        .iter()
        .filter(|e| {
            e.starts_with("SendSignal")
                || e.starts_with("reaper")
                || e.starts_with("Remove")
                || e.starts_with("DELETE")
        })
        .cloned()
        .collect();
    assert_eq!(tail[0], "SendSignal SIGNAL_SIGKILL pid=42", "{tail:?}");
    assert_eq!(tail[1], "reaper ran", "{tail:?}");
    let tail = &tail[1..];
    let mut removed: Vec<_> = tail[1..4].to_vec();
    removed.sort();
    assert_eq!(
        removed,
        [
            format!("Remove /home/user/.crabbox.crabbox-stage-{tag}"),
            format!("Remove /home/user/.crabbox.crabbox-stage-{tag}.ops"),
            format!("Remove /home/user/.crabbox.crabbox-stage-{tag}.rec"),
        ],
        "the staging directory and the plan's and record's copies (the reaper removes uploads)"
    );
    assert_eq!(tail[4..], ["DELETE /sandboxes/sbx1"]);
}

/// Every request the provider makes, compared field by field with what E2B's official Python
/// SDK (e2b 2.63.0) sends for the same operation; the emulator accepts looser requests, so
/// this is where the SDK-compatible shapes are pinned.
#[tokio::test(flavor = "multi_thread")]
async fn requests_match_the_official_sdk_wire_shapes() {
    let (mock, url) = serve(Mock::new(StreamMode::NoEnd)).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut out = CapturedOutput::default();
    // A fresh sandbox with a sync: create, upload, the apply script (whose stream breaks),
    // its cleanup (SendSignal, Remove) and the delete.
    let _ = p
        .run(&request(&repo, None, &["true"]), &mut out, &SilentReporter)
        .await
        .unwrap_err();
    // A warm unclaimed sandbox without a sync: get, connect, MakeDir, Start.
    let mut warm = request(&repo, Some("sbx9"), &["true"]);
    warm.sync = None;
    let _ = p.run(&warm, &mut out, &SilentReporter).await.unwrap_err();
    p.status(&StatusRequest {
        id: Some("sbx9".into()),
        wait: None,
    })
    .await
    .unwrap();
    p.list().await.unwrap();

    let wire = mock.wire.lock().unwrap().clone();
    let find = |method: &str, path: &str| -> Vec<Wire> {
        wire.iter()
            .filter(|w| w.method == method && w.path == path)
            .cloned()
            .collect()
    };
    let key = common::KEY;

    // Control plane: X-API-Key on every call (the SDK's `X-API-KEY`; header names are
    // case-insensitive), JSON bodies as application/json.
    for w in wire.iter().filter(|w| w.path.contains("sandboxes")) {
        assert_eq!(w.header("x-api-key"), Some(key), "{} {}", w.method, w.path);
        assert!(
            w.header("x-access-token").is_none(),
            "no envd token to the API"
        );
    }
    // create: POST /v2/sandboxes, NewSandboxV2 in camelCase; `timeout` in whole seconds;
    // no v1-only `secure`.
    let create = &find("POST", "/v2/sandboxes")[0];
    assert_eq!(create.header("content-type"), Some("application/json"));
    let body = create.json();
    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["metadata", "templateID", "timeout"], "{body}");
    assert_eq!(body["templateID"], "base");
    assert_eq!(body["timeout"], json!(600), "seconds, as an integer");
    let meta = body["metadata"].as_object().unwrap();
    assert!(meta.values().all(Value::is_string), "{meta:?}");
    assert_eq!(meta["crabbox"], "true");
    assert_eq!(meta["provider"], "e2b");
    // connect: POST /v2/sandboxes/{id}/connect with ConnectSandboxV2 `{"timeout": secs}`.
    let connect = &find("POST", "/v2/sandboxes/sbx9/connect")[0];
    assert_eq!(connect.header("content-type"), Some("application/json"));
    assert_eq!(connect.json(), json!({"timeout": 600}));
    // get / kill: no body, no query.
    for w in find("GET", "/sandboxes/sbx9")
        .iter()
        .chain(&find("DELETE", "/sandboxes/sbx1"))
    {
        assert!(w.body.is_empty() && w.query.is_empty(), "{w:?}");
    }
    assert_eq!(find("DELETE", "/sandboxes/sbx1").len(), 1);
    // list: GET /v2/sandboxes?metadata=<urlencoded pairs>&state=running,paused&limit=100,
    // then nextToken from X-Next-Token.
    let lists = find("GET", "/v2/sandboxes");
    let first = &lists[0];
    assert_eq!(first.query_keys(), ["limit", "metadata", "state"]);
    assert_eq!(first.query("metadata"), Some("crabbox=true&provider=e2b"));
    assert_eq!(first.query("state"), Some("running,paused"));
    assert_eq!(first.query("limit"), Some("100"));
    assert_eq!(lists[1].query("nextToken"), Some("page2"));

    // envd: every request carries the access token and the routing headers, as the SDK's.
    let envd: Vec<_> = wire
        .iter()
        .filter(|w| !w.path.contains("sandboxes"))
        .collect();
    assert!(envd.len() >= 7, "{envd:?}");
    for w in &envd {
        assert_eq!(w.header("x-access-token"), Some(TOKEN), "{}", w.path);
        assert_eq!(w.header("e2b-sandbox-port"), Some("49983"), "{}", w.path);
        assert!(w.header("e2b-sandbox-id").is_some(), "{}", w.path);
        assert!(w.header("x-api-key").is_none(), "no API key to envd");
    }
    // POST /files: multipart, parts named `file` whose filename is the target path, a known
    // length; `username` as a query parameter, and `path` too for a lone file (as the SDK's
    // `write_files`). The first sync's chunk travels with the new sync record.
    let upload = &find("POST", "/files")[0];
    assert_eq!(upload.query_keys(), ["username"]);
    assert_eq!(upload.query("username"), Some("user"));
    let text = String::from_utf8_lossy(&upload.body);
    let names: Vec<&str> = text
        .split("filename=\"")
        .skip(1)
        .map(|p| p.split('"').next().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("/home/user/.crabbox.crabbox-stage-") && names[0].ends_with(".rec"),
        "{names:?}"
    );
    let path = names[1];
    assert!(
        path.starts_with("/tmp/crabbox-") && path.ends_with(".tar"),
        "{path}"
    );
    let ctype = upload.header("content-type").unwrap();
    let boundary = ctype
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("{ctype}"));
    assert_eq!(
        upload.header("content-length"),
        Some(upload.body.len().to_string().as_str())
    );
    assert!(
        text.starts_with(&format!("--{boundary}\r\n")),
        "{text:.200}"
    );
    assert_eq!(
        text.matches(&format!("--{boundary}\r\n")).count(),
        2,
        "two parts"
    );
    assert!(
        text.contains(&format!(
            "Content-Disposition: form-data; name=\"file\"; filename=\"{path}\"\r\n"
        )),
        "{text:.300}"
    );
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    // Connect RPC: unary calls are bare JSON as application/json; the user is selected with
    // `Authorization: Basic base64("user:")`.
    let unary = |path: &str| -> Vec<Wire> {
        find("POST", path)
            .into_iter()
            .inspect(|w| {
                assert_eq!(w.header("content-type"), Some("application/json"), "{path}");
                assert_eq!(w.header("connect-protocol-version"), Some("1"), "{path}");
                assert_eq!(w.header("authorization"), Some("Basic dXNlcjo="), "{path}");
            })
            .collect()
    };
    assert_eq!(
        unary("/process.Process/SendSignal")[0].json(),
        json!({"process": {"pid": 42}, "signal": "SIGNAL_SIGKILL"})
    );
    let removes = unary("/filesystem.Filesystem/Remove");
    assert!(!removes.is_empty());
    for r in &removes {
        let body = r.json();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        assert!(body["path"].as_str().unwrap().starts_with('/'), "{body}");
    }
    // The workdir (`--no-sync`), and a sync's staging directory made beside its upload.
    let made: Vec<Value> = unary("/filesystem.Filesystem/MakeDir")
        .iter()
        .map(Wire::json)
        .collect();
    assert!(
        made.contains(&json!({"path": "/home/user/crabbox"})),
        "{made:?}"
    );
    assert!(
        made.iter().any(|m| m["path"]
            .as_str()
            .unwrap()
            .starts_with("/home/user/.crabbox.crabbox-stage-")
            && m.as_object().unwrap().len() == 1),
        "{made:?}"
    );
    // Start: a server stream, one enveloped JSON message, keepalive pings asked for, and no
    // Connect-Timeout-Ms (envd would SIGKILL the command at that deadline).
    let starts = find("POST", "/process.Process/Start");
    assert!(starts.len() >= 3, "apply, reaper, command");
    for s in &starts {
        assert_eq!(s.header("content-type"), Some("application/connect+json"));
        assert_eq!(s.header("connect-protocol-version"), Some("1"));
        assert_eq!(s.header("keepalive-ping-interval"), Some("50"));
        assert_eq!(s.header("authorization"), Some("Basic dXNlcjo="));
        assert!(s.header("connect-timeout-ms").is_none());
        let envs = envelope::EnvelopeDecoder::new().decode(&s.body).unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].flags, 0, "uncompressed, not end-of-stream");
        let msg: Value = serde_json::from_slice(&envs[0].payload).unwrap();
        let mut keys: Vec<_> = msg.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["process", "stdin"], "{msg}");
        assert_eq!(msg["stdin"], json!(false));
        let process = msg["process"].as_object().unwrap();
        assert!(
            process
                .keys()
                .all(|k| ["cmd", "args", "envs", "cwd"].contains(&k.as_str())),
            "{msg}"
        );
        assert_eq!(process["cmd"], "/bin/bash");
    }
    // The warm run's command (its stream breaks too, so the reaper runs after it).
    let msg: Value = starts
        .iter()
        .map(|s| {
            serde_json::from_slice::<Value>(
                &envelope::EnvelopeDecoder::new().decode(&s.body).unwrap()[0].payload,
            )
            .unwrap()
        })
        .find(|m| m["process"]["args"][0] == "-l")
        .expect("the command's Start");
    assert_eq!(msg["process"]["args"], json!(["-l", "-c", "'true'"]));
    assert_eq!(msg["process"]["cwd"], "/home/user/crabbox");
    // GET /health: no body, token and routing headers (checked above).
    assert!(!find("GET", "/health").is_empty());
}

fn warmup_req(repo: &RepoFixture) -> crabbox_core::engine::WarmupRequest {
    crabbox_core::engine::WarmupRequest {
        slug: None,
        ttl: Duration::from_secs(600),
        repo_root: Some(repo.root().to_path_buf()),
        from_snapshot: None,
        idle_timeout: None,
    }
}

fn stop_req(lease_id: &str) -> crabbox_core::engine::StopRequest {
    crabbox_core::engine::StopRequest {
        id: lease_id.to_string(),
        reclaim: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_connection_on_get_and_delete_is_retried_and_stop_drops_the_claim() {
    let (mock, url) = serve(Mock::new(StreamMode::NoEnd)).await;
    let world = World::new();
    let rec = Arc::new(common::Recorder::default());
    let fast = RetryPolicy {
        base_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let p = world
        .provider_with(&url, &url, &[], fast, rec.clone())
        .unwrap();
    let repo = RepoFixture::new();
    let warm = p.warmup(&warmup_req(&repo), &SilentReporter).await.unwrap();
    let gets = mock.count("GET /sandboxes/sbx1");
    mock.reset_gets.store(1, Ordering::SeqCst);
    mock.reset_deletes.store(1, Ordering::SeqCst);
    let o = p.stop(&stop_req(&warm.lease_id)).await.unwrap();
    assert!(!o.already_gone);
    assert_eq!(
        mock.count("GET /sandboxes/sbx1") - gets,
        2,
        "the ownership check was reset once, then answered: {:?}",
        mock.entries()
    );
    assert_eq!(
        mock.count("DELETE /sandboxes/sbx1"),
        2,
        "{:?}",
        mock.entries()
    );
    assert!(world.claims().get(&warm.lease_id).unwrap().is_none());
    assert_eq!(rec.text(), "", "waits this short are not worth a line");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_beyond_the_cap_is_capped_reported_and_giving_up_says_why() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.retry_after = "3600";
    mock.get_failures.store(10, Ordering::SeqCst);
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let rec = Arc::new(common::Recorder::default());
    let capped = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(1),
        report_after: Duration::from_millis(500),
    };
    let p = world
        .provider_with(&url, &url, &[], capped, rec.clone())
        .unwrap();
    let t = Instant::now();
    let err = p
        .status(&StatusRequest {
            id: Some("sbx9".into()),
            wait: None,
        })
        .await
        .unwrap_err();
    // Two waits of the 1s cap, not two hours.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(mock.count("GET /sandboxes/sbx9"), 3);
    let waits: Vec<String> = (2..=3)
        .map(|n| {
            format!(
                "E2B answered 503 for looking up sandbox sbx9 and asked to wait 3600s; \
                 retrying in 1s (attempt {n} of 3)"
            )
        })
        .collect();
    assert_eq!(*rec.lines.lock().unwrap(), waits);
    assert_eq!(err.exit_code(), 1, "{err}");
    let text = err.to_string();
    for says in [
        "E2B is unavailable",
        "sbx9",
        "gave up after 3 attempts",
        "E2B asked to wait 3600s, crabbox waits at most 1s",
        "retry later",
    ] {
        assert!(text.contains(says), "{says:?} missing: {text}");
    }
    assert!(!text.contains('\n'), "one line: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn envd_unavailable_during_the_sync_upload_is_a_transport_error() {
    for status in [502, 503] {
        let mut mock = Mock::new(StreamMode::NoEnd);
        mock.upload_status = status;
        let (mock, url) = serve(mock).await;
        let world = World::new();
        let p = world.provider_at(&url, &url, &[]).unwrap();
        let repo = RepoFixture::new();
        let err = p
            .run(
                &request(&repo, None, &["true"]),
                &mut CapturedOutput::default(),
                &SilentReporter,
            )
            .await
            .unwrap_err();
        assert!(matches!(err.root(), Error::Transport(_)), "{err:?}");
        assert_eq!(err.exit_code(), 1, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("sandbox sbx1") && text.contains(&format!("HTTP {status}")),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        assert_eq!(mock.count("DELETE /sandboxes/sbx1"), 1);
        assert!(world.claims().list().unwrap().0.is_empty());
    }
}

const GONE: &str = "sandbox sbx1 is no longer running: it was killed or its timeout passed";

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_gone_during_the_command_is_not_found_with_the_lease_to_stop() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.kill_on_start = true;
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();

    // A kept lease: its claim outlives the sandbox, so the error names the lease to stop.
    let warm = p.warmup(&warmup_req(&repo), &SilentReporter).await.unwrap();
    let mut req = request(&repo, Some(&warm.lease_id), &["sleep", "100"]);
    req.sync = None;
    let err = p
        .run(&req, &mut CapturedOutput::default(), &SilentReporter)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains(GONE), "{err}");
    assert_eq!(
        err.hints(),
        [&crabbox_core::hint::Hint::Stop {
            provider: "e2b".into(),
            lease_id: warm.lease_id.clone()
        }]
    );
    assert!(world.claims().get(&warm.lease_id).unwrap().is_some());
    assert!(
        p.stop(&stop_req(&warm.lease_id))
            .await
            .unwrap()
            .already_gone
    );

    // A one-shot run: released (the claim dropped), so there is nothing to stop.
    mock.gone.store(false, Ordering::SeqCst);
    let mut req = request(&repo, None, &["sleep", "100"]);
    req.sync = None;
    let err = p
        .run(&req, &mut CapturedOutput::default(), &SilentReporter)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains(GONE), "{err}");
    assert!(err.hints().is_empty(), "{:?}", err.hints());
    assert!(world.claims().list().unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn envd_saying_the_sandbox_was_not_found_is_not_found() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.start_refusal = Some((
        502,
        r#"{"code":502,"message":"The sandbox sbx1 was not found"}"#,
    ));
    let (_mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["true"]);
    req.sync = None;
    let err = p
        .run(&req, &mut CapturedOutput::default(), &SilentReporter)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains(GONE), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_refused_for_load_says_retry_later() {
    for (status, says) in [(429, "E2B is rate limiting"), (503, "E2B is unavailable")] {
        let mut mock = Mock::new(StreamMode::NoEnd);
        mock.create_status = status;
        mock.retry_after = "0";
        let (_mock, url) = serve(mock).await;
        let world = World::new();
        let p = world.provider_at(&url, &url, &[]).unwrap();
        let repo = RepoFixture::new();
        let err = p
            .run(
                &request(&repo, None, &["true"]),
                &mut CapturedOutput::default(),
                &SilentReporter,
            )
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(says) && text.contains("retry later"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_quoted_by_either_plane_never_reach_an_error_or_a_status_line() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.leak = true;
    let (_mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    // envd: the sync's upload, then the command's start, refused; each release's DELETE
    // refused too (reported as a status line). The key is known from the start, the tokens
    // from the create's answer.
    let repo = RepoFixture::new();
    let mut no_sync = request(&repo, None, &["true"]);
    no_sync.sync = None;
    for req in [request(&repo, None, &["true"]), no_sync] {
        let rec = common::Recorder::default();
        let err = p
            .run(&req, &mut CapturedOutput::default(), &rec)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sbx1"), "{err}");
        assert_no_secret(&err.to_string());
        assert!(rec.text().contains("could not delete"), "{}", rec.text());
        assert_no_secret(&rec.text());
    }
    // The control plane (which has seen the sandbox's tokens by now): an error answer, and an answer whose parser quotes it.
    for id in ["leaky", "leakjson"] {
        let err = p
            .status(&StatusRequest {
                id: Some(id.into()),
                wait: None,
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains(id), "{err}");
        assert_no_secret(&err.to_string());
    }

    // A unary call's answer of the wrong shape, and the command stream's own error.
    for in_make_dir in [true, false] {
        let mut mock = Mock::new(StreamMode::NoEnd);
        mock.leak_in_make_dir = in_make_dir;
        mock.leak_in_stream_end = !in_make_dir;
        let (_mock, url) = serve(mock).await;
        let p = world.provider_at(&url, &url, &[]).unwrap();
        let mut req = request(&repo, None, &["true"]);
        req.sync = None;
        let err = p
            .run(&req, &mut CapturedOutput::default(), &SilentReporter)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sbx1"), "{err}");
        assert_no_secret(&err.to_string());
    }
}

/// The lifecycle calls as the official SDK (2.63) sends them: routes, methods and bodies.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_requests_match_the_official_sdk_wire_shapes() {
    let (mock, url) = serve(Mock::new(StreamMode::NoEnd)).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let warm = p
        .warmup(
            &crabbox_core::engine::WarmupRequest {
                idle_timeout: Some(Duration::from_secs(1800)),
                ..warmup_req(&repo)
            },
            &SilentReporter,
        )
        .await
        .unwrap();
    let lease = warm.lease_id.clone();
    assert!(!p.pause(&lease).await.unwrap().already);
    let snap = p.snapshot(&lease, Some("deps")).await.unwrap();
    assert_eq!(snap.snapshot.id, "snap1");
    assert_eq!(p.snapshots().await.unwrap()[0].names, ["deps"]);
    p.delete_snapshot("snap1").await.unwrap();
    // A template that is not a listed snapshot never reaches the delete.
    let refused = p.delete_snapshot("base").await.unwrap_err();
    assert!(matches!(refused.root(), Error::NotFound(_)), "{refused}");
    let forked = p
        .fork(
            &crabbox_core::engine::ForkRequest {
                id: lease.clone(),
                count: 3,
                ttl: Duration::from_secs(600),
            },
            &SilentReporter,
        )
        .await
        .unwrap();
    assert_eq!(forked.forks.len(), 2, "each fork succeeds or fails alone");
    assert_eq!(forked.failed.len(), 1);
    assert!(forked.failed[0].contains("429"), "{:?}", forked.failed);
    let port = p
        .port_url(&lease, 8080, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(port.url.starts_with("https://8080-sbx1."), "{}", port.url);
    assert_eq!(port.headers["e2b-traffic-access-token"], TRAFFIC);

    let wire = mock.wire.lock().unwrap().clone();
    let one = |method: &str, path: &str| -> Wire {
        let found: Vec<&Wire> = wire
            .iter()
            .filter(|w| w.method == method && w.path == path)
            .collect();
        assert_eq!(found.len(), 1, "{method} {path}: {}", found.len());
        found[0].clone()
    };
    let create = one("POST", "/v2/sandboxes").json();
    assert_eq!(create["timeout"], 1800);
    assert_eq!(create["autoPause"], true);
    assert_eq!(create["autoResume"], json!({"enabled": true}));
    let pause = one("POST", "/sandboxes/sbx1/pause").json();
    assert!(
        pause.as_object().unwrap().keys().all(|k| k == "memory"),
        "{pause}"
    );
    assert_eq!(
        one("POST", "/sandboxes/sbx1/snapshots").json(),
        json!({"name": "deps"})
    );
    for list in wire.iter().filter(|w| w.path == "/snapshots") {
        assert_eq!(
            (list.method.as_str(), list.query_keys()),
            ("GET", vec!["limit"])
        );
    }
    one("DELETE", "/templates/snap1");
    assert!(
        !wire.iter().any(|w| w.path == "/templates/base"),
        "a template was sent to the delete"
    );
    assert_eq!(
        one("POST", "/sandboxes/sbx1/fork").json(),
        json!({"timeout": 600, "count": 3})
    );
    for w in &wire {
        assert_eq!(
            w.header("x-api-key"),
            Some(common::KEY),
            "{} {}",
            w.method,
            w.path
        );
    }
}

/// A fork whose answer is lost keeps its reserved leases: stopping one deletes the forks
/// the call made (they carry the source's tags), never the source.
#[tokio::test(flavor = "multi_thread")]
async fn forks_whose_answer_was_lost_are_found_and_deleted_by_stopping_their_lease() {
    let mut mock = Mock::new(StreamMode::NoEnd);
    mock.fork_then_drop = true;
    let (mock, url) = serve(mock).await;
    let world = World::new();
    let p = world.provider_at(&url, &url, &[]).unwrap();
    let repo = RepoFixture::new();
    let source = p.warmup(&warmup_req(&repo), &SilentReporter).await.unwrap();
    let err = p
        .fork(
            &crabbox_core::engine::ForkRequest {
                id: source.lease_id.clone(),
                count: 2,
                ttl: Duration::from_secs(600),
            },
            &SilentReporter,
        )
        .await
        .unwrap_err();
    assert!(matches!(err.root(), Error::Transport(_)), "{err}");
    let placeholders: Vec<String> = world
        .claims()
        .list()
        .unwrap()
        .0
        .into_iter()
        .filter(|c| c.remote_id.is_empty())
        .map(|c| c.lease_id)
        .collect();
    assert_eq!(placeholders.len(), 2, "the reserved leases stay");
    assert_eq!(err.hints().len(), 2, "each names its stop: {err}");
    let stopped = p
        .stop(&crabbox_core::engine::StopRequest {
            id: placeholders[0].clone(),
            reclaim: false,
        })
        .await
        .unwrap();
    assert!(!stopped.already_gone);
    let deleted: Vec<String> = mock
        .wire
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.method == "DELETE")
        .map(|w| w.path.clone())
        .collect();
    assert_eq!(
        deleted,
        ["/sandboxes/lost1", "/sandboxes/lost2"],
        "never the source"
    );
    p.stop(&crabbox_core::engine::StopRequest {
        id: placeholders[1].clone(),
        reclaim: false,
    })
    .await
    .unwrap();
    let left: Vec<String> = world
        .claims()
        .list()
        .unwrap()
        .0
        .into_iter()
        .map(|c| c.lease_id)
        .collect();
    assert_eq!(left, [source.lease_id]);
}
