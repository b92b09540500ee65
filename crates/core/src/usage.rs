//! Usage: what crabbox saw of each lease's box over time, recorded locally, and the
//! box-seconds it adds up to (running vs paused), per lease and per repository.
//!
//! Each lease has an append-only file `<state dir>/usage/<lease>.jsonl`, one event per line
//! (`created`, `resumed`, `paused`, `stopped`), written when crabbox itself makes, wakes,
//! pauses or releases the box, or sees that the service paused it (an idle timeout): that
//! pause is dated at the box's end time, when the service paused it. The file outlives the
//! claim, so a stopped lease's total stays in the report. No secret is ever written here.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// What happened to a lease's box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageEventKind {
    Created,
    Resumed,
    Paused,
    Stopped,
}

/// One line of a lease's usage file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    /// RFC 3339.
    pub at: String,
    pub event: UsageEventKind,
    pub lease_id: String,
    pub slug: String,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<PathBuf>,
}

/// A lease's box-seconds.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseUsage {
    pub lease_id: String,
    pub slug: String,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<PathBuf>,
    pub running_secs: u64,
    pub paused_secs: u64,
    /// `running`, `paused` or `stopped`: the last thing crabbox recorded.
    pub state: String,
}

/// A repository's box-seconds, over all its leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoUsage {
    /// The repository root, or `-` for leases made outside one.
    pub repo: String,
    pub leases: u64,
    pub running_secs: u64,
    pub paused_secs: u64,
}

/// `crabbox usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub leases: Vec<LeaseUsage>,
    pub repos: Vec<RepoUsage>,
    pub running_secs: u64,
    pub paused_secs: u64,
}

/// The usage files.
#[derive(Debug, Clone)]
pub struct UsageLog {
    dir: PathBuf,
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl UsageLog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, lease_id: &str) -> PathBuf {
        self.dir.join(format!("{lease_id}.jsonl"))
    }

    /// Appends an event now (or at `at`).
    pub fn record(
        &self,
        kind: UsageEventKind,
        at: Option<OffsetDateTime>,
        lease_id: &str,
        slug: &str,
        provider: &str,
        repo: Option<&Path>,
    ) -> Result<()> {
        if !crate::lease::is_lease_id(lease_id) {
            // A box no lease of crabbox's names (`e2b_<id>`) has nothing to add up to.
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(Error::io("creating", &self.dir))?;
        let event = UsageEvent {
            at: format_time(at.unwrap_or_else(OffsetDateTime::now_utc)),
            event: kind,
            lease_id: lease_id.to_string(),
            slug: slug.to_string(),
            provider: provider.to_string(),
            repo: repo.map(Path::to_path_buf),
        };
        let mut line = serde_json::to_string(&event).expect("serializable");
        line.push('\n');
        let path = self.path_of(lease_id);
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&path)
            .map_err(Error::io("opening usage file", &path))?;
        // One write of one line: appends of other processes never interleave inside it.
        file.write_all(line.as_bytes())
            .map_err(Error::io("writing usage file", &path))
    }

    /// The last event recorded for a lease.
    pub fn last(&self, lease_id: &str) -> Option<UsageEvent> {
        self.events(lease_id).pop()
    }

    fn events(&self, lease_id: &str) -> Vec<UsageEvent> {
        let Ok(text) = fs::read_to_string(self.path_of(lease_id)) else {
            return Vec::new();
        };
        let mut events: Vec<UsageEvent> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        events.sort_by_key(|e| parse_time(&e.at));
        events
    }

    /// One lease's box-seconds up to `now`.
    pub fn lease(&self, lease_id: &str, now: OffsetDateTime) -> Option<LeaseUsage> {
        add_up(&self.events(lease_id), now)
    }

    /// Every recorded lease and repository, up to `now`.
    pub fn report(&self, now: OffsetDateTime) -> Result<UsageReport> {
        let mut leases = Vec::new();
        match fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(lease_id) = name.strip_suffix(".jsonl") {
                        leases.extend(self.lease(lease_id, now));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("reading", &self.dir)(e)),
        }
        leases.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        let mut repos: BTreeMap<String, RepoUsage> = BTreeMap::new();
        for l in &leases {
            let repo = l
                .repo
                .as_ref()
                .map_or_else(|| "-".to_string(), |r| r.display().to_string());
            let entry = repos.entry(repo.clone()).or_insert(RepoUsage {
                repo,
                leases: 0,
                running_secs: 0,
                paused_secs: 0,
            });
            entry.leases += 1;
            entry.running_secs += l.running_secs;
            entry.paused_secs += l.paused_secs;
        }
        Ok(UsageReport {
            running_secs: leases.iter().map(|l| l.running_secs).sum(),
            paused_secs: leases.iter().map(|l| l.paused_secs).sum(),
            leases,
            repos: repos.into_values().collect(),
        })
    }
}

/// Adds up a lease's events (sorted by time): each interval counts in the state the event
/// that opened it left the box in; the last one runs until `now` unless the box stopped.
fn add_up(events: &[UsageEvent], now: OffsetDateTime) -> Option<LeaseUsage> {
    let first = events.first()?;
    let mut usage = LeaseUsage {
        lease_id: first.lease_id.clone(),
        slug: first.slug.clone(),
        provider: first.provider.clone(),
        repo: first.repo.clone(),
        running_secs: 0,
        paused_secs: 0,
        state: "running".into(),
    };
    let mut open: Option<(OffsetDateTime, bool)> = None;
    let mut close = |open: &mut Option<(OffsetDateTime, bool)>, at: OffsetDateTime| {
        if let Some((since, running)) = open.take() {
            let secs = u64::try_from((at - since).whole_seconds()).unwrap_or(0);
            if running {
                usage.running_secs += secs;
            } else {
                usage.paused_secs += secs;
            }
        }
    };
    let mut state = "running";
    for e in events {
        let Some(at) = parse_time(&e.at) else {
            continue;
        };
        close(&mut open, at);
        match e.event {
            UsageEventKind::Created | UsageEventKind::Resumed => {
                open = Some((at, true));
                state = "running";
            }
            UsageEventKind::Paused => {
                open = Some((at, false));
                state = "paused";
            }
            UsageEventKind::Stopped => state = "stopped",
        }
    }
    close(&mut open, now);
    usage.state = state.into();
    Some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_and_paused_seconds_add_up_per_lease_and_repo() {
        let dir = tempfile::tempdir().unwrap();
        let log = UsageLog::new(dir.path());
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |s: i64| Some(t0 + time::Duration::seconds(s));
        let repo = Path::new("/src/app");
        let a = "cbx_00000000000a";
        let b = "cbx_00000000000b";
        log.record(UsageEventKind::Created, at(0), a, "x", "e2b", Some(repo))
            .unwrap();
        log.record(UsageEventKind::Paused, at(100), a, "x", "e2b", Some(repo))
            .unwrap();
        log.record(UsageEventKind::Resumed, at(400), a, "x", "e2b", Some(repo))
            .unwrap();
        log.record(UsageEventKind::Stopped, at(450), a, "x", "e2b", Some(repo))
            .unwrap();
        log.record(UsageEventKind::Created, at(0), b, "y", "e2b", Some(repo))
            .unwrap();
        log.record(UsageEventKind::Created, at(0), "e2b_isbx", "", "e2b", None)
            .unwrap();
        let report = log.report(t0 + time::Duration::seconds(1000)).unwrap();
        let la = &report.leases[0];
        assert_eq!((la.running_secs, la.paused_secs), (150, 300));
        assert_eq!(la.state, "stopped");
        let lb = &report.leases[1];
        assert_eq!(
            (lb.running_secs, lb.paused_secs, lb.state.as_str()),
            (1000, 0, "running")
        );
        assert_eq!(report.leases.len(), 2, "an unleased box is not recorded");
        assert_eq!(report.repos.len(), 1);
        assert_eq!(report.repos[0].leases, 2);
        assert_eq!(report.repos[0].running_secs, 1150);
        assert_eq!((report.running_secs, report.paused_secs), (1150, 300));
    }
}
