//! `crabbox workspaces`: the synced trees on a lease's box ([`crate::workspace`]), listed
//! from the box itself (each one's directory and the time its sync record was written), and
//! one removed (its tree, record and detached runs) while no run of this machine uses it.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::boxcmd::{capture, fields};
use super::tree_lock::{Hold, TreeLock};
use super::Engine;
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::workspace::{check_name, workspaces_dir, MAIN};

/// One workspace on a box.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceInfo {
    pub name: String,
    /// Its directory on the box.
    pub workdir: String,
    /// When its last completed sync was recorded on the box (RFC 3339, UTC); `None` when
    /// it was never synced (`--no-sync`, or a sync that never completed).
    pub last_sync: Option<String>,
}

/// The workspaces of one lease.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceList {
    pub lease_id: String,
    pub slug: String,
    pub workspaces: Vec<WorkspaceInfo>,
}

/// Prints `name NUL dir NUL record-mtime NUL` for main and each named workspace that exists.
const LIST: &str = r#"
show() {
  p=${2%/*}; n=${2##*/}; r="$p/.$n.crabbox-synced"; t=
  [ -d "$2" ] && [ ! -L "$2" ] || return 0
  [ -f "$r" ] && t=$(stat -c %Y -- "$r" 2>/dev/null)
  printf '%s\0%s\0%s\0' "$1" "$2" "$t"
}
show main "$CBX_WD"
if [ -d "$CBX_WS" ] && [ ! -L "$CBX_WS" ]; then
  for d in "$CBX_WS"/*; do
    show "${d##*/}" "$d"
  done
fi
"#;

/// Removes one named workspace; exits 3 when it is not there.
const REMOVE: &str = r#"
d="$CBX_WS/$CBX_NAME"
[ -e "$d" ] || [ -L "$d" ] || exit 3
rm -rf -- "$d" "$CBX_WS/.$CBX_NAME.crabbox-synced" "$CBX_WS/.$CBX_NAME.crabbox-runs"
"#;

fn rfc3339(epoch: &str) -> Option<String> {
    let secs: i64 = epoch.trim().parse().ok()?;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl Engine {
    /// The workspaces on `id`'s box, `main` first.
    pub async fn workspaces(&self, id: &str) -> Result<WorkspaceList> {
        let located = self.locate(id).await?;
        let session = self
            .provider
            .open(&located.target, self.provider.ttl(self.ttl))
            .await?;
        let workdir = self.provider.workdir(&located.target.lease_id)?;
        let env = BTreeMap::from([
            ("CBX_WD".to_string(), workdir.clone()),
            ("CBX_WS".to_string(), workspaces_dir(&workdir)),
        ]);
        let cancel = CancellationToken::new();
        let out = capture(session.as_ref(), "/", LIST, env, 4 << 20, &cancel).await?;
        if out.code != 0 {
            return Err(Error::Transport(format!(
                "listing the workspaces on lease {}'s box failed (exit {}): {}",
                located.target.lease_id,
                out.code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let f: Vec<String> = fields(&out.stdout)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let mut workspaces: Vec<WorkspaceInfo> = f
            .chunks_exact(3)
            .map(|w| WorkspaceInfo {
                name: w[0].clone(),
                workdir: w[1].clone(),
                last_sync: rfc3339(&w[2]),
            })
            .collect();
        workspaces.sort_by(|a, b| (a.name != MAIN, &a.name).cmp(&(b.name != MAIN, &b.name)));
        Ok(WorkspaceList {
            lease_id: located.target.lease_id,
            slug: located.target.slug,
            workspaces,
        })
    }

    /// Removes workspace `name` from `id`'s box, once no run of this machine syncs or runs
    /// in it (and none can start meanwhile). `main` is the lease's own workdir: refused.
    pub async fn remove_workspace(
        &self,
        id: &str,
        name: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        check_name(name)?;
        if name == MAIN {
            return Err(Error::Usage(
                "workspace main is the lease's own workdir and cannot be removed; stop the \
                 lease to release it"
                    .into(),
            ));
        }
        let located = self.locate(id).await?;
        let lease = located.target.lease_id.clone();
        let cancel = CancellationToken::new();
        let mut lock = TreeLock::open(&self.state_dir, &lease, name)?;
        lock.hold(Hold::Exclusive, reporter, &cancel).await?;
        let session = self
            .provider
            .open(&located.target, self.provider.ttl(self.ttl))
            .await?;
        let workdir = self.provider.workdir(&lease)?;
        let env = BTreeMap::from([
            ("CBX_WS".to_string(), workspaces_dir(&workdir)),
            ("CBX_NAME".to_string(), name.to_string()),
        ]);
        let out = capture(session.as_ref(), "/", REMOVE, env, 64 << 10, &cancel).await?;
        match out.code {
            0 => Ok(()),
            3 => Err(Error::NotFound(format!(
                "lease {lease} has no workspace {name}"
            ))),
            code => Err(Error::Transport(format!(
                "removing workspace {name} of lease {lease} failed (exit {code}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}
