//! Workspaces: several synced trees on one box, each synced, verified and run in on its
//! own, so runs in different workspaces of one lease never touch each other's files.
//!
//! `main` (the default) is the lease's workdir itself, laid out as before workspaces
//! existed, so existing leases keep working. A named workspace `NAME` lives in a hidden
//! sibling of the workdir, `<parent>/.<workdir name>.crabbox-workspaces/NAME`, outside the
//! main tree (a main run's command cannot reach it by accident, and main's sync never sees
//! it); its sync record and detached runs sit beside it there, as the workdir's do beside
//! the workdir ([`crate::provider::record_path`]). This machine's tree lock is per lease
//! and workspace ([`lock_name`]).

use crate::error::{Error, Result};

/// The workspace of a run that names none.
pub const MAIN: &str = "main";
/// The longest workspace name.
pub const MAX_NAME: usize = 64;

/// Checks a workspace name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`
/// (so never `.`, `..`, a hidden name or an option), no `/`, no NUL.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "workspace name {:?} is not valid: use 1 to {MAX_NAME} letters, digits, `.`, `_` \
             or `-`, not starting with `.` or `-` (e.g. main, agent-2)",
            crate::config::shorten(name)
        )))
    }
}

/// The name a run's workspace setting stands for: `main` when unset; checked.
pub fn resolve(name: Option<&str>) -> Result<String> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(MAIN.to_string()),
        Some(n) => check_name(n).map(|_| n.to_string()),
    }
}

/// Where a lease's named workspaces live: `<parent>/.<name>.crabbox-workspaces`.
pub fn workspaces_dir(workdir: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-workspaces")
}

/// The directory of workspace `name` of a lease whose workdir is `workdir`.
pub fn workdir_of(workdir: &str, name: &str) -> String {
    if name == MAIN {
        workdir.to_string()
    } else {
        format!("{}/{name}", workspaces_dir(workdir))
    }
}

/// The name of this machine's tree lock of a lease's workspace: `<lease>` for `main` (as
/// before workspaces), `<lease>@<name>` otherwise.
pub fn lock_name(lease: &str, name: &str) -> String {
    if name == MAIN {
        lease.to_string()
    } else {
        format!("{lease}@{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_user_names() {
        for ok in ["main", "agent-2", "feature_x", "v1.2", "A", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\0b",
            ".hidden",
            "-rf",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        assert_eq!(resolve(None).unwrap(), "main");
        assert_eq!(resolve(Some(" ")).unwrap(), "main");
        assert!(resolve(Some("a/b")).is_err());
    }

    #[test]
    fn main_keeps_the_workdir_and_others_live_beside_it() {
        assert_eq!(
            workdir_of("/home/user/crabbox", "main"),
            "/home/user/crabbox"
        );
        assert_eq!(
            workdir_of("/home/user/crabbox", "agent-2"),
            "/home/user/.crabbox.crabbox-workspaces/agent-2"
        );
        assert_eq!(
            crate::provider::record_path(&workdir_of("/w/repo", "x")),
            "/w/.repo.crabbox-workspaces/.x.crabbox-synced"
        );
        assert_eq!(lock_name("cbx_0123456789ab", "main"), "cbx_0123456789ab");
        assert_eq!(lock_name("cbx_0123456789ab", "x"), "cbx_0123456789ab@x");
    }
}
