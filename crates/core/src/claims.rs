//! Claims: this machine's record of the leases it holds, one JSON file per lease.
//!
//! Invariants: a claim file is only ever replaced whole (temp file, fsync, rename, directory
//! fsync) so a reader never sees half a claim; writers of one lease are serialized by a
//! per-lease lock file; slug choice and claim creation happen under one store-wide lock so
//! concurrent warmups never hand out the same slug; a corrupt file is reported and skipped,
//! never deleted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease;

/// Whether nobody holds the lock file at `path` (it can be taken exclusively at once).
pub fn lock_is_free(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return false;
    };
    matches!(FileExt::try_lock_exclusive(&file), Ok(true))
}

/// The label of a claim whose lease a running process owns: it is still being created, or
/// it is a one-shot run's that the process will release. Its value is [`this_process`].
pub const OWNER_LABEL: &str = "owner";

/// This process as a claim's owner: `<pid>:<start time>`, the start time (in clock ticks
/// since boot, from `/proc`) telling a reused pid apart.
pub fn this_process() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", start_time(pid).unwrap_or_default())
}

/// Whether the process an owner label names still runs. Where that cannot be told (no
/// `/proc`, a malformed label) it is taken as running: nothing is released on a guess.
pub fn owner_alive(owner: &str) -> bool {
    let Some((pid, started)) = owner.split_once(':') else {
        return true;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    if !Path::new("/proc/self/stat").exists() {
        return true;
    }
    match start_time(pid) {
        Some(now) => started.is_empty() || now.to_string() == started,
        None => false,
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// One lease held by this machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub lease_id: String,
    pub slug: String,
    pub provider: String,
    /// The provider's id for the box (E2B sandbox id, local directory name).
    pub remote_id: String,
    /// Which service the box lives on (the E2B API URL, `local`): a claim made against one
    /// endpoint is never used against another.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_root: Option<PathBuf>,
    #[serde(default)]
    pub workdir: String,
    /// RFC 3339.
    pub claimed_at: String,
    pub last_used_at: String,
    #[serde(default)]
    pub keep: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A claim file that could not be read.
#[derive(Debug, Clone)]
pub struct CorruptClaim {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for CorruptClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipping unreadable claim {}: {} (inspect or remove it by hand)",
            self.path.display(),
            self.reason
        )
    }
}

/// The claims directory.
#[derive(Debug, Clone)]
pub struct ClaimStore {
    dir: PathBuf,
}

/// Held while a lease's claim is being changed.
pub struct LeaseLock {
    _file: File,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ClaimStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<state dir>/claims`.
    pub fn open_default() -> Result<Self> {
        Ok(Self::new(crate::paths::state_dir()?.join("claims")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(Error::io("creating claims directory", &self.dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    fn path_of(&self, lease_id: &str) -> PathBuf {
        self.dir.join(format!("{lease_id}.json"))
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        self.ensure_dir()?;
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening lock file", &path))?;
        file.lock_exclusive().map_err(Error::io("locking", &path))?;
        Ok(file)
    }

    /// Serializes changes to one lease's claim across processes.
    pub fn lock_lease(&self, lease_id: &str) -> Result<LeaseLock> {
        Ok(LeaseLock {
            _file: self.lock_file(&format!("{lease_id}.lock"))?,
        })
    }

    /// Allocates a new lease id and a slug unique among local claims, and writes a claim for it
    /// built by `make` — all under the store-wide lock, so concurrent callers never collide.
    /// `wanted_slug` (from `--slug`) must not be taken.
    pub fn create(
        &self,
        wanted_slug: Option<&str>,
        make: impl FnOnce(&str, &str) -> Claim,
    ) -> Result<Claim> {
        let _guard = self.lock_file(".store.lock")?;
        let (existing, _) = self.list()?;
        let taken = |s: &str| existing.iter().any(|c| c.slug == s);
        let mut lease_id = lease::new_lease_id();
        while existing.iter().any(|c| c.lease_id == lease_id) {
            lease_id = lease::new_lease_id();
        }
        let slug = match wanted_slug {
            Some(s) => {
                lease::validate_slug(s).map_err(Error::Usage)?;
                if taken(s) {
                    return Err(Error::Usage(format!(
                        "slug {s:?} is already used by another lease; pick another --slug or stop that lease"
                    )));
                }
                s.to_string()
            }
            None => lease::unique_slug(&lease_id, &taken),
        };
        let claim = make(&lease_id, &slug);
        self.write(&claim)?;
        Ok(claim)
    }

    /// Writes (replaces) a claim atomically with mode 0600.
    pub fn write(&self, claim: &Claim) -> Result<()> {
        self.ensure_dir()?;
        let _lock = self.lock_lease(&claim.lease_id)?;
        let path = self.path_of(&claim.lease_id);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", claim.lease_id))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(Error::io("creating temporary claim in", &self.dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(Error::io("setting mode of", tmp.path()))?;
        }
        let body = serde_json::to_vec_pretty(claim).expect("claims serialize");
        tmp.write_all(&body)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(Error::io("writing claim", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("renaming claim into", &path)(e.error))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("syncing claims directory", &self.dir))?;
        Ok(())
    }

    /// Reads one claim by exact lease id. `Ok(None)` when there is none.
    pub fn get(&self, lease_id: &str) -> Result<Option<Claim>> {
        let path = self.path_of(lease_id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Usage(format!(
                    "claim {} is corrupt: {e}; inspect or remove it by hand",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading claim", path)(e)),
        }
    }

    /// Removes a claim (missing is fine).
    pub fn remove(&self, lease_id: &str) -> Result<()> {
        let _lock = self.lock_lease(lease_id)?;
        let path = self.path_of(lease_id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing claim", path)(e)),
        }
        // The lock file stays: unlinking it while others wait on it would let a newcomer lock
        // a fresh inode while a waiter holds the old one.
        Ok(())
    }

    /// Files a crash or an ended lease left in the claims directory: temporary claims whose
    /// writer is gone (a writer holds its lease's lock until it renames the file), and lock
    /// files of leases with no claim that nobody holds. Held locks are never reported, so a
    /// live writer's files are safe whatever their age.
    pub fn stale_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(lease) = name.strip_suffix(".lock") {
                if lease::is_lease_id(lease)
                    && !self.path_of(lease).exists()
                    && lock_is_free(&entry.path())
                {
                    stale.push(entry.path());
                }
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                // `.<lease>.<random>.tmp`
                let lease = name[1..].split('.').next().unwrap_or("");
                let lock = self.dir.join(format!("{lease}.lock"));
                if !lease::is_lease_id(lease) || !lock.exists() || lock_is_free(&lock) {
                    stale.push(entry.path());
                }
            }
        }
        stale.sort();
        stale
    }

    /// All readable claims, sorted by lease id, plus the files that could not be read.
    pub fn list(&self) -> Result<(Vec<Claim>, Vec<CorruptClaim>)> {
        let mut claims = Vec::new();
        let mut corrupt = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((claims, corrupt)),
            Err(e) => return Err(Error::io("reading claims directory", &self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("reading claims directory", &self.dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<Claim>(&bytes) {
                    Ok(c) => claims.push(c),
                    Err(e) => corrupt.push(CorruptClaim {
                        path,
                        reason: e.to_string(),
                    }),
                },
                Err(e) => corrupt.push(CorruptClaim {
                    path,
                    reason: e.to_string(),
                }),
            }
        }
        claims.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        Ok((claims, corrupt))
    }

    /// Finds the claim `id` names for `provider`: a canonical lease id matches only exactly;
    /// otherwise a slug, the provider's box id, or `<provider>_<box id>`.
    pub fn resolve(&self, provider: &str, id: &str) -> Result<Option<Claim>> {
        if lease::is_lease_id(id) {
            return Ok(self.get(id)?.filter(|c| c.provider == provider));
        }
        let (claims, _) = self.list()?;
        let synthetic = id.strip_prefix(&format!("{provider}_"));
        Ok(claims
            .into_iter()
            .filter(|c| c.provider == provider)
            .find(|c| c.slug == id || c.remote_id == id || synthetic == Some(c.remote_id.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(lease: &str, slug: &str, remote: &str) -> Claim {
        Claim {
            lease_id: lease.into(),
            slug: slug.into(),
            provider: "local".into(),
            remote_id: remote.into(),
            endpoint: "local".into(),
            repo_root: None,
            workdir: "/w".into(),
            claimed_at: now_rfc3339(),
            last_used_at: now_rfc3339(),
            keep: false,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn claim_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClaimStore::new(dir.path().join("claims"));
        let c = claim("cbx_0123456789ab", "blue-crab", "box1");
        store.write(&c).unwrap();
        let path = store.dir().join("cbx_0123456789ab.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(store.get("cbx_0123456789ab").unwrap(), Some(c));
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn canonical_id_matches_only_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClaimStore::new(dir.path());
        // A claim whose slug looks like another lease's id must not be found by that id.
        store
            .write(&claim("cbx_aaaaaaaaaaaa", "cbx_bbbbbbbbbbbb", "sbx1"))
            .unwrap();
        assert!(store
            .resolve("local", "cbx_bbbbbbbbbbbb")
            .unwrap()
            .is_none());
        assert!(store
            .resolve("local", "cbx_aaaaaaaaaaaa")
            .unwrap()
            .is_some());
    }

    #[test]
    fn resolve_accepts_slug_remote_id_and_synthetic_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClaimStore::new(dir.path());
        store
            .write(&claim("cbx_aaaaaaaaaaaa", "blue-crab", "sbx1"))
            .unwrap();
        for id in ["blue-crab", "sbx1", "local_sbx1"] {
            let c = store
                .resolve("local", id)
                .unwrap()
                .unwrap_or_else(|| panic!("{id}"));
            assert_eq!(c.lease_id, "cbx_aaaaaaaaaaaa");
        }
        assert!(store.resolve("e2b", "blue-crab").unwrap().is_none());
        assert!(store.resolve("local", "blue").unwrap().is_none());
    }

    #[test]
    fn corrupt_claim_is_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClaimStore::new(dir.path());
        store
            .write(&claim("cbx_aaaaaaaaaaaa", "blue-crab", "sbx1"))
            .unwrap();
        let bad = dir.path().join("cbx_cccccccccccc.json");
        fs::write(&bad, b"{not json").unwrap();
        let (claims, corrupt) = store.list().unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(corrupt.len(), 1);
        assert_eq!(corrupt[0].path, bad);
        assert!(corrupt[0].to_string().contains("cbx_cccccccccccc.json"));
        assert!(bad.exists(), "corrupt claim must not be deleted");
    }

    #[test]
    fn concurrent_creates_get_distinct_leases_and_slugs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClaimStore::new(dir.path());
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .create(None, |id, slug| claim(id, slug, &format!("box-{id}")))
                        .unwrap()
                })
            })
            .collect();
        let made: Vec<Claim> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let (claims, corrupt) = store.list().unwrap();
        assert!(corrupt.is_empty());
        assert_eq!(claims.len(), 20);
        let slugs: std::collections::HashSet<_> = claims.iter().map(|c| &c.slug).collect();
        assert_eq!(slugs.len(), 20);
        assert_eq!(made.len(), 20);
    }

    #[test]
    fn taken_slug_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClaimStore::new(dir.path());
        store
            .create(Some("mine"), |id, s| claim(id, s, "a"))
            .unwrap();
        let err = store
            .create(Some("mine"), |id, s| claim(id, s, "b"))
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
