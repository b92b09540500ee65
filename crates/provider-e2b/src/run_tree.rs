//! Stopping everything a run started on the box, not just the command's own process.
//!
//! envd's `SendSignal` signals exactly one pid, the command's. What the command started
//! (`make && make test`'s children, a `(worker) &` in a shell script) is not signalled, and
//! on a kept sandbox (`--id`, `keep`) it would go on running after Ctrl-C. So every run's
//! environment carries [`RUN_ID_VAR`]`=<random hex>`, which every descendant inherits, and
//! a cancel also starts a short reaper on the box that signals every process whose initial
//! environment holds exactly that entry.
//!
//! Limits: the reaper runs as the run's user, so it cannot see or signal a descendant that
//! changed user (`sudo`); a descendant started with a cleared or rewritten environment
//! (`env -i`) escapes it.

use std::collections::BTreeMap;
use std::time::Duration;

pub use crabbox_core::provider::RUN_ID_VAR;

use crate::envd::Envd;
use crate::remote_sync::run_captured;

/// Longest the reaper may keep the caller waiting beyond the grace period.
const REAP_SLACK: Duration = Duration::from_secs(5);

/// SIGTERMs every process of run `CBX_RUN_ID` (except itself, whose own environment has no
/// such entry), waits up to `CBX_GRACE_TICKS` tenths of a second for them to go, then
/// SIGKILLs what is left, sweeping again while new ones turn up (a dying parent may have
/// forked just before). Zombies have an empty environ and are skipped.
const REAP_SCRIPT: &str = include_str!("scripts/run_reap.sh");

/// Runs the reaper for `run_id` on the box: SIGTERM, up to `grace` for the run's processes
/// to exit, then SIGKILL. Bounded by `grace` plus a few seconds; errors are ignored (the
/// caller is already cleaning up).
pub async fn reap(envd: &Envd, run_id: &str, grace: Duration) {
    let ticks = grace.as_millis().div_ceil(100).max(1);
    let envs = BTreeMap::from([
        ("CBX_RUN_ID".to_string(), run_id.to_string()),
        ("CBX_GRACE_TICKS".to_string(), ticks.to_string()),
    ]);
    let _ = tokio::time::timeout(grace + REAP_SLACK, run_captured(envd, REAP_SCRIPT, envs)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_core::engine::new_run_id;
    use std::process::{Child, Command};
    use std::time::Instant;

    fn wait_gone(child: &mut Child, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn reap_script_is_valid_bash() {
        crate::assert_valid_bash(REAP_SCRIPT);
    }

    #[test]
    fn reaper_stops_the_runs_processes_and_nothing_else() {
        let id = new_run_id();
        // Ignores SIGTERM: only the SIGKILL after the grace stops it.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.1; done"])
            .env(RUN_ID_VAR, &id)
            .spawn()
            .unwrap();
        let mut polite = Command::new("sleep")
            .arg("30")
            .env(RUN_ID_VAR, &id)
            .spawn()
            .unwrap();
        // Another run's process, and one whose id merely starts with ours.
        let mut other = Command::new("sleep")
            .arg("30")
            .env(RUN_ID_VAR, new_run_id())
            .spawn()
            .unwrap();
        let mut prefixed = Command::new("sleep")
            .arg("30")
            .env(RUN_ID_VAR, format!("{id}0"))
            .spawn()
            .unwrap();
        // spawn() returns once each child has exec'd, so their environments are in place.
        let started = Instant::now();
        let out = Command::new("bash")
            .args(["-c", REAP_SCRIPT])
            .env("CBX_RUN_ID", &id)
            .env("CBX_GRACE_TICKS", "5")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Bounded (it does not wait on what it cannot stop), with room for a loaded machine
        // whose every process's environment it reads.
        assert!(started.elapsed() < Duration::from_secs(30));
        let polite_gone = wait_gone(&mut polite, Duration::from_secs(10));
        let stubborn_gone = wait_gone(&mut stubborn, Duration::from_secs(10));
        let other_alive = other.try_wait().unwrap().is_none();
        let prefixed_alive = prefixed.try_wait().unwrap().is_none();
        for child in [&mut stubborn, &mut polite, &mut other, &mut prefixed] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(polite_gone, "SIGTERM reaches the run's processes");
        assert!(stubborn_gone, "SIGKILL follows the grace");
        assert!(
            other_alive && prefixed_alive,
            "other processes are left alone"
        );
    }
}
