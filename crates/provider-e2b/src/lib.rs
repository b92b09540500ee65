//! crabbox-provider-e2b: Crabbox boxes as E2B sandboxes.
//!
//! [`E2bProvider`] implements crabbox's box primitives (`crabbox_core::provider::Provider`)
//! against E2B's two planes:
//! the REST control plane (create, connect, get, list, delete) and each sandbox's envd
//! (file upload, and processes over the Connect protocol with the JSON codec). It behaves
//! like the reference Go tool for users — same config keys, metadata tags, workdir rules —
//! while the lease lifecycle (claims, sync plan, keep policy, cancel) is the shared engine's
//! in `crabbox-core`. What is E2B's own lives here:
//!
//! - sandboxes tagged with their lease, found again by that tag after a create whose answer
//!   was lost, and used or deleted only when their tags prove they are the lease's;
//! - a sync applied through a staging directory on the box, whose leftovers are removed when
//!   it is abandoned ([`remote_sync`]);
//! - a cancel reaching everything the command started, found by the `CRABBOX_RUN_ID` in
//!   their environment, since envd signals one pid ([`run_tree`]);
//! - the TTL cap `e2b.maxTtl` (1 h by default, raise it on E2B's pro tier);
//! - the lifecycle E2B offers: pause and resume (connect), idle boxes created with
//!   `autoPause`/`autoResume`, snapshots, forks (which carry their source's tags), port URLs
//!   with the traffic token, and a PTY over envd (`lifecycle`, `pty`).
//!
//! Invariants: the API key and envd access tokens never appear in any output, error, log,
//! `Debug` output or claim; plain HTTP is only ever spoken to loopback; user and workdir are
//! checked before any network call; a sandbox is only touched when its metadata proves it is
//! the one the claim (or `--reclaim`) names.
//!
//! Modules: [`settings`] (config section and endpoint rules), [`placement`] (user, workdir,
//! TTL), [`metadata`] (tags and ownership), [`retry`], [`control`] (control-plane client),
//! [`envd`] (sandbox daemon client), `provider` (the primitives over the control plane),
//! [`network`] (egress rules of new sandboxes, and which config layer may loosen them),
//! `lookup` (sandboxes no claim names), `doctor` (its checks for `crabbox doctor`), [`session`] (commands and files on one sandbox),
//! [`remote_sync`] (applying an archive on the box), [`run_tree`] (stopping all of a run's
//! processes on cancel), `lifecycle` (pause, timeout, snapshots, forks, port URLs), `pty`
//! (a program under envd's pseudo-terminal).

pub mod control;
mod doctor;
pub mod envd;
mod lifecycle;
mod lookup;
pub mod metadata;
pub mod network;
pub mod placement;
mod provider;
mod pty;
pub mod remote_sync;
pub mod retry;
pub mod run_tree;
pub mod scan;
pub mod scan_cache;
pub mod session;
pub mod settings;

pub use provider::E2bProvider;
pub use retry::RetryPolicy;
pub use settings::{E2bSettings, SECTION};

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

/// The registry entry of the E2B provider.
pub const ENTRY: crabbox_core::registry::ProviderEntry = crabbox_core::registry::ProviderEntry {
    name: "e2b",
    section: settings::SECTION,
    build: |cfg, ctx| {
        Ok(Box::new(
            E2bProvider::from_config(cfg)?
                .with_reporter(ctx.reporter.clone())
                .with_scan_cache(ctx.state_dir.join("e2b-scans")),
        ))
    },
};
