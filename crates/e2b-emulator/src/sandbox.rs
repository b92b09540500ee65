//! Sandboxes and their lifecycle: create, time out, pause, resume, kill.

use crate::error::HttpError;
use crate::isolation::{HostTools, SandboxLayout, SandboxNamespace};
use crate::process::ProcessTable;
use crate::sandbox_fs::SandboxFs;
use crabbox_e2b_wire::control::{
    Lifecycle, ListedSandbox, NewSandbox, OnTimeout, Sandbox as SandboxBody, SandboxDetail,
    SandboxState, EMULATED_ENVD_VERSION,
};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// The `clientID` every emulated sandbox reports.
pub const CLIENT_ID: &str = "e2b-emulator";
/// Timeout of a sandbox resumed by a connect without one.
pub const DEFAULT_RESUME_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Life {
    state: SandboxState,
    end_at: OffsetDateTime,
}

/// One sandbox.
pub struct Sandbox {
    pub id: String,
    pub template_id: String,
    pub access_token: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub started_at: OffsetDateTime,
    pub auto_pause: bool,
    pub auto_resume: bool,
    /// The timeout it was created with: what an automatic resume gives it again.
    pub timeout: Duration,
    /// Set when it takes no public traffic: requests to its ports must carry it.
    pub traffic_access_token: Option<String>,
    /// The egress rules it was created with or last given (`PUT /sandboxes/{id}/network`).
    /// Recorded and reported; see [`crate::network`] for what is enforced.
    pub egress: Mutex<crate::network::Egress>,
    pub layout: SandboxLayout,
    pub fs: SandboxFs,
    pub processes: Arc<ProcessTable>,
    pub namespace: Mutex<Option<SandboxNamespace>>,
    /// Set once the sandbox is being killed: its command streams are dropped rather than
    /// ended, as E2B's proxy drops them when the sandbox goes.
    pub killed: Arc<AtomicBool>,
    life: Mutex<Life>,
}

fn rfc3339(when: OffsetDateTime) -> String {
    when.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Sandbox {
    pub fn state(&self) -> SandboxState {
        self.life.lock().expect("life lock").state
    }

    pub fn end_at(&self) -> OffsetDateTime {
        self.life.lock().expect("life lock").end_at
    }

    pub fn egress(&self) -> crate::network::Egress {
        self.egress.lock().expect("egress lock").clone()
    }

    pub fn is_running(&self) -> bool {
        self.state() == SandboxState::Running
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            auto_resume: self.auto_resume,
            on_timeout: if self.auto_pause {
                OnTimeout::Pause
            } else {
                OnTimeout::Kill
            },
        }
    }

    pub fn body(&self) -> SandboxBody {
        SandboxBody {
            template_id: self.template_id.clone(),
            sandbox_id: self.id.clone(),
            client_id: CLIENT_ID.into(),
            envd_version: EMULATED_ENVD_VERSION.into(),
            alias: Some(self.template_id.clone()),
            envd_access_token: Some(self.access_token.clone()),
            traffic_access_token: self.traffic_access_token.clone(),
            domain: None,
        }
    }

    pub fn detail(&self) -> SandboxDetail {
        let life = *self.life.lock().expect("life lock");
        SandboxDetail {
            template_id: self.template_id.clone(),
            alias: Some(self.template_id.clone()),
            sandbox_id: self.id.clone(),
            client_id: CLIENT_ID.into(),
            started_at: rfc3339(self.started_at),
            end_at: rfc3339(life.end_at),
            envd_version: EMULATED_ENVD_VERSION.into(),
            envd_access_token: Some(self.access_token.clone()),
            domain: None,
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 10240,
            state: life.state,
            metadata: self.metadata.clone(),
            lifecycle: Some(self.lifecycle()),
            allow_internet_access: self.egress().allow_internet_access,
            network: self.egress().network(),
        }
    }

    pub fn listed(&self) -> ListedSandbox {
        let life = *self.life.lock().expect("life lock");
        ListedSandbox {
            template_id: self.template_id.clone(),
            alias: Some(self.template_id.clone()),
            sandbox_id: self.id.clone(),
            client_id: CLIENT_ID.into(),
            started_at: rfc3339(self.started_at),
            end_at: rfc3339(life.end_at),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 10240,
            state: life.state,
            envd_version: EMULATED_ENVD_VERSION.into(),
            metadata: self.metadata.clone(),
        }
    }

    /// Stable sort and pagination key: start time, then id.
    pub fn list_key(&self) -> String {
        format!("{:024}-{}", self.started_at.unix_timestamp_nanos(), self.id)
    }

    pub(crate) fn signal_namespace(&self, signal: i32) {
        if let Some(ns) = self.namespace.lock().expect("namespace lock").as_ref() {
            ns.signal_all(signal);
        }
    }
}

/// Every sandbox of one emulator.
pub struct Registry {
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    sandboxes_dir: PathBuf,
    pub(crate) snapshots: crate::snapshots::SnapshotStore,
    pub tools: HostTools,
    pub max_timeout: Duration,
}

pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("i{tail}")
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

impl Registry {
    pub fn new(sandboxes_dir: PathBuf, tools: HostTools, max_timeout: Duration) -> Self {
        Self {
            sandboxes: Mutex::new(HashMap::new()),
            snapshots: crate::snapshots::SnapshotStore::new(
                sandboxes_dir
                    .parent()
                    .unwrap_or(&sandboxes_dir)
                    .join("snapshots"),
            ),
            sandboxes_dir,
            tools,
            max_timeout,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes
            .lock()
            .expect("registry lock")
            .get(id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        let mut all: Vec<_> = self
            .sandboxes
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.list_key());
        all
    }

    pub(crate) fn check_timeout(&self, secs: u64) -> Result<Duration, HttpError> {
        if secs > self.max_timeout.as_secs() {
            return Err(HttpError::bad_request(format!(
                "Timeout cannot be greater than {} seconds (the emulator's --max-timeout)",
                self.max_timeout.as_secs()
            )));
        }
        Ok(Duration::from_secs(secs))
    }

    /// Creates and starts a sandbox; a `templateID` naming a snapshot (by id or name)
    /// starts it with the snapshot's files.
    pub async fn create(&self, request: NewSandbox) -> Result<Arc<Sandbox>, HttpError> {
        let seed = self.snapshots.files_of(&request.template_id);
        let mut request = request;
        if let Some((snapshot_id, _)) = &seed {
            request.template_id = snapshot_id.clone();
        }
        self.create_seeded(request, seed.map(|(_, dir)| dir)).await
    }

    /// Creates and starts a sandbox whose `/home`, `/root` and `/tmp` start as copies of
    /// those under `seed` (a snapshot's or a fork's files).
    pub(crate) async fn create_seeded(
        &self,
        request: NewSandbox,
        seed: Option<PathBuf>,
    ) -> Result<Arc<Sandbox>, HttpError> {
        let timeout = self.check_timeout(
            request
                .timeout
                .unwrap_or(crate::config::DEFAULT_SANDBOX_TIMEOUT_SECS),
        )?;
        let network = crate::network::create_rules(&request)?;
        let id = random_id();
        let layout = SandboxLayout::new(self.sandboxes_dir.join(&id));
        let started = async {
            layout.create()?;
            if let Some(seed) = &seed {
                crate::snapshots::restore_files(seed, &layout)
                    .await
                    .map_err(|e| crate::isolation::IsolationError::Start(e.to_string()))?;
            }
            SandboxNamespace::start(&self.tools, &layout, "e2b").await
        }
        .await;
        let namespace = match started {
            Ok(ns) => ns,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&layout.root);
                return Err(HttpError::internal(format!(
                    "could not create sandbox {id}: {e}"
                )));
            }
        };
        let now = OffsetDateTime::now_utc();
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            template_id: request.template_id,
            access_token: random_token(),
            metadata: request.metadata.unwrap_or_default(),
            env_vars: request.env_vars.unwrap_or_default(),
            started_at: now,
            auto_pause: request.auto_pause.unwrap_or(false),
            auto_resume: request.auto_resume.is_some_and(|a| a.enabled),
            timeout,
            traffic_access_token: (network.allow_public_traffic == Some(false)).then(random_token),
            egress: Mutex::new(network),
            fs: SandboxFs::new(layout.clone()),
            layout,
            processes: Arc::new(ProcessTable::default()),
            namespace: Mutex::new(Some(namespace)),
            killed: Arc::new(AtomicBool::new(false)),
            life: Mutex::new(Life {
                state: SandboxState::Running,
                end_at: now + timeout,
            }),
        });
        self.sandboxes
            .lock()
            .expect("registry lock")
            .insert(id, sandbox.clone());
        Ok(sandbox)
    }

    /// Kills a sandbox: every process dies and its files are deleted.
    pub async fn kill(&self, id: &str) -> bool {
        let Some(sandbox) = self.sandboxes.lock().expect("registry lock").remove(id) else {
            return false;
        };
        destroy(sandbox).await;
        true
    }

    /// Sets the end time to now + `secs`.
    pub fn set_timeout(&self, id: &str, secs: u64) -> Result<(), HttpError> {
        let timeout = self.check_timeout(secs)?;
        let sandbox = self
            .get(id)
            .ok_or_else(|| HttpError::not_found(format!("sandbox {id} not found")))?;
        sandbox.life.lock().expect("life lock").end_at = OffsetDateTime::now_utc() + timeout;
        Ok(())
    }

    /// Pauses a running sandbox: its processes are frozen, envd answers 502.
    pub fn pause(&self, id: &str) -> Result<(), HttpError> {
        let sandbox = self
            .get(id)
            .ok_or_else(|| HttpError::not_found(format!("sandbox {id} not found")))?;
        {
            let mut life = sandbox.life.lock().expect("life lock");
            if life.state == SandboxState::Paused {
                return Err(HttpError::conflict(format!(
                    "sandbox {id} is already paused"
                )));
            }
            life.state = SandboxState::Paused;
        }
        sandbox.signal_namespace(libc::SIGSTOP);
        Ok(())
    }

    /// Connects to a sandbox, resuming it if paused. Returns whether it was resumed.
    /// A running sandbox's end time is only ever extended.
    pub fn connect(
        &self,
        id: &str,
        timeout: Option<u64>,
    ) -> Result<(Arc<Sandbox>, bool), HttpError> {
        let timeout = timeout.map(|secs| self.check_timeout(secs)).transpose()?;
        let sandbox = self
            .get(id)
            .ok_or_else(|| HttpError::not_found(format!("sandbox {id} not found")))?;
        let now = OffsetDateTime::now_utc();
        let resumed = {
            let mut life = sandbox.life.lock().expect("life lock");
            match life.state {
                SandboxState::Running => {
                    if let Some(timeout) = timeout {
                        life.end_at = life.end_at.max(now + timeout);
                    }
                    false
                }
                SandboxState::Paused => {
                    life.state = SandboxState::Running;
                    life.end_at = now + timeout.unwrap_or(DEFAULT_RESUME_TIMEOUT);
                    true
                }
            }
        };
        if resumed {
            sandbox.signal_namespace(libc::SIGCONT);
        }
        Ok((sandbox, resumed))
    }

    /// The sandbox `id` for traffic: a paused one created with `autoResume` is resumed
    /// (with the timeout it was created with), as E2B's proxy does; `None` when it is gone
    /// or paused without auto-resume.
    pub fn for_traffic(&self, id: &str) -> Option<Arc<Sandbox>> {
        let sandbox = self.get(id)?;
        if sandbox.is_running() {
            return Some(sandbox);
        }
        if !sandbox.auto_resume {
            return None;
        }
        self.connect(id, Some(sandbox.timeout.as_secs()))
            .ok()
            .map(|(s, _)| s)
    }

    /// Applies timeouts: kills expired sandboxes, or pauses those created with
    /// `autoPause`.
    pub async fn reap_expired(&self) {
        let now = OffsetDateTime::now_utc();
        let expired: Vec<Arc<Sandbox>> = self
            .all()
            .into_iter()
            .filter(|s| s.is_running() && s.end_at() <= now)
            .collect();
        for sandbox in expired {
            if sandbox.auto_pause {
                let _ = self.pause(&sandbox.id);
            } else {
                self.kill(&sandbox.id).await;
            }
        }
    }

    /// Kills every sandbox (on shutdown).
    pub async fn kill_all(&self) {
        let all: Vec<Arc<Sandbox>> = self
            .sandboxes
            .lock()
            .expect("registry lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        futures::future::join_all(all.into_iter().map(destroy)).await;
    }
}

async fn destroy(sandbox: Arc<Sandbox>) {
    sandbox.killed.store(true, Ordering::SeqCst);
    sandbox.processes.kill_all();
    let namespace = sandbox.namespace.lock().expect("namespace lock").take();
    if let Some(mut namespace) = namespace {
        // A frozen process cannot die until it is thawed.
        namespace.signal_all(libc::SIGCONT);
        namespace.kill().await;
    }
    let root = sandbox.layout.root.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
}
