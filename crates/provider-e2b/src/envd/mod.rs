//! The sandbox daemon (envd) client: where a sandbox's envd lives, file upload over HTTP,
//! the health check, unary Connect calls with the JSON codec (`filesystem.Filesystem`
//! MakeDir/Stat, `process.Process` SendSignal) and starting a process. Reading the started
//! process's event stream is `process_stream`'s.
//!
//! Every request carries the sandbox's access token and, as the official SDK's do, the
//! routing headers `E2b-Sandbox-Id` and `E2b-Sandbox-Port`.

use std::time::Duration;

use crabbox_core::{Error, Result};
use crabbox_e2b_wire::envelope;
use crabbox_e2b_wire::process::{ProcessSelector, SendSignalRequest, Signal, StartRequest};
use crabbox_e2b_wire::{connect, filesystem, headers, Code, ConnectError};
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::error_chain;
use crabbox_core::secret::{Scrubber, Secret};

mod process_stream;

pub use process_stream::{exit_code_of, Decoded, EventDecoder, ProcessStream};

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
    /// Every secret the provider holds (API key, tokens): scrubbed from what envd says.
    secrets: Scrubber,
}

impl Envd {
    /// A client of `sandbox_id`'s envd; `token` joins `secrets`.
    pub fn new(
        http: reqwest::Client,
        route: &EnvdRoute,
        sandbox_id: &str,
        token: Option<Secret>,
        user: &str,
        secrets: Scrubber,
    ) -> Self {
        let base = match route {
            EnvdRoute::Domain(domain) => format!("https://{ENVD_PORT}-{sandbox_id}.{domain}"),
            EnvdRoute::Fixed(base) => base.clone(),
        };
        if let Some(token) = &token {
            secrets.add(token.clone());
        }
        Self {
            http,
            base,
            sandbox_id: sandbox_id.to_string(),
            token,
            user: user.to_string(),
            secrets,
        }
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
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

    /// `text` (built from what the sandbox said) without any secret the provider holds.
    pub fn scrub(&self, text: &str) -> String {
        self.secrets.scrub(text)
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
        self.upload_with(&[], path, body, len, &[], timeout).await
    }

    /// [`Envd::upload`], with small files (`(path, bytes)`) written by the same request,
    /// `small` before `body` and `after` after it: one round trip for all (each part named by
    /// its path, as envd takes them when no `path` is given). envd writes the parts in order,
    /// each whole before the next is made.
    pub async fn upload_with(
        &self,
        small: &[(String, Vec<u8>)],
        path: &str,
        body: reqwest::Body,
        len: u64,
        after: &[(String, Vec<u8>)],
        timeout: Duration,
    ) -> Result<()> {
        let what = format!("uploading {path}");
        let part = |body, len, name: &str| {
            reqwest::multipart::Part::stream_with_length(body, len)
                .file_name(name.to_string())
                .mime_str("application/octet-stream")
                .expect("static mime type parses")
        };
        let with_small = |form: reqwest::multipart::Form, files: &[(String, Vec<u8>)]| {
            files.iter().fold(form, |form, (name, bytes)| {
                let len = bytes.len() as u64;
                form.part("file", part(reqwest::Body::from(bytes.clone()), len, name))
            })
        };
        let form = with_small(reqwest::multipart::Form::new(), small);
        let form = with_small(form.part("file", part(body, len, path)), after);
        let mut query = vec![("username", self.user.as_str())];
        if small.is_empty() && after.is_empty() {
            query.push(("path", path));
        }
        let resp = self
            .request(Method::POST, "/files")
            .query(&query)
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
        if is_gone(status, &body) {
            return Err(self.gone());
        }
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or(body);
        let (id, code) = (&self.sandbox_id, status.as_u16());
        let said = match message.trim() {
            "" => String::new(),
            m => format!(" ({})", m.chars().take(300).collect::<String>()),
        };
        // Only a box without room for the files is the tree's problem; any other refusal is
        // the service's, and the workdir is untouched (the sync was staged).
        Err(if status == StatusCode::INSUFFICIENT_STORAGE {
            Error::Sync(self.scrub(&format!(
                "sandbox {id} has no room for the sync: it answered HTTP {code}{said} while \
                 receiving the files; the workdir is unchanged, free space on the box or sync \
                 less"
            )))
        } else {
            Error::Transport(self.scrub(&format!(
                "the sync to sandbox {id} failed: E2B answered HTTP {code}{said} while the box \
                 was receiving the files; the workdir is unchanged, retry later"
            )))
        })
    }

    /// `GET /files?path=..&username=..`, streamed into `into` chunk by chunk (never held
    /// whole); the bytes written. `Error::NotFound` naming the path when it is not there.
    pub async fn download(
        &self,
        path: &str,
        into: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let what = format!("downloading {path}");
        let resp = self
            .request(Method::GET, "/files")
            .query(&[("path", path), ("username", self.user.as_str())])
            .send()
            .await
            .map_err(|e| self.transport(&what, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            if is_gone(status, &body) {
                return Err(self.gone());
            }
            let said: String = body.trim().chars().take(300).collect();
            return Err(if status == StatusCode::NOT_FOUND {
                Error::NotFound(
                    self.scrub(&format!("{path} is not on sandbox {}", self.sandbox_id)),
                )
            } else {
                Error::Transport(self.scrub(&format!(
                    "sandbox {}: {what}: HTTP {}: {said}",
                    self.sandbox_id,
                    status.as_u16()
                )))
            });
        }
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(&what, &e))?;
            into.write_all(&chunk)
                .await
                .map_err(Error::io("writing what came from", path))?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// The error for a sandbox that is no longer there to answer.
    pub fn gone(&self) -> Error {
        gone(&self.sandbox_id)
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
        if is_gone(status, &String::from_utf8_lossy(&body)) {
            return Err(RpcFailure::Transport(self.gone()));
        }
        if status == StatusCode::OK {
            return serde_json::from_slice(&body).map_err(|e| {
                // The parser's complaint may quote the answer.
                RpcFailure::Transport(Error::Transport(self.scrub(&format!(
                    "sandbox {} envd: {method}: unreadable response: {e}",
                    self.sandbox_id
                ))))
            });
        }
        let err = serde_json::from_slice::<ConnectError>(&body).unwrap_or_else(|_| {
            // Scrubbed whole, before the cut could split a secret.
            ConnectError::new(
                Code::from_http_status(status.as_u16()),
                self.scrub(&String::from_utf8_lossy(&body))
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
            if is_gone(status, &body) {
                return Err(self.gone());
            }
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
        Ok(ProcessStream::new(
            resp.bytes_stream().boxed(),
            self.sandbox_id.clone(),
            self.secrets.clone(),
        ))
    }
}

/// What a sandbox that is gone (killed, or its timeout passed) amounts to for the user.
pub fn gone(sandbox_id: &str) -> Error {
    Error::NotFound(format!(
        "sandbox {sandbox_id} is no longer running: it was killed or its timeout passed; run \
         on a new one (a longer ttl, up to e2b.maxTtl, keeps a sandbox up longer)"
    ))
}

/// E2B's proxy answers 502 "The sandbox .. was not found" for a sandbox that is not running.
fn is_gone(status: StatusCode, body: &str) -> bool {
    status == StatusCode::BAD_GATEWAY && body.to_ascii_lowercase().contains("not found")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_sends_routing_headers() {
        let http = reqwest::Client::new();
        let e = Envd::new(
            http.clone(),
            &EnvdRoute::Fixed("http://127.0.0.1:9".into()),
            "sbx1",
            Some(Secret::new("tok-secret")),
            "user",
            Scrubber::default(),
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
            Scrubber::default(),
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

    #[test]
    fn rpc_selects_the_user_with_basic_auth() {
        let e = Envd::new(
            reqwest::Client::new(),
            &EnvdRoute::Fixed("http://127.0.0.1:9".into()),
            "s",
            None,
            "root",
            Scrubber::default(),
        );
        let req = e.rpc("process.Process", "Start").build().unwrap();
        assert_eq!(req.headers()["authorization"], "Basic cm9vdDo=");
        assert_eq!(req.headers()["connect-protocol-version"], "1");
        assert_eq!(req.url().path(), "/process.Process/Start");
    }
}
