//! The sandbox daemon (envd): file upload over HTTP, and the `process.Process` /
//! `filesystem.Filesystem` services over the Connect protocol with the JSON codec.
//!
//! Every request carries the sandbox's access token and, as the official SDK's do, the
//! routing headers `E2b-Sandbox-Id` and `E2b-Sandbox-Port`.

use std::time::Duration;

use bytes::Bytes;
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::envelope::{self, EnvelopeDecoder};
use crabbox_e2b_wire::process::{
    ProcessEvent, ProcessSelector, SendSignalRequest, Signal, StartRequest, StartResponse,
};
use crabbox_e2b_wire::{connect, filesystem, headers, process, Code, ConnectError};
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::error_chain;
use crabbox_core::secret::Secret;

/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// Timeout of one unary envd call.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a sandbox's envd lives.
#[derive(Debug, Clone)]
pub enum EnvdRoute {
    /// `https://49983-<id>.<domain>`.
    Domain(String),
    /// One base for every sandbox, routed by headers.
    Fixed(String),
}

/// A client of one sandbox's envd.
#[derive(Debug, Clone)]
pub struct Envd {
    http: reqwest::Client,
    base: String,
    sandbox_id: String,
    token: Option<Secret>,
    user: String,
}

impl Envd {
    pub fn new(
        http: reqwest::Client,
        route: &EnvdRoute,
        sandbox_id: &str,
        token: Option<Secret>,
        user: &str,
    ) -> Self {
        let base = match route {
            EnvdRoute::Domain(domain) => format!("https://{ENVD_PORT}-{sandbox_id}.{domain}"),
            EnvdRoute::Fixed(base) => base.clone(),
        };
        Self {
            http,
            base,
            sandbox_id: sandbox_id.to_string(),
            token,
            user: user.to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Every envd request carries the routing headers, whichever the route: the official
    /// SDK sends them on all of them (its envd base for E2B's own domains is the shared
    /// `https://sandbox.<domain>`, routed by these headers alone).
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(headers::SANDBOX_ID, &self.sandbox_id)
            .header(headers::SANDBOX_PORT, ENVD_PORT.to_string());
        if let Some(token) = &self.token {
            req = req.header(headers::ACCESS_TOKEN, token.expose());
        }
        req
    }

    fn rpc(&self, service: &str, method: &str) -> RequestBuilder {
        self.request(Method::POST, &format!("/{service}/{method}"))
            .header(
                headers::CONNECT_PROTOCOL_VERSION,
                headers::CONNECT_PROTOCOL_VERSION_1,
            )
            .header(
                reqwest::header::AUTHORIZATION,
                headers::encode_user(&self.user),
            )
    }

    fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(t) => t.scrub(text),
            None => text.to_string(),
        }
    }

    fn transport(&self, what: &str, e: &reqwest::Error) -> Error {
        Error::Transport(self.scrub(&format!(
            "sandbox {} envd: {what}: {}",
            self.sandbox_id,
            error_chain(e)
        )))
    }

    /// `GET /health` answers (204): envd is up.
    pub async fn healthy(&self) -> bool {
        match self
            .request(Method::GET, "/health")
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// `POST /files?path=..&username=..` as multipart field `file`, streaming `body`.
    pub async fn upload(
        &self,
        path: &str,
        body: reqwest::Body,
        len: u64,
        timeout: Duration,
    ) -> Result<()> {
        let what = format!("uploading {path}");
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(path.to_string())
            .mime_str("application/octet-stream")
            .expect("static mime type parses");
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = self
            .request(Method::POST, "/files")
            .query(&[("path", path), ("username", self.user.as_str())])
            .multipart(form)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport(&what, &e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or(body);
        Err(Error::Sync(self.scrub(&format!(
            "sandbox {} envd: {what}: HTTP {}: {}",
            self.sandbox_id,
            status.as_u16(),
            message.trim()
        ))))
    }

    /// One unary Connect call with the JSON codec.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> std::result::Result<Resp, RpcFailure> {
        let resp = self
            .rpc(service, method)
            .header(reqwest::header::CONTENT_TYPE, connect::UNARY_CONTENT_TYPE)
            .json(req)
            .timeout(UNARY_TIMEOUT)
            .send()
            .await
            .map_err(|e| RpcFailure::Transport(self.transport(method, &e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| RpcFailure::Transport(self.transport(method, &e)))?;
        if status == StatusCode::OK {
            return serde_json::from_slice(&body).map_err(|e| {
                RpcFailure::Transport(Error::Transport(format!(
                    "sandbox {} envd: {method}: unreadable response: {e}",
                    self.sandbox_id
                )))
            });
        }
        let err = serde_json::from_slice::<ConnectError>(&body).unwrap_or_else(|_| {
            ConnectError::new(
                Code::from_http_status(status.as_u16()),
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>(),
            )
        });
        Err(RpcFailure::Rpc(ConnectError::new(
            err.code,
            self.scrub(&err.message),
        )))
    }

    /// `filesystem.Filesystem/MakeDir`; an existing directory is fine.
    pub async fn make_dir(&self, path: &str) -> Result<()> {
        let req = filesystem::MakeDirRequest {
            path: path.to_string(),
        };
        match self
            .unary::<_, filesystem::MakeDirResponse>(filesystem::SERVICE, "MakeDir", &req)
            .await
        {
            Ok(_) => Ok(()),
            Err(RpcFailure::Rpc(e)) if e.code == Code::AlreadyExists => Ok(()),
            Err(e) => Err(e.into_error(&format!("sandbox {}: creating {path}", self.sandbox_id))),
        }
    }

    /// `filesystem.Filesystem/Stat`: whether `path` exists.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        let req = filesystem::StatRequest {
            path: path.to_string(),
        };
        match self
            .unary::<_, filesystem::StatResponse>(filesystem::SERVICE, "Stat", &req)
            .await
        {
            Ok(_) => Ok(true),
            Err(RpcFailure::Rpc(e)) if e.code == Code::NotFound => Ok(false),
            Err(e) => Err(e.into_error(&format!("sandbox {}: looking at {path}", self.sandbox_id))),
        }
    }

    /// `process.Process/SendSignal` to one pid.
    pub async fn send_signal(&self, pid: u32, signal: Signal) -> Result<()> {
        let req = SendSignalRequest {
            process: Some(ProcessSelector::Pid(pid)),
            signal,
        };
        self.unary::<_, serde_json::Value>(crabbox_e2b_wire::process::SERVICE, "SendSignal", &req)
            .await
            .map(|_| ())
            .map_err(|e| {
                e.into_error(&format!(
                    "sandbox {}: sending {} to pid {pid}",
                    self.sandbox_id,
                    signal.as_str()
                ))
            })
    }

    /// Starts a process (`process.Process/Start`, server stream) with no client timeout.
    pub async fn start(&self, req: &StartRequest) -> Result<ProcessStream> {
        let body = envelope::encode_message(req)
            .map_err(|e| Error::Transport(format!("encoding process start request: {e}")))?;
        let resp = self
            .rpc(crabbox_e2b_wire::process::SERVICE, "Start")
            .header(reqwest::header::CONTENT_TYPE, connect::STREAM_CONTENT_TYPE)
            .header(headers::KEEPALIVE_PING_INTERVAL, "50")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport("starting the command", &e))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ConnectError>(&body)
                .map(|e| e.to_string())
                .unwrap_or(body);
            let text = self.scrub(&format!(
                "sandbox {} envd: starting the command: HTTP {}: {}",
                self.sandbox_id,
                status.as_u16(),
                message.trim()
            ));
            return Err(if status == StatusCode::UNAUTHORIZED {
                Error::Usage(text)
            } else {
                Error::Transport(text)
            });
        }
        Ok(ProcessStream {
            body: resp.bytes_stream().boxed(),
            decoder: EnvelopeDecoder::new(),
            finished: false,
            sandbox_id: self.sandbox_id.clone(),
        })
    }
}

/// A failed unary call: the transport broke, or envd answered with a Connect error.
#[derive(Debug)]
pub enum RpcFailure {
    Transport(Error),
    Rpc(ConnectError),
}

impl RpcFailure {
    pub fn into_error(self, what: &str) -> Error {
        match self {
            RpcFailure::Transport(e) => e,
            RpcFailure::Rpc(e) => Error::Transport(format!("{what}: {e}")),
        }
    }
}

/// The events of one `Start` stream, decoded as bytes arrive.
pub struct ProcessStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: EnvelopeDecoder,
    finished: bool,
    sandbox_id: String,
}

impl ProcessStream {
    /// The next event; `Ok(None)` once the stream closed with a clean end-of-stream message.
    /// A body that stops without one, or an end-of-stream error, is a transport error.
    ///
    /// Cancel-safe: the only await point is the next network chunk.
    pub async fn next_event(&mut self) -> Result<Option<ProcessEvent>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let envelope = self.decoder.next_envelope().map_err(|e| {
                Error::Transport(format!("sandbox {}: command stream: {e}", self.sandbox_id))
            })?;
            if let Some(env) = envelope {
                if env.is_end_stream() {
                    self.finished = true;
                    let end = env.end_stream_message().map_err(|e| {
                        Error::Transport(format!(
                            "sandbox {}: unreadable end of command stream: {e}",
                            self.sandbox_id
                        ))
                    })?;
                    if let Some(err) = end.error {
                        return Err(Error::Transport(format!(
                            "sandbox {}: command failed to run: {err}",
                            self.sandbox_id
                        )));
                    }
                    return Ok(None);
                }
                if env.is_compressed() {
                    return Err(Error::Transport(format!(
                        "sandbox {}: compressed command stream messages are not supported",
                        self.sandbox_id
                    )));
                }
                if env.payload.is_empty() {
                    continue;
                }
                let msg: StartResponse = match serde_json::from_slice(&env.payload) {
                    Ok(msg) => msg,
                    // The SDK's codec ignores what it does not know; so do we.
                    Err(_) if is_unknown_event(&env.payload) => continue,
                    Err(e) => {
                        return Err(Error::Transport(format!(
                            "sandbox {}: unreadable command stream message: {e}",
                            self.sandbox_id
                        )))
                    }
                };
                match msg.event {
                    Some(event) => return Ok(Some(event)),
                    None => continue,
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.decoder.push(&chunk),
                Some(Err(e)) => {
                    return Err(Error::Transport(format!(
                        "sandbox {}: command stream broke: {}",
                        self.sandbox_id,
                        error_chain(&e)
                    )))
                }
                None => {
                    return Err(Error::Transport(format!(
                        "sandbox {}: command stream ended without an end-of-stream message \
                         ({} bytes left over); the command's outcome is unknown",
                        self.sandbox_id,
                        self.decoder.buffered()
                    )))
                }
            }
        }
    }
}

/// A stream message whose event is of a kind this client does not know (a newer envd's),
/// or a data event with no stream this client knows: skipped, like the official SDK's
/// codec (`ignore_unknown_fields`) does, rather than failing the run.
fn is_unknown_event(payload: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(msg)) = serde_json::from_slice(payload) else {
        return false;
    };
    let Some(serde_json::Value::Object(event)) = msg.get("event") else {
        return false;
    };
    let known = ["start", "data", "end", "keepalive"];
    if !event.keys().any(|k| known.contains(&k.as_str())) {
        return true;
    }
    match event.get("data") {
        Some(serde_json::Value::Object(data)) if event.len() == 1 => !data
            .keys()
            .any(|k| ["stdout", "stderr", "pty"].contains(&k.as_str())),
        _ => false,
    }
}

/// The exit code of a finished process: its own code, or 128+signal when it was killed.
pub fn exit_code_of(end: &crabbox_e2b_wire::process::EndEvent) -> i32 {
    let status = end.status.trim();
    if end.exited {
        return end.exit_code;
    }
    if let Some(code) = status
        .strip_prefix(process::EXIT_STATUS_PREFIX)
        .and_then(|c| c.trim().parse::<i32>().ok())
    {
        return code;
    }
    if end.exit_code > 0 {
        return end.exit_code;
    }
    let name = status
        .strip_prefix(process::SIGNAL_STATUS_PREFIX)
        .unwrap_or(status);
    let number = process::signal_number(name)
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(9);
    128 + number
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_e2b_wire::process::EndEvent;

    fn end(code: i32, exited: bool, status: &str) -> EndEvent {
        EndEvent {
            exit_code: code,
            exited,
            status: status.into(),
            error: None,
        }
    }

    #[test]
    fn exit_codes_map_signals_to_128_plus() {
        assert_eq!(exit_code_of(&end(0, true, "exit status 0")), 0);
        assert_eq!(exit_code_of(&end(7, true, "exit status 7")), 7);
        assert_eq!(exit_code_of(&end(-1, false, "signal: killed")), 137);
        assert_eq!(exit_code_of(&end(-1, false, "signal: terminated")), 143);
        assert_eq!(exit_code_of(&end(-1, false, "signal: interrupt")), 130);
        assert_eq!(exit_code_of(&end(-1, false, "")), 137);
        assert_eq!(exit_code_of(&end(-1, false, "signal: signal 10")), 138);
        assert_eq!(
            exit_code_of(&end(0, false, "signal: terminated")),
            143,
            "an omitted exitCode of a killed process is not success"
        );
        assert_eq!(exit_code_of(&end(0, false, "exit status 4")), 4);
    }

    #[test]
    fn every_route_sends_routing_headers() {
        let http = reqwest::Client::new();
        let e = Envd::new(
            http.clone(),
            &EnvdRoute::Fixed("http://127.0.0.1:9".into()),
            "sbx1",
            Some(Secret::new("tok-secret")),
            "user",
        );
        let req = e.request(Method::GET, "/health").build().unwrap();
        assert_eq!(req.headers()["e2b-sandbox-id"], "sbx1");
        assert_eq!(req.headers()["e2b-sandbox-port"], "49983");
        assert_eq!(req.headers()["x-access-token"], "tok-secret");
        assert!(!format!("{e:?}").contains("tok-secret"));
        let d = Envd::new(
            http,
            &EnvdRoute::Domain("e2b.app".into()),
            "sbx1",
            None,
            "user",
        );
        assert_eq!(d.base(), "https://49983-sbx1.e2b.app");
        let req = d.request(Method::GET, "/health").build().unwrap();
        assert_eq!(req.url().as_str(), "https://49983-sbx1.e2b.app/health");
        // As the SDK does (sandbox_sync/main.py: extra_sandbox_headers on every request).
        assert_eq!(req.headers()["e2b-sandbox-id"], "sbx1");
        assert_eq!(req.headers()["e2b-sandbox-port"], "49983");
        assert!(
            req.headers().get("x-access-token").is_none(),
            "no token, none sent"
        );
    }

    fn stream_of(messages: &[&[u8]]) -> ProcessStream {
        let mut body = Vec::new();
        for m in messages {
            body.extend_from_slice(&envelope::encode(0, m));
        }
        body.extend_from_slice(&envelope::encode(2, b"{}"));
        ProcessStream {
            body: futures::stream::iter(vec![Ok(Bytes::from(body))]).boxed(),
            decoder: EnvelopeDecoder::new(),
            finished: false,
            sandbox_id: "s".into(),
        }
    }

    #[tokio::test]
    async fn unknown_event_kinds_are_skipped_like_the_sdk_does() {
        let mut s = stream_of(&[
            br#"{"event":{"start":{"pid":7}}}"#,
            br#"{"event":{"progress":{"percent":3}}}"#,
            br#"{"event":{"data":{"stdin":"aGkK"}}}"#,
            br#"{"event":{"keepalive":{}},"extra":1}"#,
            br#"{"event":{"data":{"stdout":"aGkK"}}}"#,
            br#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}}"#,
        ]);
        let mut seen = Vec::new();
        while let Some(e) = s.next_event().await.unwrap() {
            seen.push(e);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(matches!(seen[0], ProcessEvent::Start(ref st) if st.pid == 7));
        assert!(matches!(seen[1], ProcessEvent::Keepalive(_)));
        assert!(matches!(seen[3], ProcessEvent::End(ref e) if exit_code_of(e) == 3));
        // A known kind that does not parse is still an error.
        let mut bad = stream_of(&[br#"{"event":{"start":{"pid":"x"}}}"#]);
        assert!(bad.next_event().await.is_err());
    }

    #[test]
    fn rpc_selects_the_user_with_basic_auth() {
        let e = Envd::new(
            reqwest::Client::new(),
            &EnvdRoute::Fixed("http://127.0.0.1:9".into()),
            "s",
            None,
            "root",
        );
        let req = e.rpc("process.Process", "Start").build().unwrap();
        assert_eq!(req.headers()["authorization"], "Basic cm9vdDo=");
        assert_eq!(req.headers()["connect-protocol-version"], "1");
        assert_eq!(req.url().path(), "/process.Process/Start");
    }
}
