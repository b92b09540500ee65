//! crabbox-provider-e2b: Crabbox boxes as E2B sandboxes.
//!
//! [`E2bProvider`] implements `crabbox_core::provider::Provider` against E2B's two planes:
//! the REST control plane (create, connect, get, list, delete) and each sandbox's envd
//! (file upload, and processes over the Connect protocol with the JSON codec). It behaves
//! like the reference Go tool for users — same config keys, metadata tags, claims, workdir
//! rules, exit codes — and goes further where the reference stops:
//!
//! - a warm sync sends only what changed and deletes only files crabbox itself synced, so
//!   remote build outputs (`target/`, `node_modules/`) survive between runs;
//! - Ctrl-C signals the remote process (SIGTERM, then SIGKILL) and everything it started
//!   (found by the `CRABBOX_RUN_ID` in their environment, see [`run_tree`]) and releases the
//!   sandbox, rather than leaving the command running; a Ctrl-C during create, or a create that
//!   failed after it may have reached E2B, is followed by a lookup of the lease's tag and a
//!   delete, and an abandoned sync kills its apply script and removes its files from the box;
//! - the TTL cap is `e2b.maxTtl` (1 h by default, raise it on E2B's pro tier).
//!
//! Invariants: the API key and envd access tokens never appear in any output, error, log,
//! `Debug` output or claim; plain HTTP is only ever spoken to loopback; user and workdir are
//! checked before any network call; a sandbox is only touched when its metadata proves it is
//! the one the claim (or `--reclaim`) names.
//!
//! Modules: [`settings`] (config section and endpoint rules), [`placement`] (user, workdir,
//! TTL), [`metadata`] (tags and ownership), [`retry`], [`control`] (control-plane client),
//! [`envd`] (sandbox daemon client), [`remote_sync`] (putting the tree on the box),
//! [`run_tree`] (stopping all of a run's processes on cancel).

pub mod control;
pub mod envd;
pub mod metadata;
pub mod placement;
mod provider;
pub mod remote_sync;
pub mod retry;
pub mod run_tree;
pub mod settings;

pub use provider::E2bProvider;
pub use retry::RetryPolicy;
pub use settings::E2bSettings;

/// Fails the test unless `script` parses as bash (`bash -n`): the scripts run on the box.
#[cfg(test)]
pub(crate) fn assert_valid_bash(script: &str) {
    let out = std::process::Command::new("/bin/bash")
        .args(["-n", "-c", script])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
