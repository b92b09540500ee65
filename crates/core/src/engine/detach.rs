//! Detached runs (`run --detach`): the command runs in its own session on the box with its
//! output in a log file there, so nothing is lost while nobody watches; `logs`, `wait`, `kill`
//! and `runs` find it again through a record kept under the state directory.
//!
//! On the box, beside the workdir, `.<name>.crabbox-runs/<run id>/` holds `output` (stdout
//! and stderr, interleaved as written), `pid` (the session leader, also its process group),
//! `exit` (once it ended), `started` and `command`. All of it is driven with the provider's
//! ordinary command primitive, so every provider that runs commands has detached runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::boxcmd::{capture, fields};
use super::run::Acquired;
use super::Engine;
use crate::claims::now_rfc3339;
use crate::engine::RunRequest;
use crate::error::{Error, Result};
use crate::events::{OutputSink, Reporter};
use crate::provider::{BoxSession, ExecEvent, ExecSpec, RunTarget, RUN_ID_VAR};

/// A detached run, as this machine remembers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DetachedRun {
    pub run_id: String,
    pub provider: String,
    pub lease_id: String,
    pub slug: String,
    pub remote_id: String,
    pub workdir: String,
    /// The run's directory on the box.
    pub dir: String,
    pub command: String,
    pub started_at: String,
}

/// A run as the box reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub run_id: String,
    pub lease_id: String,
    /// `running`, `exited`, or `lost` (it ended without recording a status: killed with
    /// its wrapper, or the box restarted).
    pub state: String,
    pub exit_code: Option<i32>,
    pub started_at: String,
    pub command: String,
}

/// Where a workdir's detached runs live on the box.
pub fn runs_dir(workdir: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-runs")
}

const START: &str = r#"d=$CBX_RUNS/$CBX_RUN
mkdir -p -- "$d" || exit 1
printf '%s' "$CBX_TEXT" > "$d/command"
date -u +%Y-%m-%dT%H:%M:%SZ > "$d/started"
s=$CBX_SCRIPT
unset CBX_SCRIPT CBX_RUNS CBX_RUN CBX_TEXT
setsid bash -c 'bash -c "$1"; c=$?; printf "%s\n" "$c" > "$2/exit.tmp" && mv -f -- "$2/exit.tmp" "$2/exit"' crabbox-run "$s" "$d" > "$d/output" 2>&1 < /dev/null &
printf '%s\n' "$!" > "$d/pid"
"#;

const WAIT: &str = r#"d=$CBX_DIR
[ -f "$d/pid" ] || { echo "no run here" >&2; exit 3; }
pg=$(cat -- "$d/pid")
tail -s 0.2 --pid="$pg" -f /dev/null 2>/dev/null
if [ -f "$d/exit" ]; then cat -- "$d/exit"; else echo lost; fi
"#;

const LOGS: &str = r#"d=$CBX_DIR
[ -f "$d/output" ] || { echo "no run here" >&2; exit 3; }
if [ -n "$CBX_FOLLOW" ]; then
  exec tail -s 0.2 -c +1 --pid="$(cat -- "$d/pid")" -f -- "$d/output"
fi
exec cat -- "$d/output"
"#;

const KILL: &str = r#"d=$CBX_DIR
[ -f "$d/pid" ] || { echo "no run here" >&2; exit 3; }
pg=$(cat -- "$d/pid")
[ -f "$d/exit" ] && exit 0
kill -TERM -- "-$pg" 2>/dev/null
i=0
while [ "$i" -lt "$CBX_TICKS" ] && kill -0 -- "-$pg" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
kill -KILL -- "-$pg" 2>/dev/null
[ -f "$d/exit" ] || { printf '143\n' > "$d/exit.tmp" && mv -f -- "$d/exit.tmp" "$d/exit"; }
exit 0
"#;

const LIST: &str = r#"for d in "$CBX_RUNS"/* "$CBX_WS"/.*.crabbox-runs/*; do
  [ -f "$d/pid" ] || continue
  pid=$(cat -- "$d/pid"); code=; state=lost
  if [ -f "$d/exit" ]; then state=exited; code=$(cat -- "$d/exit")
  elif kill -0 "$pid" 2>/dev/null; then state=running; fi
  printf '%s\0%s\0%s\0%s\0%s\0' "${d##*/}" "$state" "$code" "$(cat -- "$d/started" 2>/dev/null)" \
    "$(head -c 300 -- "$d/command" 2>/dev/null)"
done
"#;

impl Engine {
    fn runs_store(&self) -> PathBuf {
        self.state_dir.join("runs")
    }

    /// Starts `req`'s command detached on the acquired box and records it.
    pub(super) async fn start_detached(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
        script: String,
        text: String,
    ) -> Result<DetachedRun> {
        let run_id = super::exec::new_run_id();
        let dir = runs_dir(&acquired.workdir);
        let mut env = req.env.clone();
        env.insert(RUN_ID_VAR.to_string(), run_id.clone());
        env.insert("CBX_RUNS".into(), dir.clone());
        env.insert("CBX_RUN".into(), run_id.clone());
        env.insert("CBX_SCRIPT".into(), script);
        env.insert("CBX_TEXT".into(), text.clone());
        let spec = ExecSpec {
            script: START.to_string(),
            env,
            cwd: acquired.workdir.clone(),
            run_id: run_id.clone(),
        };
        let session = acquired.session.as_ref();
        let mut stream = session.start(&spec).await?;
        let mut err = Vec::new();
        let code = loop {
            match stream.next_event().await? {
                Some(ExecEvent::Exited(c)) => break c,
                Some(ExecEvent::Stderr(b)) => err.extend_from_slice(&b),
                Some(_) => {}
                None => {
                    return Err(Error::Transport(
                        "starting the detached run: the box did not say whether it started".into(),
                    ))
                }
            }
        };
        if code != 0 {
            return Err(Error::Transport(format!(
                "starting the detached run on {} box {} failed (exit {code}): {}",
                self.name(),
                acquired.target.remote_id,
                String::from_utf8_lossy(&err).trim()
            )));
        }
        let run = DetachedRun {
            run_id: run_id.clone(),
            provider: self.name().to_string(),
            lease_id: acquired.target.lease_id.clone(),
            slug: acquired.target.slug.clone(),
            remote_id: acquired.target.remote_id.clone(),
            workdir: acquired.workdir.clone(),
            dir: format!("{dir}/{run_id}"),
            command: text,
            started_at: now_rfc3339(),
        };
        let store = self.runs_store();
        std::fs::create_dir_all(&store).map_err(Error::io("creating", &store))?;
        let path = store.join(format!("{run_id}.json"));
        let body = serde_json::to_vec_pretty(&run).expect("serializable");
        crate::paths::write_atomic(&path, &body)?;
        Ok(run)
    }

    /// The detached run `id` names (its id or a unique prefix of at least 6 characters).
    pub fn detached_run(&self, id: &str) -> Result<DetachedRun> {
        let unknown = || {
            Error::NotFound(format!(
                "no detached run {id:?} started from this machine (see `crabbox runs`)"
            ))
        };
        if id.len() < 6 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let mut found = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.runs_store()) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(id) && name.ends_with(".json") {
                    found.push(e.path());
                }
            }
        }
        match found.as_slice() {
            [] => Err(unknown()),
            [one] => {
                let body = std::fs::read(one).map_err(Error::io("reading", one))?;
                let run: DetachedRun = serde_json::from_slice(&body).map_err(|e| {
                    Error::Usage(format!(
                        "{} is not a detached run record: {e}",
                        one.display()
                    ))
                })?;
                if run.provider != self.name() {
                    return Err(Error::Usage(format!(
                        "run {} is on the {} provider: add --provider {}",
                        run.run_id, run.provider, run.provider
                    )));
                }
                Ok(run)
            }
            _ => Err(Error::Usage(format!(
                "{id:?} names {} detached runs: give more of the run id",
                found.len()
            ))),
        }
    }

    /// Every detached run this machine started on this provider.
    pub fn detached_runs(&self) -> Vec<DetachedRun> {
        let mut runs = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.runs_store()) {
            for e in dir.flatten() {
                let Ok(body) = std::fs::read(e.path()) else {
                    continue;
                };
                if let Ok(run) = serde_json::from_slice::<DetachedRun>(&body) {
                    if run.provider == self.name() {
                        runs.push(run);
                    }
                }
            }
        }
        runs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        runs
    }

    async fn run_session(&self, run: &DetachedRun) -> Result<Box<dyn BoxSession>> {
        let located = self
            .locate(&run.lease_id)
            .await
            .map_err(|e| match e.root() {
                Error::NotFound(m) => Error::NotFound(format!(
                    "run {} was on lease {} ({}), which is gone: {m}",
                    run.run_id, run.lease_id, run.slug
                )),
                _ => e,
            })?;
        self.provider
            .open(&located.target, self.provider.ttl(self.ttl))
            .await
    }

    /// Streams the run's output so far into `out`; with `follow`, until the run ends.
    pub async fn run_logs(
        &self,
        id: &str,
        follow: bool,
        out: &mut dyn OutputSink,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let run = self.detached_run(id)?;
        let session = self.run_session(&run).await?;
        let env = BTreeMap::from([
            ("CBX_DIR".to_string(), run.dir.clone()),
            (
                "CBX_FOLLOW".to_string(),
                if follow { "1" } else { "" }.to_string(),
            ),
        ]);
        let spec = ExecSpec {
            script: LOGS.to_string(),
            env,
            cwd: "/".into(),
            run_id: super::exec::new_run_id(),
        };
        let mut stream = session.start(&spec).await?;
        let mut err = Vec::new();
        loop {
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                e = stream.next_event() => e?,
            };
            match event {
                Some(ExecEvent::Stdout(b)) => out
                    .stdout(&b)
                    .map_err(Error::io("writing the run's output to", "<output>"))?,
                Some(ExecEvent::Stderr(b)) => err.extend_from_slice(&b),
                Some(ExecEvent::Exited(0)) | None => return Ok(()),
                Some(ExecEvent::Exited(3)) => return Err(self.run_gone(&run)),
                Some(ExecEvent::Exited(c)) => {
                    return Err(Error::Transport(format!(
                        "reading run {}'s log failed (exit {c}): {}",
                        run.run_id,
                        String::from_utf8_lossy(&err).trim()
                    )))
                }
                Some(ExecEvent::Started { .. }) => {}
            }
        }
    }

    fn run_gone(&self, run: &DetachedRun) -> Error {
        Error::NotFound(format!(
            "run {} is no longer on {} box {} (lease {}): its directory {} is gone",
            run.run_id,
            self.name(),
            run.remote_id,
            run.lease_id,
            run.dir
        ))
    }

    /// Waits for the run to end; its exit code (`None`: it ended without recording one).
    pub async fn run_wait(&self, id: &str, cancel: &CancellationToken) -> Result<Option<i32>> {
        let run = self.detached_run(id)?;
        let session = self.run_session(&run).await?;
        let env = BTreeMap::from([("CBX_DIR".to_string(), run.dir.clone())]);
        let out = capture(session.as_ref(), "/", WAIT, env, 4096, cancel).await?;
        if out.code == 3 {
            return Err(self.run_gone(&run));
        }
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(said.parse().ok())
    }

    /// Stops the run's whole process tree (SIGTERM, the grace period, SIGKILL).
    pub async fn run_kill(&self, id: &str, reporter: &dyn Reporter) -> Result<()> {
        let run = self.detached_run(id)?;
        let session = self.run_session(&run).await?;
        let ticks = (self.cancel_grace.as_millis() / 100).max(1);
        let env = BTreeMap::from([
            ("CBX_DIR".to_string(), run.dir.clone()),
            ("CBX_TICKS".to_string(), ticks.to_string()),
        ]);
        let cancel = CancellationToken::new();
        let target = RunTarget {
            run_id: run.run_id.clone(),
            pid: None,
        };
        let (out, _) = tokio::join!(
            capture(session.as_ref(), "/", KILL, env, 4096, &cancel),
            // Processes that left the run's session still carry its id.
            session.stop_run(&target, self.cancel_grace)
        );
        let out = out?;
        if out.code == 3 {
            return Err(self.run_gone(&run));
        }
        reporter.status(&format!("run {} stopped", run.run_id));
        Ok(())
    }

    /// The detached runs on `lease`'s box, or on every lease this machine started one on.
    pub async fn runs(&self, lease: Option<&str>) -> Result<Vec<RunState>> {
        let every = lease.is_none();
        let mut leases: Vec<String> = match lease {
            Some(id) => vec![self.locate(id).await?.target.lease_id],
            None => self
                .detached_runs()
                .into_iter()
                .map(|r| r.lease_id)
                .collect(),
        };
        leases.sort();
        leases.dedup();
        let mut states = Vec::new();
        let cancel = CancellationToken::new();
        for lease in leases {
            // Listing every run skips leases that are gone (their runs went with them).
            let session = match self.locate(&lease).await {
                Ok(l) => {
                    self.provider
                        .open(&l.target, self.provider.ttl(self.ttl))
                        .await
                }
                Err(e) => Err(e),
            };
            let session = match session {
                Ok(s) => s,
                Err(e) if every && matches!(e.root(), Error::NotFound(_)) => {
                    // Its box is gone, and its runs with it: forget them.
                    for r in self.detached_runs().iter().filter(|r| r.lease_id == lease) {
                        let _ = std::fs::remove_file(
                            self.runs_store().join(format!("{}.json", r.run_id)),
                        );
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let workdir = self.provider.workdir(&lease)?;
            // Main's runs, and each named workspace's.
            let env = BTreeMap::from([
                ("CBX_RUNS".to_string(), runs_dir(&workdir)),
                (
                    "CBX_WS".to_string(),
                    crate::workspace::workspaces_dir(&workdir),
                ),
            ]);
            let out = capture(session.as_ref(), "/", LIST, env, 16 << 20, &cancel).await?;
            let f: Vec<String> = fields(&out.stdout)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            for r in f.chunks_exact(5) {
                states.push(RunState {
                    run_id: r[0].clone(),
                    lease_id: lease.clone(),
                    state: r[1].clone(),
                    exit_code: r[2].trim().parse().ok(),
                    started_at: r[3].clone(),
                    command: r[4].clone(),
                });
            }
        }
        states.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(states)
    }
}
