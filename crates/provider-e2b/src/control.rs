//! The E2B control plane over REST/JSON: create, connect, get, list and delete sandboxes.
//!
//! Every call has a 60 s timeout. Idempotent calls (get, list, delete, connect) retry per the
//! [`RetryPolicy`]; create never retries blindly, since a lost response could leave a sandbox
//! nobody knows about: its `CreateFailure` says whether one may exist, for the engine to look
//! up by its lease tag.

use std::collections::BTreeMap;
use std::time::Duration;

use crabbox_core::provider::CreateFailure;
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::{
    encode_metadata_filter, percent_encode, ApiError, ConnectSandboxRequest, ListedSandbox,
    NewSandbox, Sandbox, SandboxDetail,
};
use crabbox_e2b_wire::headers;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::retry::{is_retryable, RetryPolicy};
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
        }
    }

    /// Every secret this client holds (shared with the envd clients it hands tokens to).
    pub fn secrets(&self) -> &Scrubber {
        &self.secrets
    }

    /// Keeps the tokens of a sandbox answer among the secrets to scrub.
    fn learn<'a>(&self, tokens: impl IntoIterator<Item = &'a Option<String>>) {
        for token in tokens.into_iter().flatten() {
            self.secrets.add(Secret::new(token.as_str()));
        }
    }

    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(headers::API_KEY, self.key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
    }

    /// Sends with retries on overload statuses and connection failures.
    async fn send_retrying(
        &self,
        what: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut attempt = 1;
        loop {
            let last = attempt >= self.retry.max_attempts;
            match make().send().await {
                Ok(resp) if !last && is_retryable(resp.status(), resp.headers()) => {
                    let delay = self.retry.backoff(attempt, Some(resp.headers()));
                    tokio::time::sleep(delay).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if !last && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(self.retry.backoff(attempt, None)).await;
                }
                Err(e) => return Err(self.transport(what, &e)),
            }
            attempt += 1;
        }
    }

    fn transport(&self, what: &str, e: &reqwest::Error) -> Error {
        let detail = if e.is_timeout() {
            format!("timed out after {}s", self.timeout.as_secs())
        } else {
            error_chain(e)
        };
        Error::Transport(
            self.secrets
                .scrub(&format!("E2B API {}: {what}: {detail}", self.base)),
        )
    }

    /// Turns an unexpected response into an error that names the call and the fix.
    async fn failure(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        // Scrubbed whole, before any cut could split a secret.
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| self.secrets.scrub(&e.message))
            .unwrap_or_else(|_| self.secrets.scrub(&body).chars().take(300).collect());
        let message = message.trim();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Usage(format!(
                "E2B API {} rejected the API key while {what} (HTTP {}): {message}; check \
                 E2B_API_KEY or CRABBOX_E2B_API_KEY",
                self.base,
                status.as_u16()
            )),
            _ if status.is_redirection() => Error::Transport(format!(
                "E2B API {}: {what}: unexpected redirect (HTTP {}); redirects are not followed, \
                 check e2b.apiUrl",
                self.base,
                status.as_u16()
            )),
            _ => Error::Transport(format!(
                "E2B API {}: {what}: HTTP {}: {message}",
                self.base,
                status.as_u16()
            )),
        }
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, resp: Response) -> Result<T> {
        let body = resp.bytes().await.map_err(|e| self.transport(what, &e))?;
        serde_json::from_slice(&body).map_err(|e| {
            // The parser's complaint may quote the answer.
            Error::Transport(self.secrets.scrub(&format!(
                "E2B API {}: {what}: unreadable response: {e}",
                self.base
            )))
        })
    }

    /// `POST /v2/sandboxes`; only 201 counts as created. The error says whether the
    /// sandbox may exist anyway (the request may have reached the service).
    pub async fn create(&self, body: &NewSandbox) -> std::result::Result<Sandbox, CreateFailure> {
        let what = "creating a sandbox";
        let resp = match self
            .request(Method::POST, "/v2/sandboxes")
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Err(CreateFailure {
                    // A refused connection never carried the request; anything later might have.
                    maybe_created: !e.is_connect(),
                    in_flight: true,
                    error: self.transport(what, &e),
                });
            }
        };
        let status = resp.status();
        if status != StatusCode::CREATED {
            return Err(CreateFailure {
                // 4xx and redirects are refusals; a 5xx may have failed after creating it.
                maybe_created: status.is_server_error() || status.is_success(),
                in_flight: false,
                error: self.failure(what, resp).await,
            });
        }
        let sandbox: Sandbox = self.json(what, resp).await.map_err(|error| CreateFailure {
            maybe_created: true,
            in_flight: false,
            error,
        })?;
        self.learn([&sandbox.envd_access_token, &sandbox.traffic_access_token]);
        Ok(sandbox)
    }

    /// `POST /v2/sandboxes/{id}/connect` with the TTL: refreshes a running sandbox's lifetime
    /// (resumes a paused one). `None` when it is gone.
    pub async fn connect(&self, id: &str, timeout: Duration) -> Result<Option<Sandbox>> {
        let what = format!("connecting to sandbox {id}");
        let path = format!("/v2/sandboxes/{}/connect", percent_encode(id));
        let body = ConnectSandboxRequest {
            timeout: Some(timeout.as_secs().max(1)),
        };
        let resp = self
            .send_retrying(&what, || self.request(Method::POST, &path).json(&body))
            .await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED => {
                let sandbox: Sandbox = self.json(&what, resp).await?;
                self.learn([&sandbox.envd_access_token, &sandbox.traffic_access_token]);
                Ok(Some(sandbox))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(&what, resp).await),
        }
    }

    /// `GET /sandboxes/{id}`; `None` when it is gone.
    pub async fn get(&self, id: &str) -> Result<Option<SandboxDetail>> {
        let what = format!("looking up sandbox {id}");
        let path = format!("/sandboxes/{}", percent_encode(id));
        let resp = self
            .send_retrying(&what, || self.request(Method::GET, &path))
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let detail: SandboxDetail = self.json(&what, resp).await?;
                self.learn([&detail.envd_access_token]);
                Ok(Some(detail))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(&what, resp).await),
        }
    }

    /// `GET /v2/sandboxes` filtered by metadata, following `X-Next-Token`.
    pub async fn list(&self, filter: &BTreeMap<String, String>) -> Result<Vec<ListedSandbox>> {
        let what = "listing sandboxes";
        let metadata = encode_metadata_filter(filter);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query: Vec<(&str, &str)> = vec![
                ("state", "running,paused"),
                ("metadata", &metadata),
                ("limit", "100"),
            ];
            if let Some(t) = token.as_deref() {
                query.push(("nextToken", t));
            }
            let resp = self
                .send_retrying(what, || {
                    self.request(Method::GET, "/v2/sandboxes").query(&query)
                })
                .await?;
            if resp.status() != StatusCode::OK {
                return Err(self.failure(what, resp).await);
            }
            let next = resp
                .headers()
                .get(headers::NEXT_TOKEN)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from);
            let page: Vec<ListedSandbox> = self.json(what, resp).await?;
            out.extend(page);
            match next {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// `DELETE /sandboxes/{id}`: `true` if deleted now, `false` if it was already gone.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let what = format!("deleting sandbox {id}");
        let path = format!("/sandboxes/{}", percent_encode(id));
        let resp = self
            .send_retrying(&what, || self.request(Method::DELETE, &path))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(&what, resp).await),
        }
    }
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
