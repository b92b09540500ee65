//! [`E2bProvider`]: the box primitives over E2B's control plane.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::config::LoadedConfig;
use crabbox_core::events::Reporter;
use crabbox_core::provider::{
    BoxRef, BoxSession, Capabilities, CreateFailure, Created, NewBox, PortUrl, Provider, RemoteBox,
    SnapshotInfo,
};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::{ListedSandbox, NewSandbox, SandboxDetail};

use crate::control::ControlPlane;
use crate::envd::{Envd, EnvdRoute};
use crate::metadata::{self, detail_box, listed_box, not_crabbox, Tags};
use crate::placement::{clamp_ttl, Placement, DEFAULT_USER};
use crate::retry::RetryPolicy;
use crate::scan_cache::ScanCache;
use crate::session::E2bSession;
use crate::settings::{self, E2bSettings, Secret};

pub(crate) const PROVIDER: &str = "e2b";
/// Looks for a sandbox whose create may still be in progress, and the pause between them.
const SETTLE_LOOKS: u32 = 3;
const SETTLE_POLL: Duration = Duration::from_secs(1);

/// Crabbox's E2B backend. Build it with [`E2bProvider::from_config`].
#[derive(Debug)]
pub struct E2bProvider {
    pub(crate) control: ControlPlane,
    /// What scans read of sandboxes' trees, when a state directory was given.
    scans: Option<ScanCache>,
    /// How long a tree's watcher is given to answer.
    watcher_patience: Duration,
    pub(crate) http: reqwest::Client,
    /// The API URL: the claims' endpoint scope.
    pub(crate) endpoint: String,
    /// Configured envd domain, or the fixed sandbox URL.
    pub(crate) domain: String,
    pub(crate) sandbox_url: Option<String>,
    /// The checked user and workdir, or why they were refused (reported by run/warmup).
    placement: std::result::Result<Placement, String>,
    /// Egress rules of new sandboxes, or why they were refused (reported by run/warmup).
    network: std::result::Result<crate::network::NetworkSettings, String>,
    pub(crate) template: String,
    max_ttl: Duration,
    /// Where the API key came from ("environment E2B_API_KEY"), for `doctor`.
    pub(crate) key_origin: String,
    /// How to reach the envd of each sandbox inspected in this process (for readiness).
    seen: Mutex<BTreeMap<String, EnvdAccess>>,
}

/// A sandbox's envd domain and access token.
type EnvdAccess = (Option<String>, Option<Secret>);

impl E2bProvider {
    /// Reads the `e2b` section of `cfg`, checks the key, the endpoints and where they came
    /// from. User and workdir are checked here too but reported by [`Provider::preflight`],
    /// before any network call.
    pub fn from_config(cfg: &LoadedConfig) -> Result<E2bProvider> {
        let s: E2bSettings = cfg.section("e2b")?;
        let key = settings::api_key(&s)?;
        settings::refuse_repo_redirect(cfg, &s)?;
        let endpoints = settings::endpoints(cfg, &s)?;
        if s.control_timeout.is_zero() || s.retry_attempts == 0 {
            return Err(Error::Usage(
                "e2b.controlTimeout and e2b.retryAttempts must be positive (defaults: 60s, 3)"
                    .into(),
            ));
        }
        if s.max_ttl.is_zero() {
            return Err(Error::Usage(
                "e2b.maxTtl must be positive (e.g. 1h, or 24h on E2B's pro tier)".into(),
            ));
        }
        let all_loopback = [Some(&endpoints.api_url), endpoints.sandbox_url.as_ref()]
            .into_iter()
            .flatten()
            .all(|u| {
                url::Url::parse(u)
                    .ok()
                    .and_then(|u| u.host().map(|h| settings::is_loopback(&h)))
                    .unwrap_or(false)
            });
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .user_agent(concat!("crabbox/", env!("CARGO_PKG_VERSION")));
        if all_loopback {
            // A proxy from the environment must not see loopback traffic or its tokens.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| Error::Transport(format!("building the HTTP client: {e}")))?;
        let template = match s.template.trim() {
            "" => crabbox_e2b_wire::control::DEFAULT_TEMPLATE.to_string(),
            t if t.len() > 256 || t.chars().any(char::is_control) => {
                return Err(Error::Usage(format!(
                    "e2b.template {:?} is not a template name or id (they are short, printable \
                     names such as `base`)",
                    crabbox_core::config::shorten(t)
                )))
            }
            t => t.to_string(),
        };
        let mut control = ControlPlane::new(http.clone(), endpoints.api_url.clone(), key);
        let defaults = RetryPolicy::default();
        control.set_retry(RetryPolicy {
            max_attempts: s.retry_attempts,
            base_delay: defaults.base_delay.min(s.retry_max_wait),
            max_delay: s.retry_max_wait,
            report_after: defaults.report_after,
        });
        control.set_call_timeout(s.control_timeout);
        Ok(E2bProvider {
            control,
            scans: None,
            watcher_patience: crate::remote_sync::WATCHER_PATIENCE,
            http,
            endpoint: endpoints.api_url,
            domain: endpoints.domain,
            sandbox_url: endpoints.sandbox_url,
            placement: Placement::new(&s.user, &s.workdir),
            network: crate::network::rules(cfg, &s.network),
            template,
            max_ttl: s.max_ttl,
            key_origin: cfg
                .origin("e2b.apiKey")
                .map(|o| o.to_string())
                .unwrap_or_else(|| "an unknown layer".into()),
            seen: Mutex::default(),
        })
    }

    /// Retry policy of idempotent control-plane calls (tests make it fast).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.control.set_retry(retry);
        self
    }

    /// Where waits before a retried call are reported ([`crate::retry`]).
    pub fn with_reporter(mut self, reporter: std::sync::Arc<dyn Reporter>) -> Self {
        self.control.set_reporter(reporter);
        self
    }

    /// Keeps what scans read of sandboxes' trees under `dir` (see [`ScanCache`]).
    pub fn with_scan_cache(mut self, dir: std::path::PathBuf) -> Self {
        self.scans = Some(ScanCache::new(dir));
        self
    }

    /// How long a tree's watcher is given to answer (see [`E2bSession::with_watcher_patience`]);
    /// tests on a loaded machine give it longer, so that which path a sync took is not a race.
    pub fn with_watcher_patience(mut self, patience: Duration) -> Self {
        self.watcher_patience = patience;
        self
    }

    /// The configured envd domain.
    pub(crate) fn domain(&self) -> &str {
        &self.domain
    }

    /// The egress rules of new sandboxes, or why they are refused (a usage error).
    pub(crate) fn network_rules(&self) -> Result<&crate::network::NetworkSettings> {
        self.network
            .as_ref()
            .map_err(|reason| Error::Usage(reason.clone()))
    }

    fn placement(&self) -> Result<&Placement> {
        self.placement
            .as_ref()
            .map_err(|reason| Error::Usage(reason.clone()))
    }

    fn user(&self) -> String {
        self.placement
            .as_ref()
            .map(|p| p.user.clone())
            .unwrap_or_else(|_| DEFAULT_USER.to_string())
    }

    fn envd(&self, sandbox_id: &str, domain: Option<&str>, token: Option<&Secret>) -> Envd {
        let route = match &self.sandbox_url {
            Some(url) => EnvdRoute::Fixed(url.clone()),
            None => EnvdRoute::Domain(
                domain
                    .filter(|d| !d.trim().is_empty())
                    .unwrap_or(&self.domain)
                    .to_string(),
            ),
        };
        Envd::new(
            self.http.clone(),
            &route,
            sandbox_id,
            token.cloned(),
            &self.user(),
            self.control.secrets().clone(),
        )
    }

    pub(crate) fn session(
        &self,
        sandbox_id: &str,
        domain: Option<&str>,
        token: Option<&str>,
    ) -> E2bSession {
        let token = token.map(Secret::new);
        E2bSession::new(
            sandbox_id,
            self.envd(sandbox_id, domain, token.as_ref()),
            self.control.clone(),
        )
        .with_scan_cache(self.scans.clone())
        .with_watcher_patience(self.watcher_patience)
    }

    /// Checks that `detail` is the sandbox `target` names: this lease's for a claimed box,
    /// crabbox's for an unclaimed one.
    fn check_owner(&self, target: &BoxRef, detail: &SandboxDetail) -> Result<()> {
        let meta = &detail.metadata;
        if target.claimed && !metadata::belongs_to(meta, target.tagged_lease()) {
            // The tags are the service's words: scrubbed like any other.
            return Err(Error::NotOurs(self.control.secrets().scrub(&format!(
                "sandbox {} does not carry lease {}'s crabbox metadata (crabbox={}, provider={}, \
                 lease={}); refusing to use or delete a sandbox crabbox cannot prove is this \
                 lease's",
                detail.sandbox_id,
                target.tagged_lease(),
                meta.get("crabbox").map_or("-", String::as_str),
                meta.get("provider").map_or("-", String::as_str),
                meta.get("lease").map_or("-", String::as_str),
            ))));
        }
        if !target.claimed && !metadata::is_crabbox(meta) {
            return Err(not_crabbox(&detail.sandbox_id));
        }
        Ok(())
    }

    /// A sandbox's detail after checking it is `target`'s; `None` when it is gone.
    pub(crate) async fn owned_detail(&self, target: &BoxRef) -> Result<Option<SandboxDetail>> {
        let Some(detail) = self.control.get(&target.remote_id).await? else {
            return Ok(None);
        };
        self.check_owner(target, &detail)?;
        self.remember(&detail);
        Ok(Some(detail))
    }

    /// Keeps how to reach `detail`'s envd, for a readiness check of what was inspected.
    pub(crate) fn remember(&self, detail: &SandboxDetail) {
        self.seen.lock().expect("seen lock").insert(
            detail.sandbox_id.clone(),
            (
                detail.domain.clone(),
                detail.envd_access_token.as_deref().map(Secret::new),
            ),
        );
    }

    /// Every crabbox sandbox of provider e2b on this endpoint.
    pub(crate) async fn crabbox_sandboxes(&self) -> Result<Vec<ListedSandbox>> {
        Ok(self
            .control
            .list(&metadata::crabbox_filter())
            .await?
            .into_iter()
            .filter(|s| metadata::is_crabbox(&s.metadata))
            .collect())
    }

    /// Crabbox sandboxes tagged with `lease_id`, by a list filtered on the lease tag.
    async fn sandboxes_of_lease(&self, lease_id: &str) -> Result<Vec<String>> {
        Ok(self
            .listed_of_lease(lease_id)
            .await?
            .into_iter()
            .map(|s| s.sandbox_id)
            .collect())
    }

    pub(crate) async fn listed_of_lease(&self, lease_id: &str) -> Result<Vec<ListedSandbox>> {
        let mut filter = metadata::crabbox_filter();
        filter.insert("lease".to_string(), metadata::sanitize(lease_id));
        Ok(self
            .control
            .list(&filter)
            .await?
            .into_iter()
            .filter(|s| metadata::belongs_to(&s.metadata, lease_id))
            .collect())
    }
}

#[async_trait]
impl Provider for E2bProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote_kill: true,
            warm_reuse: true,
            reclaim: true,
            pause: true,
            snapshot: true,
            fork: true,
            port_url: true,
            pty: true,
            ..Capabilities::default()
        }
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn machine_size_note(&self) -> Option<&'static str> {
        Some("E2B sandbox sizes come from the template: set e2b.template (--e2b-template)")
    }

    fn preflight(&self) -> Result<()> {
        self.placement()?;
        self.network_rules().map(|_| ())
    }

    fn workdir(&self, _lease_id: &str) -> Result<String> {
        Ok(self.placement()?.workdir.clone())
    }

    fn ttl(&self, requested: Duration) -> Duration {
        clamp_ttl(requested, self.max_ttl)
    }

    async fn create(
        &self,
        new: &NewBox<'_>,
        reporter: &dyn Reporter,
    ) -> std::result::Result<Created, CreateFailure> {
        let template = new.from_snapshot.unwrap_or(&self.template);
        reporter.status(&format!(
            "creating E2B sandbox from {} {template} for lease {} ({}){}",
            if new.from_snapshot.is_some() {
                "snapshot"
            } else {
                "template"
            },
            new.lease_id,
            new.slug,
            new.idle_timeout
                .map(|i| format!(", pausing after {}s idle", i.as_secs()))
                .unwrap_or_default()
        ));
        let tags = Tags {
            lease_id: new.lease_id,
            slug: new.slug,
            keep: new.keep,
            ttl: new.ttl,
            repo: new.repo_root,
            workdir: new.workdir,
            template,
        }
        .build();
        let (allow_internet_access, network) = self.network_rules()?.create_fields();
        let body = NewSandbox {
            allow_internet_access,
            network,
            template_id: template.to_string(),
            timeout: Some(new.idle_timeout.unwrap_or(new.ttl).as_secs().max(1)),
            metadata: Some(tags),
            auto_pause: new.idle_timeout.map(|_| true),
            auto_resume: new
                .idle_timeout
                .map(|_| crabbox_e2b_wire::control::AutoResume { enabled: true }),
            ..NewSandbox::default()
        };
        let what = format!("creating a sandbox for lease {}", new.lease_id);
        let sandbox = self.control.create(&body, &what).await?;
        let session = self.session(
            &sandbox.sandbox_id,
            sandbox.domain.as_deref(),
            sandbox.envd_access_token.as_deref(),
        );
        Ok(Created {
            remote_id: sandbox.sandbox_id.clone(),
            labels: BTreeMap::from([("template".to_string(), template.to_string())]),
            session: Box::new(session),
        })
    }

    async fn delete_lease_boxes(&self, lease_id: &str, settle: bool) -> Result<Vec<String>> {
        let looks = if settle { SETTLE_LOOKS } else { 1 };
        let mut deleted = Vec::new();
        for look in 0..looks {
            if look > 0 {
                tokio::time::sleep(SETTLE_POLL).await;
            }
            for id in self.sandboxes_of_lease(lease_id).await? {
                self.control.delete(&id).await?;
                if let Some(c) = &self.scans {
                    c.forget(&id);
                }
                deleted.push(id);
            }
            if !deleted.is_empty() {
                break;
            }
        }
        Ok(deleted)
    }

    async fn inspect(&self, target: &BoxRef) -> Result<Option<RemoteBox>> {
        Ok(self.owned_detail(target).await?.map(|d| detail_box(&d)))
    }

    async fn find_unclaimed(&self, id: &str, by_tags: bool) -> Result<Option<RemoteBox>> {
        if by_tags {
            return crate::lookup::find_by_tags(self, id).await;
        }
        crate::lookup::find_by_id(self, id).await
    }

    async fn open(&self, target: &BoxRef, ttl: Duration) -> Result<Box<dyn BoxSession>> {
        let gone = || {
            Error::NotFound(format!(
                "sandbox {} of lease {} ({}) is gone (expired or deleted)",
                target.remote_id, target.lease_id, target.slug
            ))
        };
        if !target.verified && self.owned_detail(target).await?.is_none() {
            return Err(gone());
        }
        let (sandbox, resumed) = self
            .control
            .connect(&target.remote_id, ttl)
            .await?
            .ok_or_else(gone)?;
        Ok(Box::new(
            self.session(
                &sandbox.sandbox_id,
                sandbox.domain.as_deref(),
                sandbox.envd_access_token.as_deref(),
            )
            .resumed_now(resumed),
        ))
    }

    async fn delete(&self, target: &BoxRef) -> Result<bool> {
        if !target.verified && self.owned_detail(target).await?.is_none() {
            return Ok(false);
        }
        let deleted = self.control.delete(&target.remote_id).await?;
        if let Some(c) = &self.scans {
            c.forget(&target.remote_id);
        }
        Ok(deleted)
    }

    async fn list(&self) -> Result<Vec<RemoteBox>> {
        Ok(self
            .crabbox_sandboxes()
            .await?
            .iter()
            .map(listed_box)
            .collect())
    }

    async fn boxes_of_lease(&self, lease_id: &str) -> Result<Vec<RemoteBox>> {
        Ok(self
            .listed_of_lease(lease_id)
            .await?
            .iter()
            .map(listed_box)
            .collect())
    }

    async fn set_ttl(&self, target: &BoxRef, ttl: Duration) -> Result<()> {
        self.set_ttl_of(target, ttl).await
    }

    async fn pause(&self, target: &BoxRef) -> Result<bool> {
        self.pause_box(target).await
    }

    async fn resume(&self, target: &BoxRef, ttl: Duration) -> Result<bool> {
        self.resume_box(target, ttl).await
    }

    async fn snapshot(&self, target: &BoxRef, name: Option<&str>) -> Result<SnapshotInfo> {
        self.snapshot_box(target, name).await
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.snapshots().await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        self.control.delete_snapshot(id).await
    }

    async fn fork(
        &self,
        source: &BoxRef,
        forks: &[NewBox<'_>],
    ) -> Result<Vec<std::result::Result<Created, Error>>> {
        self.fork_box(source, forks).await
    }

    async fn port_url(&self, target: &BoxRef, port: u16, ttl: Duration) -> Result<PortUrl> {
        self.port_url_of(target, port, ttl).await
    }

    async fn doctor(&self) -> Vec<crabbox_core::doctor::Check> {
        crate::doctor::checks(self).await
    }

    async fn ready(&self, b: &RemoteBox) -> bool {
        if !b.running {
            return false;
        }
        let access = self
            .seen
            .lock()
            .expect("seen lock")
            .get(&b.remote_id)
            .cloned();
        let (domain, token) = access.unwrap_or_default();
        self.envd(&b.remote_id, domain.as_deref(), token.as_ref())
            .healthy()
            .await
    }
}
