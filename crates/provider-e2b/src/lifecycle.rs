//! The control plane's lifecycle calls: pause, snapshots, forks. Pause, snapshot and fork
//! are not idempotent and are never retried; listing and deleting snapshots are.

use std::collections::BTreeMap;
use std::time::Duration;

use crabbox_core::provider::{BoxRef, Created, NewBox, PortUrl};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::{
    percent_encode, port_host, ForkRequest, ForkResult, PauseRequest, SnapshotInfo,
    SnapshotRequest, TRAFFIC_ACCESS_TOKEN_HEADER,
};
use reqwest::{Method, StatusCode};

use crate::control::ControlPlane;
use crate::provider::E2bProvider;

/// Most pages of a snapshot list read.
const MAX_SNAPSHOT_PAGES: usize = 100;

impl ControlPlane {
    fn gone(id: &str) -> Error {
        Error::NotFound(format!("sandbox {id} is gone (expired or deleted)"))
    }

    /// `POST /sandboxes/{id}/pause`: `true` when it paused now, `false` when it was paused.
    pub async fn pause(&self, id: &str) -> Result<bool> {
        let what = format!("pausing sandbox {id}");
        let path = format!("/sandboxes/{}/pause", percent_encode(id));
        let body = PauseRequest { memory: Some(true) };
        let reply = self
            .send_once(&what, self.request(Method::POST, &path).json(&body))
            .await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            StatusCode::NOT_FOUND => Err(Self::gone(id)),
            _ => Err(self.failure(&what, &reply)),
        }
    }

    /// `POST /sandboxes/{id}/timeout`: the sandbox ends (or pauses) `timeout` from now.
    pub async fn set_timeout(&self, id: &str, timeout: Duration) -> Result<()> {
        let what = format!("setting the timeout of sandbox {id}");
        let path = format!("/sandboxes/{}/timeout", percent_encode(id));
        let body = crabbox_e2b_wire::control::TimeoutRequest {
            timeout: timeout.as_secs().max(1),
        };
        let reply = self
            .send_retrying(&what, || self.request(Method::POST, &path).json(&body))
            .await?;
        match reply.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Self::gone(id)),
            _ => Err(self.failure(&what, &reply)),
        }
    }

    /// `POST /sandboxes/{id}/snapshots`.
    pub async fn snapshot(&self, id: &str, name: Option<&str>) -> Result<SnapshotInfo> {
        let what = format!("taking a snapshot of sandbox {id}");
        let path = format!("/sandboxes/{}/snapshots", percent_encode(id));
        let body = SnapshotRequest {
            name: name.map(String::from),
            memory: None,
        };
        let reply = self
            .send_once(&what, self.request(Method::POST, &path).json(&body))
            .await?;
        match reply.status {
            StatusCode::CREATED | StatusCode::OK => self.json(&what, &reply),
            StatusCode::NOT_FOUND => Err(Self::gone(id)),
            _ => Err(self.failure(&what, &reply)),
        }
    }

    /// `GET /snapshots`, following `X-Next-Token`.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.get_pages(
            "listing snapshots",
            "/snapshots",
            &[("limit", "100")],
            MAX_SNAPSHOT_PAGES,
        )
        .await
    }

    /// `DELETE /templates/{id}` (a snapshot is a template): `false` when there is none.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let what = format!("deleting snapshot {id}");
        let path = format!("/templates/{}", percent_encode(id));
        let reply = self
            .send_retrying(&what, || self.request(Method::DELETE, &path))
            .await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(&what, &reply)),
        }
    }

    /// `POST /sandboxes/{id}/fork`: one result per fork, each succeeding or failing alone.
    pub async fn fork(&self, id: &str, timeout_secs: u64, count: u32) -> Result<Vec<ForkResult>> {
        let what = format!("forking sandbox {id}");
        let path = format!("/sandboxes/{}/fork", percent_encode(id));
        let body = ForkRequest {
            timeout: Some(timeout_secs.max(1)),
            count: Some(count),
        };
        let reply = self
            .send_once(&what, self.request(Method::POST, &path).json(&body))
            .await?;
        match reply.status {
            StatusCode::CREATED | StatusCode::OK => {
                let results: Vec<ForkResult> = self.json(&what, &reply)?;
                for r in &results {
                    if let Some(s) = &r.sandbox {
                        self.learn([&s.envd_access_token, &s.traffic_access_token]);
                    }
                }
                Ok(results)
            }
            StatusCode::NOT_FOUND => Err(Self::gone(id)),
            _ => Err(self.failure(&what, &reply)),
        }
    }
}

impl E2bProvider {
    /// Checks the sandbox is `target`'s (unless already checked in this process).
    async fn owned(&self, target: &BoxRef) -> Result<()> {
        if !target.verified && self.owned_detail(target).await?.is_none() {
            return Err(ControlPlane::gone(&target.remote_id));
        }
        Ok(())
    }

    pub(crate) async fn set_ttl_of(&self, target: &BoxRef, ttl: Duration) -> Result<()> {
        self.owned(target).await?;
        self.control.set_timeout(&target.remote_id, ttl).await
    }

    pub(crate) async fn pause_box(&self, target: &BoxRef) -> Result<bool> {
        self.owned(target).await?;
        self.control.pause(&target.remote_id).await
    }

    pub(crate) async fn resume_box(&self, target: &BoxRef, ttl: Duration) -> Result<bool> {
        self.owned(target).await?;
        let (_, resumed) = self
            .control
            .connect(&target.remote_id, ttl)
            .await?
            .ok_or_else(|| ControlPlane::gone(&target.remote_id))?;
        Ok(resumed)
    }

    pub(crate) async fn snapshot_box(
        &self,
        target: &BoxRef,
        name: Option<&str>,
    ) -> Result<crabbox_core::provider::SnapshotInfo> {
        self.owned(target).await?;
        let info = self.control.snapshot(&target.remote_id, name).await?;
        Ok(crabbox_core::provider::SnapshotInfo {
            id: info.snapshot_id,
            names: info.names,
        })
    }

    pub(crate) async fn snapshots(&self) -> Result<Vec<crabbox_core::provider::SnapshotInfo>> {
        Ok(self
            .control
            .list_snapshots()
            .await?
            .into_iter()
            .map(|s| crabbox_core::provider::SnapshotInfo {
                id: s.snapshot_id,
                names: s.names,
            })
            .collect())
    }

    /// Forks carry the source's metadata (the service copies it; it cannot be changed
    /// after), so their claims name the source's lease as the one their tags prove.
    pub(crate) async fn fork_box(
        &self,
        source: &BoxRef,
        forks: &[NewBox<'_>],
    ) -> Result<Vec<std::result::Result<Created, Error>>> {
        self.owned(source).await?;
        let count = u32::try_from(forks.len()).unwrap_or(u32::MAX);
        let ttl = forks.first().map_or(Duration::from_secs(300), |f| f.ttl);
        let results = self
            .control
            .fork(&source.remote_id, ttl.as_secs(), count)
            .await?;
        Ok(results
            .into_iter()
            .map(|r| match (r.sandbox, r.error) {
                (Some(sandbox), _) => Ok(Created {
                    remote_id: sandbox.sandbox_id.clone(),
                    labels: BTreeMap::from([("template".to_string(), sandbox.template_id.clone())]),
                    session: Box::new(self.session(
                        &sandbox.sandbox_id,
                        sandbox.domain.as_deref(),
                        sandbox.envd_access_token.as_deref(),
                    )),
                }),
                (None, Some(e)) => Err(Error::Transport(self.control.secrets().scrub(&format!(
                    "E2B could not start a fork of sandbox {}: HTTP {}: {}",
                    source.remote_id, e.code, e.message
                )))),
                (None, None) => Err(Error::Transport(format!(
                    "E2B answered neither a sandbox nor an error for a fork of sandbox {}",
                    source.remote_id
                ))),
            })
            .collect())
    }

    /// `https://<port>-<sandboxID>.<domain>`, with the traffic token header where the
    /// sandbox takes no public traffic. Learning the token takes a connect with `ttl`, which
    /// only ever extends a running sandbox's life (and wakes a paused one, as traffic
    /// would).
    pub(crate) async fn port_url_of(
        &self,
        target: &BoxRef,
        port: u16,
        ttl: Duration,
    ) -> Result<PortUrl> {
        self.owned(target).await?;
        let (sandbox, _) = self
            .control
            .connect(&target.remote_id, ttl)
            .await?
            .ok_or_else(|| ControlPlane::gone(&target.remote_id))?;
        let domain = sandbox
            .domain
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or(self.domain());
        let mut headers = BTreeMap::new();
        if let Some(token) = sandbox.traffic_access_token {
            headers.insert(TRAFFIC_ACCESS_TOKEN_HEADER.to_string(), token);
        }
        Ok(PortUrl {
            url: format!("https://{}", port_host(port, &sandbox.sandbox_id, domain)),
            headers,
        })
    }
}
