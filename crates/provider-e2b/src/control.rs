//! The E2B control plane over REST/JSON: create, connect, get, list and delete sandboxes.
//!
//! Every call has a 60 s timeout. Idempotent calls (get, list, delete, connect) retry per the
//! [`RetryPolicy`] (overload statuses and broken exchanges; a wait worth mentioning is
//! reported, and giving up says after how many attempts and what E2B asked for); create never
//! retries blindly, since a lost response could leave a sandbox nobody knows about: its
//! `CreateFailure` says whether one may exist, for the engine to look up by its lease tag.
//! Every message built from an answer is scrubbed of every secret the client holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crabbox_core::events::{Reporter, SilentReporter};
use crabbox_core::provider::CreateFailure;
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::{
    encode_metadata_filter, percent_encode, ApiError, ConnectSandboxRequest, ListedSandbox,
    NewSandbox, Sandbox, SandboxDetail,
};
use crabbox_e2b_wire::headers;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::retry::{is_retryable, is_retryable_error, retry_after, RetryPolicy};
use crabbox_core::secret::{Scrubber, Secret};

/// Timeout of one control-plane call.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// Pages of the list call we follow at most (100 sandboxes each).
const MAX_LIST_PAGES: usize = 100;

/// A client of one E2B API endpoint.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    key: Secret,
    /// The key and every token the service handed out: scrubbed from what it says back.
    secrets: Scrubber,
    retry: RetryPolicy,
    timeout: Duration,
    /// Hears about waits before a retry.
    waits: Waits,
}

/// Where waits before a retry are reported.
#[derive(Clone)]
struct Waits(Arc<dyn Reporter>);

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waits")
    }
}

impl ControlPlane {
    pub fn new(http: reqwest::Client, base: String, key: Secret) -> Self {
        Self {
            http,
            base,
            secrets: Scrubber::new([key.clone()]),
            key,
            retry: RetryPolicy::default(),
            timeout: CONTROL_TIMEOUT,
            waits: Waits(Arc::new(SilentReporter)),
        }
    }

    /// Where a wait before a retry is reported (what failed, how long, which attempt).
    pub fn set_reporter(&mut self, reporter: Arc<dyn Reporter>) {
        self.waits = Waits(reporter);
    }

    /// Every secret this client holds (shared with the envd clients it hands tokens to).
    pub fn secrets(&self) -> &Scrubber {
        &self.secrets
    }

    /// Keeps the tokens of a sandbox answer among the secrets to scrub.
    pub(crate) fn learn<'a>(&self, tokens: impl IntoIterator<Item = &'a Option<String>>) {
        for token in tokens.into_iter().flatten() {
            self.secrets.add(Secret::new(token.as_str()));
        }
    }

    /// Timeout of each call (default [`CONTROL_TIMEOUT`]).
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(headers::API_KEY, self.key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
    }

    /// Sends and reads the whole answer, retrying overload statuses and broken exchanges per
    /// the policy; a wait of at least `report_after` is reported first. The last answer comes
    /// back whatever its status, with how many attempts it took.
    pub(crate) async fn send_retrying(
        &self,
        what: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Reply> {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let last = attempt >= max;
            let (delay, why) = match Reply::read(make(), attempt).await {
                Ok(reply) if !last && is_retryable(reply.status, &reply.headers) => {
                    let delay = self.retry.backoff(attempt, Some(&reply.headers));
                    let asked = match retry_after(&reply.headers) {
                        Some(asked) if asked > delay => {
                            format!(" and asked to wait {}", secs(asked))
                        }
                        _ => String::new(),
                    };
                    let why = format!("E2B answered {} for {what}{asked}", reply.status.as_u16());
                    (delay, why)
                }
                Ok(reply) => return Ok(reply),
                Err(e) if !last && is_retryable_error(&e) => {
                    let why = format!("E2B did not answer {what} ({})", root_cause(&e));
                    (self.retry.backoff(attempt, None), why)
                }
                Err(e) => return Err(self.transport(what, &e, attempt)),
            };
            attempt += 1;
            if delay >= self.retry.report_after {
                self.waits.0.status(&self.secrets.scrub(&format!(
                    "{why}; retrying in {} (attempt {attempt} of {max})",
                    secs(delay)
                )));
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends once (a call that must not be repeated), reading the whole answer.
    pub(crate) async fn send_once(&self, what: &str, req: RequestBuilder) -> Result<Reply> {
        Reply::read(req, 1)
            .await
            .map_err(|e| self.transport(what, &e, 1))
    }

    fn transport(&self, what: &str, e: &reqwest::Error, attempts: u32) -> Error {
        let detail = if e.is_timeout() {
            format!(
                "timed out after {} (e2b.controlTimeout)",
                secs(self.timeout)
            )
        } else {
            error_chain(e)
        };
        let gave_up = if attempts > 1 {
            format!("; gave up after {attempts} attempts, retry later")
        } else {
            "; retry later".to_string()
        };
        Error::Transport(
            self.secrets
                .scrub(&format!("E2B API {}: {what}: {detail}{gave_up}", self.base)),
        )
    }

    /// Turns an unexpected answer into an error that names the call and what to do.
    pub(crate) fn failure(&self, what: &str, reply: &Reply) -> Error {
        let status = reply.status;
        let body = String::from_utf8_lossy(&reply.body);
        // Scrubbed whole, before any cut could split a secret.
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| self.secrets.scrub(&e.message))
            .unwrap_or_else(|_| self.secrets.scrub(&body).chars().take(300).collect());
        let message = message.trim();
        let said = match message {
            "" => String::new(),
            m => format!(": {m}"),
        };
        let code = status.as_u16();
        let base = &self.base;
        if status == StatusCode::BAD_REQUEST && message.to_ascii_lowercase().contains("timeout") {
            return Error::Usage(format!(
                "E2B API {base} refused the sandbox lifetime while {what} (HTTP {code}){said}; \
                 e2b.maxTtl (CRABBOX_E2B_MAX_TTL) or --ttl is above what the account allows: \
                 lower it (1h on E2B's base tier, 24h on pro)"
            ));
        }
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Usage(format!(
                "E2B API {base} rejected the API key while {what} (HTTP {code}){said}; check \
                 E2B_API_KEY or CRABBOX_E2B_API_KEY"
            )),
            _ if status.is_redirection() => Error::Transport(format!(
                "E2B API {base}: {what}: unexpected redirect (HTTP {code}); redirects are not \
                 followed, check e2b.apiUrl"
            )),
            StatusCode::TOO_MANY_REQUESTS => Error::Transport(format!(
                "E2B is rate limiting crabbox: HTTP {code} from {base} while {what}{said}{}; \
                 retry later",
                self.gave_up(reply)
            )),
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Error::Transport(format!(
                "E2B is unavailable: HTTP {code} from {base} while {what}{said}{}; retry later",
                self.gave_up(reply)
            )),
            _ => Error::Transport(format!(
                "E2B API {base}: {what}: HTTP {code}{said}{}",
                self.gave_up(reply)
            )),
        }
    }

    /// How a refused call was retried, and what the service asked for: "; gave up after 3
    /// attempts (E2B asked to wait 3600s, crabbox waits at most 30s)".
    fn gave_up(&self, reply: &Reply) -> String {
        let mut out = String::new();
        if reply.attempts > 1 {
            out = format!("; gave up after {} attempts", reply.attempts);
        }
        if let Some(asked) = retry_after(&reply.headers).filter(|a| !a.is_zero()) {
            let cap = if asked > self.retry.max_delay && reply.attempts > 1 {
                format!(", crabbox waits at most {}", secs(self.retry.max_delay))
            } else {
                String::new()
            };
            let sep = if out.is_empty() { "; " } else { " " };
            out.push_str(&format!("{sep}(E2B asked to wait {}{cap})", secs(asked)));
        }
        out
    }

    pub(crate) fn json<T: DeserializeOwned>(&self, what: &str, reply: &Reply) -> Result<T> {
        serde_json::from_slice(&reply.body).map_err(|e| {
            // The parser's complaint may quote the answer.
            Error::Transport(self.secrets.scrub(&format!(
                "E2B API {}: {what}: unreadable response: {e}",
                self.base
            )))
        })
    }

    /// `POST /v2/sandboxes`, never retried; only 201 counts as created. The error says
    /// whether the sandbox may exist anyway (the request may have reached the service).
    /// `what` names the call in errors ("creating a sandbox for lease cbx_..").
    pub async fn create(
        &self,
        body: &NewSandbox,
        what: &str,
    ) -> std::result::Result<Sandbox, CreateFailure> {
        let reply =
            match Reply::read(self.request(Method::POST, "/v2/sandboxes").json(body), 1).await {
                Ok(r) => r,
                Err(e) => {
                    return Err(CreateFailure {
                        // A refused connection never carried the request; anything later might have.
                        maybe_created: !e.is_connect(),
                        in_flight: !e.is_body(),
                        error: self.transport(what, &e, 1),
                    });
                }
            };
        let status = reply.status;
        if status != StatusCode::CREATED {
            return Err(CreateFailure {
                // 4xx and redirects are refusals; a 5xx may have failed after creating it.
                maybe_created: status.is_server_error() || status.is_success(),
                in_flight: false,
                error: self.failure(what, &reply),
            });
        }
        let sandbox: Sandbox = self.json(what, &reply).map_err(|error| CreateFailure {
            maybe_created: true,
            in_flight: false,
            error,
        })?;
        self.learn([&sandbox.envd_access_token, &sandbox.traffic_access_token]);
        Ok(sandbox)
    }

    /// `POST /v2/sandboxes/{id}/connect` with the TTL: refreshes a running sandbox's lifetime
    /// (resumes a paused one: then the flag is `true`). `None` when it is gone.
    pub async fn connect(&self, id: &str, timeout: Duration) -> Result<Option<(Sandbox, bool)>> {
        let what = format!("connecting to sandbox {id}");
        let path = format!("/v2/sandboxes/{}/connect", percent_encode(id));
        let body = ConnectSandboxRequest {
            timeout: Some(timeout.as_secs().max(1)),
        };
        let reply = self
            .send_retrying(&what, || self.request(Method::POST, &path).json(&body))
            .await?;
        match reply.status {
            StatusCode::OK | StatusCode::CREATED => {
                let sandbox: Sandbox = self.json(&what, &reply)?;
                self.learn([&sandbox.envd_access_token, &sandbox.traffic_access_token]);
                Ok(Some((sandbox, reply.status == StatusCode::CREATED)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(&what, &reply)),
        }
    }

    /// `GET /sandboxes/{id}`; `None` when it is gone.
    pub async fn get(&self, id: &str) -> Result<Option<SandboxDetail>> {
        let what = format!("looking up sandbox {id}");
        let path = format!("/sandboxes/{}", percent_encode(id));
        let reply = self
            .send_retrying(&what, || self.request(Method::GET, &path))
            .await?;
        match reply.status {
            StatusCode::OK => {
                let detail: SandboxDetail = self.json(&what, &reply)?;
                self.learn([&detail.envd_access_token]);
                Ok(Some(detail))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(&what, &reply)),
        }
    }

    /// `GET /v2/sandboxes` filtered by metadata, following `X-Next-Token`.
    pub async fn list(&self, filter: &BTreeMap<String, String>) -> Result<Vec<ListedSandbox>> {
        let metadata = encode_metadata_filter(filter);
        self.get_pages(
            "listing sandboxes",
            "/v2/sandboxes",
            &[
                ("state", "running,paused"),
                ("metadata", &metadata),
                ("limit", "100"),
            ],
            MAX_LIST_PAGES,
        )
        .await
    }

    /// Every item of a paginated `GET path?query` (E2B's `nextToken` header leads from one
    /// page to the next), at most `max_pages` pages; a token that repeats ends it.
    pub(crate) async fn get_pages<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        base: &[(&str, &str)],
        max_pages: usize,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..max_pages {
            let mut query: Vec<(&str, &str)> = base.to_vec();
            if let Some(t) = token.as_deref() {
                query.push(("nextToken", t));
            }
            let reply = self
                .send_retrying(what, || self.request(Method::GET, path).query(&query))
                .await?;
            if reply.status != StatusCode::OK {
                return Err(self.failure(what, &reply));
            }
            let next = reply
                .headers
                .get(headers::NEXT_TOKEN)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from);
            let page: Vec<T> = self.json(what, &reply)?;
            out.extend(page);
            match next {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// One page of one sandbox from `GET /v2/sandboxes`: the endpoint answers and takes the
    /// key (a refused key is `Error::Usage`, as on every call).
    pub async fn probe(&self) -> Result<()> {
        let what = "listing sandboxes (a check)";
        let reply = self
            .send_retrying(what, || {
                self.request(Method::GET, "/v2/sandboxes")
                    .query(&[("limit", "1")])
            })
            .await?;
        if reply.status == StatusCode::OK {
            Ok(())
        } else {
            Err(self.failure(what, &reply))
        }
    }

    /// `GET /templates/aliases/{name}`, as E2B's SDKs ask whether a template exists:
    /// `Some(true)` when it does and this key may use it, `Some(false)` when it does not
    /// exist (404) or belongs to another team (403); `None` when the service has no such
    /// route (another status: it cannot tell).
    pub async fn template_exists(&self, name: &str) -> Result<Option<bool>> {
        let what = format!("looking up template {name}");
        let path = format!("/templates/aliases/{}", percent_encode(name));
        let reply = self
            .send_retrying(&what, || self.request(Method::GET, &path))
            .await?;
        match reply.status {
            StatusCode::OK => Ok(Some(true)),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(Some(false)),
            StatusCode::UNAUTHORIZED => Err(self.failure(&what, &reply)),
            _ => Ok(None),
        }
    }

    /// `DELETE /sandboxes/{id}`: `true` if deleted now, `false` if it was already gone.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let what = format!("deleting sandbox {id}");
        let path = format!("/sandboxes/{}", percent_encode(id));
        let reply = self
            .send_retrying(&what, || self.request(Method::DELETE, &path))
            .await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(&what, &reply)),
        }
    }
}

/// One answer of the control plane, read whole (a connection that breaks while the body
/// travels fails the exchange, to be retried like one that broke before it).
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The attempt that got this answer (1 for the first).
    attempts: u32,
}

impl Reply {
    async fn read(req: RequestBuilder, attempts: u32) -> reqwest::Result<Reply> {
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Reply {
            status,
            headers,
            body,
            attempts,
        })
    }
}

/// A wait as the user reads it: whole seconds, rounded up.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) && !d.is_zero() {
        return format!("{}ms", d.as_millis().max(1));
    }
    format!("{}s", d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The innermost cause of an error ("Connection reset by peer (os error 104)").
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A reqwest error with its causes, which carry the useful part ("connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
