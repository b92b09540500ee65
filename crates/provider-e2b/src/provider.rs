//! [`E2bProvider`]: leases as E2B sandboxes, end to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crabbox_core::claims::{now_rfc3339, Claim, ClaimStore};
use crabbox_core::command::shell_quote;
use crabbox_core::config::LoadedConfig;
use crabbox_core::lease;
use crabbox_core::provider::{
    BoxStatus, Capabilities, KeepPolicy, OutputSink, Provider, Reporter, RunOutcome, RunRequest,
    StatusRequest, StopOutcome, StopRequest, Timing, WarmupRequest,
};
use crabbox_core::sync::SyncState;
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::{NewSandbox, Sandbox, SandboxDetail, SandboxState};
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, Signal, StartRequest};
use tokio_util::sync::CancellationToken;

use crate::control::{ControlPlane, CreateError};
use crate::envd::{exit_code_of, Envd, EnvdRoute, ProcessStream};
use crate::metadata::{self, Tags};
use crate::placement::{clamp_ttl, Placement};
use crate::remote_sync::{sync_tree, SyncPlan};
use crate::retry::RetryPolicy;
use crate::run_tree::{self, RUN_ID_VAR};
use crate::settings::{self, E2bSettings, Secret};

const PROVIDER: &str = "e2b";
/// Whole budget of the cleanup after Ctrl-C: signals, waiting, deleting the sandbox.
const CANCEL_BUDGET: Duration = Duration::from_secs(30);
/// How long a SIGKILLed command gets to report its end before we stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Poll interval of `status --wait`.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// Bound of the lookup and delete of a sandbox whose create did not complete.
const ORPHAN_BUDGET: Duration = Duration::from_secs(20);
/// Looks for a sandbox whose create may still be in progress, and the pause between them.
const SETTLE_LOOKS: u32 = 3;
const SETTLE_POLL: Duration = Duration::from_secs(1);

/// Crabbox's E2B backend. Build it with [`E2bProvider::from_config`].
pub struct E2bProvider {
    control: ControlPlane,
    http: reqwest::Client,
    /// The API URL: the claims' endpoint scope.
    endpoint: String,
    /// Configured envd domain, or the fixed sandbox URL.
    domain: String,
    sandbox_url: Option<String>,
    claims: ClaimStore,
    state_dir: PathBuf,
    /// The checked user and workdir, or why they were refused (reported by run/warmup).
    placement: std::result::Result<Placement, String>,
    template: String,
    max_ttl: Duration,
    sync_timeout: Duration,
    cancel_grace: Duration,
}

impl std::fmt::Debug for E2bProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bProvider")
            .field("control", &self.control)
            .field("domain", &self.domain)
            .field("sandbox_url", &self.sandbox_url)
            .field("claims", &self.claims)
            .field("placement", &self.placement)
            .field("template", &self.template)
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

/// A sandbox this run works on.
struct Acquired {
    lease_id: String,
    slug: String,
    sandbox_id: String,
    envd: Envd,
    /// Made by this run (so this run releases it).
    created: bool,
    claim: Option<Claim>,
}

/// How the command phase ended.
enum Ran {
    Exited(i32),
    Interrupted,
}

impl E2bProvider {
    /// Reads the `e2b` section of `cfg`, checks the key, the endpoints and where they came
    /// from. User and workdir are checked here too but reported by the commands that need
    /// them, before any network call.
    pub fn from_config(
        cfg: &LoadedConfig,
        claims: ClaimStore,
        state_dir: PathBuf,
    ) -> Result<E2bProvider> {
        let s: E2bSettings = cfg.section("e2b")?;
        let key = settings::api_key(&s)?;
        settings::refuse_repo_redirect(cfg, &s)?;
        let endpoints = settings::endpoints(cfg, &s)?;
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
            t => t.to_string(),
        };
        Ok(E2bProvider {
            control: ControlPlane::new(http.clone(), endpoints.api_url.clone(), key),
            http,
            endpoint: endpoints.api_url,
            domain: endpoints.domain,
            sandbox_url: endpoints.sandbox_url,
            claims,
            state_dir,
            placement: Placement::new(&s.user, &s.workdir),
            template,
            max_ttl: s.max_ttl,
            sync_timeout: if cfg.core.sync.timeout.is_zero() {
                Duration::from_secs(600)
            } else {
                cfg.core.sync.timeout
            },
            cancel_grace: Duration::from_secs(3),
        })
    }

    /// Retry policy of idempotent control-plane calls (tests make it fast).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.control.set_retry(retry);
        self
    }

    /// How long a SIGTERMed command gets before SIGKILL on Ctrl-C (default 3 s).
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// The API URL this provider talks to (the claims' endpoint scope).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn placement(&self) -> Result<&Placement> {
        self.placement
            .as_ref()
            .map_err(|reason| Error::Usage(reason.clone()))
    }

    fn envd(
        &self,
        sandbox_id: &str,
        domain: Option<&str>,
        token: Option<&str>,
        user: &str,
    ) -> Envd {
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
            token.map(Secret::new),
            user,
        )
    }

    fn sandbox_envd(&self, sbx: &Sandbox, user: &str) -> Envd {
        self.envd(
            &sbx.sandbox_id,
            sbx.domain.as_deref(),
            sbx.envd_access_token.as_deref(),
            user,
        )
    }

    fn state_path(&self, lease_id: &str) -> PathBuf {
        SyncState::path_for(&self.state_dir, lease_id)
    }

    /// Drops a lease's claim and sync state.
    fn forget(&self, lease_id: &str) -> Result<()> {
        SyncState::remove(&self.state_path(lease_id));
        self.claims.remove(lease_id)
    }

    /// The local claim `id` names on this endpoint. A claim made against another endpoint
    /// is never used.
    fn resolve_claim(&self, id: &str) -> Result<Option<Claim>> {
        match self.claims.resolve(PROVIDER, id)? {
            Some(c) if c.endpoint == self.endpoint => Ok(Some(c)),
            Some(c) => Err(Error::NotFound(format!(
                "lease {} ({}) belongs to E2B endpoint {}, not {}; point e2b.apiUrl there to \
                 use it",
                c.lease_id, c.slug, c.endpoint, self.endpoint
            ))),
            None => Ok(None),
        }
    }

    /// Creates a sandbox and its claim. The lease id and slug are reserved under the claim
    /// store's lock first (the claim has no sandbox yet), then the sandbox is created with
    /// its tags, then the claim is completed; if that write fails the sandbox is deleted.
    ///
    /// A create that failed or was cancelled after the request may have reached E2B is
    /// followed by a lookup of the lease's tag, deleting what it finds; if that lookup fails
    /// the placeholder claim stays so `crabbox stop --provider e2b <lease>` can finish it.
    #[allow(clippy::too_many_arguments)]
    async fn create_lease(
        &self,
        placement: &Placement,
        wanted_slug: Option<&str>,
        ttl: Duration,
        keep: bool,
        repo_root: Option<&std::path::Path>,
        cancel: Option<&CancellationToken>,
        reporter: &dyn Reporter,
    ) -> Result<(Claim, Sandbox)> {
        if cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(Error::Interrupted);
        }
        let now = now_rfc3339();
        let mut claim = self.claims.create(wanted_slug, |lease_id, slug| Claim {
            lease_id: lease_id.to_string(),
            slug: slug.to_string(),
            provider: PROVIDER.to_string(),
            remote_id: String::new(),
            endpoint: self.endpoint.clone(),
            repo_root: repo_root.map(PathBuf::from),
            workdir: placement.workdir.clone(),
            claimed_at: now.clone(),
            last_used_at: now.clone(),
            keep,
            labels: BTreeMap::from([
                ("template".to_string(), self.template.clone()),
                ("state".to_string(), "creating".to_string()),
            ]),
        })?;
        reporter.status(&format!(
            "creating E2B sandbox from template {} for lease {} ({})",
            self.template, claim.lease_id, claim.slug
        ));
        let tags = Tags {
            lease_id: &claim.lease_id,
            slug: &claim.slug,
            keep,
            ttl,
            repo: repo_root,
            workdir: &placement.workdir,
            template: &self.template,
        }
        .build();
        let body = NewSandbox {
            template_id: self.template.clone(),
            timeout: Some(ttl.as_secs().max(1)),
            metadata: Some(tags),
            ..NewSandbox::default()
        };
        let created = match cancel {
            Some(cancel) => tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(CreateError {
                    error: Error::Interrupted,
                    maybe_created: true,
                    in_flight: true,
                }),
                r = self.control.create(&body) => r,
            },
            None => self.control.create(&body).await,
        };
        let sandbox = match created {
            Ok(s) => s,
            Err(failure) => return Err(self.abandon_create(&claim, failure, reporter).await),
        };
        claim.remote_id = sandbox.sandbox_id.clone();
        claim.labels.remove("state");
        if let Err(e) = self.claims.write(&claim) {
            return Err(
                match tokio::time::timeout(ORPHAN_BUDGET, self.control.delete(&sandbox.sandbox_id))
                    .await
                {
                    Ok(Ok(_)) => {
                        let _ = self.claims.remove(&claim.lease_id);
                        with_hint(
                            e,
                            &format!(
                                "sandbox {} was deleted again since it could not be claimed",
                                sandbox.sandbox_id
                            ),
                        )
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(d)) => d.to_string(),
                            _ => format!("no answer within {}s", ORPHAN_BUDGET.as_secs()),
                        };
                        with_hint(
                            e,
                            &format!(
                                "sandbox {} was created but could not be deleted again ({why}); \
                                 release it with `crabbox stop --provider e2b {}` or `crabbox \
                                 stop --provider e2b --reclaim {}`",
                                sandbox.sandbox_id, claim.lease_id, sandbox.sandbox_id
                            ),
                        )
                    }
                },
            );
        }
        SyncState::remove(&self.state_path(&claim.lease_id));
        Ok((claim, sandbox))
    }

    /// After a failed or cancelled create: releases the reserved lease, first deleting any
    /// sandbox E2B made for it anyway. Returns the error to report.
    async fn abandon_create(
        &self,
        claim: &Claim,
        failure: CreateError,
        reporter: &dyn Reporter,
    ) -> Error {
        let CreateError {
            error,
            maybe_created,
            in_flight,
        } = failure;
        if !maybe_created {
            let _ = self.claims.remove(&claim.lease_id);
            return error;
        }
        reporter.status(&format!(
            "creating the sandbox for lease {} did not complete; looking for one tagged with it \
             to delete",
            claim.lease_id
        ));
        let cleanup = tokio::time::timeout(
            ORPHAN_BUDGET,
            self.delete_lease_sandboxes(&claim.lease_id, in_flight),
        )
        .await;
        let why = match cleanup {
            Ok(Ok(deleted)) => {
                for id in &deleted {
                    reporter.status(&format!(
                        "deleted sandbox {id} of the unfinished lease {}",
                        claim.lease_id
                    ));
                }
                let _ = self.forget(&claim.lease_id);
                return error;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", ORPHAN_BUDGET.as_secs()),
        };
        let hint = format!(
            "a sandbox for lease {} ({}) may exist on E2B and could not be checked ({why}); \
             the claim is kept: release it with `crabbox stop --provider e2b {}`",
            claim.lease_id, claim.slug, claim.lease_id
        );
        reporter.status(&hint);
        with_hint(error, &hint)
    }

    /// Crabbox sandboxes tagged with `lease_id`, by a list filtered on the lease tag.
    async fn sandboxes_of_lease(&self, lease_id: &str) -> Result<Vec<String>> {
        let mut filter = metadata::crabbox_filter();
        filter.insert("lease".to_string(), metadata::sanitize(lease_id));
        Ok(self
            .control
            .list(&filter)
            .await?
            .into_iter()
            .filter(|s| metadata::belongs_to(&s.metadata, lease_id))
            .map(|s| s.sandbox_id)
            .collect())
    }

    /// Deletes every sandbox tagged with `lease_id`. `settle`: the create may still be in
    /// progress on E2B's side, so an empty answer is asked again a few times.
    async fn delete_lease_sandboxes(&self, lease_id: &str, settle: bool) -> Result<Vec<String>> {
        let looks = if settle { SETTLE_LOOKS } else { 1 };
        let mut deleted = Vec::new();
        for look in 0..looks {
            if look > 0 {
                tokio::time::sleep(SETTLE_POLL).await;
            }
            for id in self.sandboxes_of_lease(lease_id).await? {
                self.control.delete(&id).await?;
                deleted.push(id);
            }
            if !deleted.is_empty() {
                break;
            }
        }
        Ok(deleted)
    }

    /// The sandbox `id` names and its claim: by local claim, else (a raw sandbox id or
    /// `e2b_<id>`) by asking E2B, accepted only if its metadata says it is Crabbox's.
    async fn locate(&self, id: &str) -> Result<(Option<Claim>, SandboxDetail)> {
        if let Some(claim) = self.resolve_claim(id)? {
            if claim.remote_id.is_empty() {
                return Err(Error::NotFound(format!(
                    "lease {} ({}) has no sandbox: its creation did not finish; release it \
                     with `crabbox stop --provider e2b {}`",
                    claim.lease_id, claim.slug, claim.lease_id
                )));
            }
            let detail = self.control.get(&claim.remote_id).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "sandbox {} of lease {} ({}) is gone (expired or deleted); drop the claim \
                     with `crabbox stop --provider e2b {}`",
                    claim.remote_id, claim.lease_id, claim.slug, claim.lease_id
                ))
            })?;
            if !metadata::belongs_to(&detail.metadata, &claim.lease_id) {
                return Err(Error::NotFound(format!(
                    "sandbox {} does not carry lease {}'s Crabbox metadata; refusing to use a \
                     sandbox Crabbox cannot prove is this lease's",
                    claim.remote_id, claim.lease_id
                )));
            }
            return Ok((Some(claim), detail));
        }
        let detail = self.lookup_unclaimed(id).await?;
        Ok((None, detail))
    }

    /// A Crabbox sandbox with no local claim, by raw sandbox id or `e2b_<id>`.
    async fn lookup_unclaimed(&self, id: &str) -> Result<SandboxDetail> {
        let unknown = || {
            Error::NotFound(format!(
                "no e2b lease, slug or sandbox {id:?} known on this machine ({}); see `crabbox \
                 list --provider e2b`",
                self.endpoint
            ))
        };
        if lease::is_lease_id(id) {
            return Err(unknown());
        }
        let raw = id.strip_prefix("e2b_").unwrap_or(id);
        if raw.is_empty()
            || !raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(unknown());
        }
        let detail = self.control.get(raw).await?.ok_or_else(unknown)?;
        if !metadata::is_crabbox(&detail.metadata) {
            return Err(Error::NotFound(format!(
                "sandbox {raw} was not created by Crabbox for provider e2b (its metadata lacks \
                 crabbox=true, provider=e2b); refusing to use it"
            )));
        }
        Ok(detail)
    }

    /// Names of an unclaimed Crabbox sandbox, from its tags.
    fn names_of(meta: &BTreeMap<String, String>, sandbox_id: &str) -> (String, String) {
        let lease_id = meta
            .get("lease")
            .filter(|l| lease::is_lease_id(l))
            .cloned()
            .unwrap_or_else(|| format!("e2b_{sandbox_id}"));
        let slug = meta.get("slug").cloned().unwrap_or_default();
        (lease_id, slug)
    }

    /// The sandbox for `req`: a new one, or the warm one `req.id` names (lifetime refreshed).
    async fn acquire(
        &self,
        req: &RunRequest,
        placement: &Placement,
        ttl: Duration,
        reporter: &dyn Reporter,
    ) -> Result<Acquired> {
        let Some(id) = req.id.as_deref() else {
            let (claim, sandbox) = self
                .create_lease(
                    placement,
                    req.slug.as_deref(),
                    ttl,
                    req.keep == KeepPolicy::Always,
                    req.repo_root.as_deref(),
                    Some(&req.cancel),
                    reporter,
                )
                .await?;
            return Ok(Acquired {
                lease_id: claim.lease_id.clone(),
                slug: claim.slug.clone(),
                sandbox_id: sandbox.sandbox_id.clone(),
                envd: self.sandbox_envd(&sandbox, &placement.user),
                created: true,
                claim: Some(claim),
            });
        };
        // Nothing is made here, so a cancel has nothing to undo.
        let (claim, detail) = cancellable(&req.cancel, self.locate(id)).await?;
        let sandbox = cancellable(&req.cancel, self.control.connect(&detail.sandbox_id, ttl))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "sandbox {} is gone (expired or deleted)",
                    detail.sandbox_id
                ))
            })?;
        let (lease_id, slug) = match &claim {
            Some(c) => (c.lease_id.clone(), c.slug.clone()),
            None => Self::names_of(&detail.metadata, &detail.sandbox_id),
        };
        reporter.status(&format!(
            "reusing E2B sandbox {} (lease {lease_id}, {slug})",
            detail.sandbox_id
        ));
        Ok(Acquired {
            lease_id,
            slug,
            sandbox_id: detail.sandbox_id.clone(),
            envd: self.sandbox_envd(&sandbox, &placement.user),
            created: false,
            claim,
        })
    }

    /// Releases a sandbox this run created unless the keep policy says otherwise. Returns
    /// whether the sandbox is still there.
    async fn release(
        &self,
        box_: &Acquired,
        success: bool,
        req: &RunRequest,
        reporter: &dyn Reporter,
    ) -> bool {
        if !box_.created {
            return true;
        }
        if req.keep.keeps(success) {
            if !success && req.keep == KeepPolicy::OnFailure {
                reporter.status(&format!(
                    "kept sandbox {} (lease {}, {}) after the failure",
                    box_.sandbox_id, box_.lease_id, box_.slug
                ));
                reporter.status(&format!(
                    "rerun: crabbox run --provider e2b --id {}{} -- {}",
                    box_.lease_id,
                    if req.command.shell { " --shell" } else { "" },
                    rerun_words(req)
                ));
                reporter.status(&format!(
                    "stop:  crabbox stop --provider e2b {}",
                    box_.lease_id
                ));
            }
            return true;
        }
        match self.control.delete(&box_.sandbox_id).await {
            Ok(_) => {
                if let Err(e) = self.forget(&box_.lease_id) {
                    reporter.status(&format!(
                        "sandbox {} deleted, but its claim could not be removed: {e}",
                        box_.sandbox_id
                    ));
                }
                false
            }
            Err(e) => {
                reporter.status(&format!(
                    "could not delete sandbox {} (lease {}): {e}; stop it with `crabbox stop \
                     --provider e2b {}`",
                    box_.sandbox_id, box_.lease_id, box_.lease_id
                ));
                true
            }
        }
    }

    /// Syncs (or creates the workdir with `--no-sync`) and records what was synced.
    async fn sync_phase(
        &self,
        box_: &mut Acquired,
        req: &RunRequest,
        placement: &Placement,
        reporter: &dyn Reporter,
    ) -> Result<Option<crabbox_core::provider::SyncReport>> {
        let Some(source) = &req.sync else {
            cancellable(&req.cancel, box_.envd.make_dir(&placement.workdir)).await?;
            return Ok(None);
        };
        // What the box holds is only known for a lease this machine synced into the same
        // workdir; anything else gets everything (laid over, never deleting unknown files).
        let mut previous = match &box_.claim {
            Some(c) if !box_.created && c.workdir == placement.workdir => {
                Some(SyncState::load(&self.state_path(&box_.lease_id)))
            }
            _ => None,
        };
        // A workdir removed on the box behind our back invalidates the record.
        if previous.as_ref().is_some_and(|s| !s.entries.is_empty())
            && !cancellable(&req.cancel, box_.envd.exists(&placement.workdir)).await?
        {
            previous = None;
        }
        let plan = SyncPlan::new(source, previous.as_ref());
        let report = sync_tree(
            &box_.envd,
            source,
            &plan,
            &placement.workdir,
            reporter,
            self.sync_timeout,
            &req.cancel,
        )
        .await?;
        if let Some(claim) = &mut box_.claim {
            SyncState::from_manifest(&source.manifest).save(&self.state_path(&claim.lease_id))?;
            claim.workdir = placement.workdir.clone();
            claim.last_used_at = now_rfc3339();
            self.claims.write(claim)?;
        }
        Ok(Some(report))
    }

    /// Runs the command, streaming its output; on cancel stops it remotely, with everything
    /// it started (its environment carries a fresh [`RUN_ID_VAR`], see [`run_tree`]).
    async fn command_phase(
        &self,
        box_: &Acquired,
        req: &RunRequest,
        placement: &Placement,
        out: &mut dyn OutputSink,
    ) -> Result<Ran> {
        let run_id = run_tree::new_run_id();
        let mut envs = req.env.clone();
        envs.insert(RUN_ID_VAR.into(), run_id.clone());
        let start = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/bash".into(),
                args: vec!["-l".into(), "-c".into(), req.command.script()],
                envs,
                cwd: Some(placement.workdir.clone()),
            }),
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let mut stream = tokio::select! {
            biased;
            _ = req.cancel.cancelled() => {
                // The start may have reached envd: stop whatever it began.
                let _ = tokio::time::timeout(
                    CANCEL_BUDGET / 2,
                    run_tree::reap(&box_.envd, &run_id, self.cancel_grace),
                )
                .await;
                return Ok(Ran::Interrupted);
            }
            s = box_.envd.start(&start) => s?,
        };
        let mut pid = None;
        loop {
            let event = tokio::select! {
                biased;
                _ = req.cancel.cancelled() => {
                    let _ = tokio::time::timeout(
                        CANCEL_BUDGET / 2,
                        self.stop_remote(&box_.envd, &mut stream, pid, &run_id, out),
                    )
                    .await;
                    return Ok(Ran::Interrupted);
                }
                e = stream.next_event() => e?,
            };
            match event {
                Some(ProcessEvent::Start(s)) => pid = Some(s.pid),
                Some(ProcessEvent::Data(d)) => forward(out, d)?,
                Some(ProcessEvent::End(end)) => return Ok(Ran::Exited(exit_code_of(&end))),
                Some(ProcessEvent::Keepalive(_)) => {}
                None => {
                    return Err(Error::Transport(format!(
                        "sandbox {}: the command stream closed without the command's end \
                         event; its exit status is unknown",
                        box_.sandbox_id
                    )))
                }
            }
        }
    }

    /// SIGTERM, a grace period while output still flows, then SIGKILL: to the command's pid
    /// and, through the reaper, to every process of run `run_id` (envd signals only the pid,
    /// and the command's children would otherwise outlive it on a kept sandbox).
    async fn stop_remote(
        &self,
        envd: &Envd,
        stream: &mut ProcessStream,
        pid: Option<u32>,
        run_id: &str,
        out: &mut dyn OutputSink,
    ) {
        tokio::join!(
            self.stop_command(envd, stream, pid, out),
            run_tree::reap(envd, run_id, self.cancel_grace),
        );
    }

    /// SIGTERM, a grace period while output still flows, then SIGKILL, to the command's pid.
    async fn stop_command(
        &self,
        envd: &Envd,
        stream: &mut ProcessStream,
        mut pid: Option<u32>,
        out: &mut dyn OutputSink,
    ) {
        // Output that arrives while stopping is still the user's; an end means it is over.
        async fn drain(
            stream: &mut ProcessStream,
            pid: &mut Option<u32>,
            out: &mut dyn OutputSink,
            until: Instant,
        ) -> bool {
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.next_event()).await {
                    Err(_) => return false,
                    Ok(Err(_)) | Ok(Ok(None)) => return true,
                    Ok(Ok(Some(ProcessEvent::End(_)))) => return true,
                    Ok(Ok(Some(ProcessEvent::Start(s)))) => {
                        *pid = Some(s.pid);
                        return false;
                    }
                    Ok(Ok(Some(ProcessEvent::Data(d)))) => {
                        let _ = forward(out, d);
                    }
                    Ok(Ok(Some(ProcessEvent::Keepalive(_)))) => {}
                }
            }
        }
        if pid.is_none() && drain(stream, &mut pid, out, Instant::now() + self.cancel_grace).await {
            return;
        }
        let Some(pid) = pid else { return };
        let _ = envd.send_signal(pid, Signal::Sigterm).await;
        let mut p = Some(pid);
        if drain(stream, &mut p, out, Instant::now() + self.cancel_grace).await {
            return;
        }
        let _ = envd.send_signal(pid, Signal::Sigkill).await;
        let _ = drain(stream, &mut p, out, Instant::now() + KILL_WAIT).await;
    }

    /// The status of a located sandbox.
    fn box_status(&self, claim: Option<&Claim>, detail: &SandboxDetail, ready: bool) -> BoxStatus {
        let (lease_id, slug) = match claim {
            Some(c) => (c.lease_id.clone(), c.slug.clone()),
            None => Self::names_of(&detail.metadata, &detail.sandbox_id),
        };
        BoxStatus {
            lease_id,
            slug,
            provider: PROVIDER.to_string(),
            remote_id: detail.sandbox_id.clone(),
            state: detail.state.as_str().to_string(),
            ready,
            workdir: claim
                .map(|c| c.workdir.clone())
                .or_else(|| detail.metadata.get("workdir").cloned())
                .unwrap_or_default(),
            created_at: Some(detail.started_at.clone()),
            expires_at: Some(detail.end_at.clone()),
            claimed: claim.is_some(),
        }
    }

    /// A Crabbox sandbox named by lease id, slug, sandbox id or `e2b_<id>`, found through
    /// E2B rather than a local claim (`stop --reclaim`, or a claim whose creation broke).
    async fn find_remote(&self, id: &str) -> Result<Option<(String, BTreeMap<String, String>)>> {
        let raw = id.strip_prefix("e2b_").unwrap_or(id);
        let listed: Vec<_> = self
            .control
            .list(&metadata::crabbox_filter())
            .await?
            .into_iter()
            .filter(|s| metadata::is_crabbox(&s.metadata))
            .collect();
        // A sandbox id or a lease id names one sandbox; a slug is only unique per machine.
        if let Some(s) = listed.iter().find(|s| {
            s.sandbox_id == raw || s.metadata.get("lease").map(String::as_str) == Some(id)
        }) {
            return Ok(Some((s.sandbox_id.clone(), s.metadata.clone())));
        }
        if !lease::is_lease_id(id) {
            let by_slug: Vec<_> = listed
                .iter()
                .filter(|s| s.metadata.get("slug").map(String::as_str) == Some(id))
                .collect();
            if by_slug.len() > 1 {
                let names = by_slug
                    .iter()
                    .map(|s| {
                        format!(
                            "{} (lease {})",
                            s.sandbox_id,
                            s.metadata.get("lease").map_or("-", String::as_str)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::Usage(format!(
                    "slug {id:?} names {} Crabbox sandboxes on {} (slugs are only unique per \
                     machine): {names}; name the one to reclaim by its sandbox id or lease id",
                    by_slug.len(),
                    self.endpoint
                )));
            }
            if let Some(s) = by_slug.first() {
                return Ok(Some((s.sandbox_id.clone(), s.metadata.clone())));
            }
        }
        // Paused or otherwise unlisted: a direct lookup by sandbox id.
        if lease::is_lease_id(id) {
            return Ok(None);
        }
        match self.lookup_unclaimed(id).await {
            Ok(d) => Ok(Some((d.sandbox_id, d.metadata))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `fut`, or `Interrupted` as soon as `cancel` fires (`fut` is dropped).
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Interrupted),
        r = fut => r,
    }
}

fn forward(out: &mut dyn OutputSink, data: DataEvent) -> Result<()> {
    match data {
        DataEvent::Stdout(b) | DataEvent::Pty(b) => out.stdout(&b),
        DataEvent::Stderr(b) => out.stderr(&b),
    }
    .map_err(Error::io("writing the command's output to", "<output>"))
}

fn rerun_words(req: &RunRequest) -> String {
    if req.command.shell {
        req.command.argv.join(" ")
    } else {
        req.command
            .argv
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `error` with `hint` appended to its message, keeping its kind (and exit code).
fn with_hint(error: Error, hint: &str) -> Error {
    match error {
        Error::Usage(m) => Error::Usage(format!("{m}; {hint}")),
        Error::NotFound(m) => Error::NotFound(format!("{m}; {hint}")),
        Error::WaitTimeout(m) => Error::WaitTimeout(format!("{m}; {hint}")),
        Error::Sync(m) => Error::Sync(format!("{m}; {hint}")),
        Error::Transport(m) => Error::Transport(format!("{m}; {hint}")),
        Error::Interrupted => Error::Interrupted,
        other => Error::Transport(format!("{other}; {hint}")),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Provider for E2bProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            machine_class: false,
            remote_kill: true,
            warm_reuse: true,
        }
    }

    async fn warmup(&self, req: &WarmupRequest, reporter: &dyn Reporter) -> Result<BoxStatus> {
        let placement = self.placement()?;
        let ttl = clamp_ttl(req.ttl, self.max_ttl);
        let (claim, sandbox) = self
            .create_lease(
                placement,
                req.slug.as_deref(),
                ttl,
                true,
                req.repo_root.as_deref(),
                None,
                reporter,
            )
            .await?;
        reporter.status(&format!(
            "warm sandbox {} ready: lease {} ({})",
            sandbox.sandbox_id, claim.lease_id, claim.slug
        ));
        let now = time::OffsetDateTime::now_utc();
        let fmt = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        };
        Ok(BoxStatus {
            lease_id: claim.lease_id.clone(),
            slug: claim.slug.clone(),
            provider: PROVIDER.to_string(),
            remote_id: sandbox.sandbox_id.clone(),
            state: SandboxState::Running.as_str().to_string(),
            ready: true,
            workdir: claim.workdir.clone(),
            created_at: fmt(now),
            expires_at: fmt(now + ttl),
            claimed: true,
        })
    }

    async fn run(
        &self,
        req: &RunRequest,
        out: &mut dyn OutputSink,
        reporter: &dyn Reporter,
    ) -> Result<RunOutcome> {
        let placement = self.placement()?;
        let ttl = clamp_ttl(req.ttl, self.max_ttl);
        let mut timing = Timing::default();

        let t = Instant::now();
        let mut box_ = self.acquire(req, placement, ttl, reporter).await?;
        timing.acquire_ms = ms(t.elapsed());

        let t = Instant::now();
        // The sync watches the token itself, so that an interrupted sync still removes its
        // files from the box (within remote_sync::CLEANUP_BUDGET) before it returns.
        let synced = if req.cancel.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            self.sync_phase(&mut box_, req, placement, reporter).await
        };
        timing.sync_ms = ms(t.elapsed());
        let sync = match synced {
            Ok(report) => report,
            Err(e) => {
                let _ = tokio::time::timeout(
                    CANCEL_BUDGET.saturating_sub(crate::remote_sync::CLEANUP_BUDGET),
                    self.release(&box_, false, req, reporter),
                )
                .await;
                return Err(e);
            }
        };

        let t = Instant::now();
        let ran = self.command_phase(&box_, req, placement, out).await;
        timing.command_ms = ms(t.elapsed());

        let t = Instant::now();
        let result = match ran {
            Ok(Ran::Exited(code)) => {
                let kept = self.release(&box_, code == 0, req, reporter).await;
                Ok(RunOutcome {
                    lease_id: box_.lease_id.clone(),
                    slug: box_.slug.clone(),
                    exit_code: code,
                    kept,
                    created: box_.created,
                    timing: Timing::default(),
                    sync,
                })
            }
            Ok(Ran::Interrupted) => {
                let _ = tokio::time::timeout(
                    CANCEL_BUDGET / 2,
                    self.release(&box_, false, req, reporter),
                )
                .await;
                Err(Error::Interrupted)
            }
            Err(e) => {
                self.release(&box_, false, req, reporter).await;
                Err(e)
            }
        };
        timing.release_ms = ms(t.elapsed());
        result.map(|mut o| {
            o.timing = timing;
            o
        })
    }

    async fn status(&self, req: &StatusRequest) -> Result<BoxStatus> {
        let (claim, mut detail) = self.locate(&req.id).await?;
        let deadline = req.wait.map(|w| Instant::now() + w);
        let user = self
            .placement
            .as_ref()
            .map(|p| p.user.clone())
            .unwrap_or_else(|_| crate::placement::DEFAULT_USER.to_string());
        loop {
            let ready = detail.state == SandboxState::Running
                && self
                    .envd(
                        &detail.sandbox_id,
                        detail.domain.as_deref(),
                        detail.envd_access_token.as_deref(),
                        &user,
                    )
                    .healthy()
                    .await;
            let Some(deadline) = deadline else {
                return Ok(self.box_status(claim.as_ref(), &detail, ready));
            };
            if ready {
                return Ok(self.box_status(claim.as_ref(), &detail, ready));
            }
            if Instant::now() >= deadline {
                return Err(Error::WaitTimeout(format!(
                    "sandbox {} (lease {}) was not ready within {}s (state {})",
                    detail.sandbox_id,
                    claim
                        .as_ref()
                        .map(|c| c.lease_id.as_str())
                        .unwrap_or("unclaimed"),
                    req.wait.unwrap_or_default().as_secs(),
                    detail.state.as_str()
                )));
            }
            tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            detail = self.control.get(&detail.sandbox_id).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "sandbox {} went away while waiting for it",
                    detail.sandbox_id
                ))
            })?;
        }
    }

    async fn stop(&self, req: &StopRequest) -> Result<StopOutcome> {
        if let Some(claim) = self.resolve_claim(&req.id)? {
            if claim.remote_id.is_empty() {
                // Creation broke between reserving the lease and recording the sandbox: what
                // E2B made for it carries its lease tag.
                let deleted = self.delete_lease_sandboxes(&claim.lease_id, false).await?;
                self.forget(&claim.lease_id)?;
                return Ok(StopOutcome {
                    lease_id: claim.lease_id,
                    slug: claim.slug,
                    already_gone: deleted.is_empty(),
                });
            }
            let already_gone = match self.control.get(&claim.remote_id).await? {
                None => true,
                Some(detail) => {
                    if !metadata::belongs_to(&detail.metadata, &claim.lease_id) {
                        return Err(Error::NotFound(format!(
                            "sandbox {} does not carry lease {}'s Crabbox metadata (crabbox={}, \
                             provider={}, lease={}); refusing to delete it. If the claim is \
                             stale, remove {}",
                            claim.remote_id,
                            claim.lease_id,
                            detail.metadata.get("crabbox").map_or("-", String::as_str),
                            detail.metadata.get("provider").map_or("-", String::as_str),
                            detail.metadata.get("lease").map_or("-", String::as_str),
                            self.claims
                                .dir()
                                .join(format!("{}.json", claim.lease_id))
                                .display()
                        )));
                    }
                    // Delete first; the claim only goes once the sandbox is gone.
                    !self.control.delete(&claim.remote_id).await?
                }
            };
            self.forget(&claim.lease_id)?;
            return Ok(StopOutcome {
                lease_id: claim.lease_id,
                slug: claim.slug,
                already_gone,
            });
        }
        if !req.reclaim {
            return Err(Error::NotFound(format!(
                "no e2b lease {:?} on this machine ({}); if its sandbox still exists and the \
                 claim was lost, release it with `crabbox stop --provider e2b --reclaim {}`",
                req.id, self.endpoint, req.id
            )));
        }
        let (sandbox_id, meta) = self.find_remote(&req.id).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "no Crabbox sandbox {:?} on {} to reclaim",
                req.id, self.endpoint
            ))
        })?;
        let (lease_id, slug) = Self::names_of(&meta, &sandbox_id);
        let gone = !self.control.delete(&sandbox_id).await?;
        if lease::is_lease_id(&lease_id) {
            SyncState::remove(&self.state_path(&lease_id));
        }
        Ok(StopOutcome {
            lease_id,
            slug,
            already_gone: gone,
        })
    }

    async fn list(&self) -> Result<Vec<BoxStatus>> {
        let sandboxes = self.control.list(&metadata::crabbox_filter()).await?;
        let (claims, _) = self.claims.list()?;
        let mut out: Vec<BoxStatus> = sandboxes
            .into_iter()
            .filter(|s| metadata::is_crabbox(&s.metadata))
            .map(|s| {
                let claim = claims.iter().find(|c| {
                    c.provider == PROVIDER
                        && c.endpoint == self.endpoint
                        && c.remote_id == s.sandbox_id
                });
                let (lease_id, slug) = match claim {
                    Some(c) => (c.lease_id.clone(), c.slug.clone()),
                    None => Self::names_of(&s.metadata, &s.sandbox_id),
                };
                BoxStatus {
                    lease_id,
                    slug,
                    provider: PROVIDER.to_string(),
                    remote_id: s.sandbox_id.clone(),
                    state: s.state.as_str().to_string(),
                    ready: s.state == SandboxState::Running,
                    workdir: claim
                        .map(|c| c.workdir.clone())
                        .or_else(|| s.metadata.get("workdir").cloned())
                        .unwrap_or_default(),
                    created_at: Some(s.started_at.clone()),
                    expires_at: Some(s.end_at.clone()),
                    claimed: claim.is_some(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        Ok(out)
    }
}
