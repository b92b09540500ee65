//! This machine's lock on a lease's tree: syncs that change it take turns, commands share it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::events::Reporter;

/// How often a busy lock is tried again.
const TICK: Duration = Duration::from_millis(100);

/// How a run holds its lease's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// Reading it or running a command in it: many runs at once.
    Shared,
    /// Changing it: one run, and no other reading it.
    Exclusive,
}

/// This machine's lock on a lease's tree (`<state>/locks/<lease>.tree`, and
/// `<lease>@<workspace>.tree` for a named workspace: each workspace's tree is its own): syncs
/// that change the tree hold it exclusively, runs that read it or run commands in it hold it
/// shared. Released when dropped.
pub(super) struct TreeLock {
    file: std::fs::File,
    path: std::path::PathBuf,
    lease: String,
    /// The last `hold` had to wait for another run.
    pub(super) waited: bool,
}

impl TreeLock {
    pub(super) fn open(state_dir: &std::path::Path, lease: &str, workspace: &str) -> Result<Self> {
        let dir = state_dir.join("locks");
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join(format!(
            "{}.tree",
            crate::workspace::lock_name(lease, workspace)
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening the tree lock", &path))?;
        Ok(TreeLock {
            file,
            path,
            lease: if workspace == crate::workspace::MAIN {
                lease.to_string()
            } else {
                format!("{lease} (workspace {workspace})")
            },
            waited: false,
        })
    }

    /// Takes (or converts to) `how`, waiting while other runs hold the lease in a way that
    /// excludes it, and saying so once.
    pub(super) async fn hold(
        &mut self,
        how: Hold,
        reporter: &dyn Reporter,
        cancel: &CancellationToken,
    ) -> Result<()> {
        use fs4::fs_std::FileExt;
        self.waited = false;
        loop {
            let taken = match how {
                Hold::Shared => FileExt::try_lock_shared(&self.file),
                Hold::Exclusive => FileExt::try_lock_exclusive(&self.file),
            };
            match taken {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(Error::io("locking", self.path.clone())(e)),
            }
            if !self.waited {
                reporter.status(&match how {
                    Hold::Shared => format!(
                        "sync: waiting for another run to finish changing lease {}'s tree",
                        self.lease
                    ),
                    Hold::Exclusive => format!(
                        "sync: waiting for the other runs of lease {} (syncing or running a \
                         command) before changing its tree",
                        self.lease
                    ),
                });
                self.waited = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Interrupted),
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
