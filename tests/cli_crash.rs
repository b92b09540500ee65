//! Crash tests: `crabbox warmup` and `crabbox run` killed with SIGKILL at points chosen by a
//! seeded generator among events of the run (a status line, the command's first output, the
//! emulator holding a sandbox, a create the service is still working on), never by a blind
//! sleep. After each kill: every claim file parses, every sandbox the emulator runs is either
//! claimed or listed by `crabbox list`, and `crabbox cleanup --yes` leaves only the leases the
//! user holds (warm ones), no half-made or abandoned lease, and no stale temporary or lock
//! file; stopping the warm leases then leaves no sandbox.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Where a trial kills crabbox.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// When stderr shows a line containing this.
    Stderr(&'static str),
    /// When the command's first output line arrives on stdout.
    FirstOutput,
    /// As soon as the emulator holds a sandbox.
    SandboxExists,
    /// While the service is still making the sandbox (its create stalls): the process dies
    /// before any answer, and the sandbox appears after.
    DuringCreate,
}

const POINTS: &[KillAt] = &[
    KillAt::Stderr("creating E2B sandbox"),
    KillAt::Stderr("created e2b box"),
    KillAt::Stderr("sync: sending"),
    KillAt::FirstOutput,
    KillAt::SandboxExists,
    KillAt::DuringCreate,
];

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn fast(sb: Sandbox) -> Sandbox {
    sb.with_env("CRABBOX_PROVIDER", "e2b")
        .with_env("CRABBOX_E2B_CONTROL_TIMEOUT", "5s")
        .with_env("CRABBOX_E2B_RETRY_MAX_WAIT", "100ms")
}

/// Runs `args`, kills it with SIGKILL at `at`; returns whether the kill came before it exited.
fn run_and_kill(emu: &Emulator, sb: &Sandbox, args: &[&str], at: KillAt) -> bool {
    if let KillAt::DuringCreate = at {
        emu.arm(
            json!([{"plane": "control", "method": "POST", "path": "/v2/sandboxes",
                        "action": {"stall": {"ms": 1500}}}]),
        );
    }
    let mut child = sb
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let out_tx = tx.clone();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let readers = [
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send((true, line));
            }
        }),
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send((false, line));
            }
        }),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    while Instant::now() < deadline {
        let reached = match at {
            KillAt::SandboxExists => !emu.sandbox_ids().is_empty(),
            KillAt::DuringCreate => emu
                .faults()
                .first()
                .is_some_and(|f| f["fired"].as_u64() == Some(1)),
            _ => false,
        };
        let line = rx.recv_timeout(Duration::from_millis(20));
        let reached = reached
            || match (&line, at) {
                (Ok((false, l)), KillAt::Stderr(s)) => l.contains(s),
                (Ok((true, _)), KillAt::FirstOutput) => true,
                _ => false,
            };
        if reached {
            killed = child.try_wait().unwrap().is_none();
            let _ = child.kill();
            break;
        }
        if matches!(line, Err(mpsc::RecvTimeoutError::Disconnected)) {
            break;
        }
    }
    let _ = child.kill();
    child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    if let KillAt::DuringCreate = at {
        // The stalled create goes on without its client: wait until the service made it.
        let until = Instant::now() + Duration::from_secs(10);
        while emu.sandbox_ids().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        emu.clear_faults();
    }
    killed
}

/// Files in `dir` (none when it does not exist).
fn names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn check_trial(emu: &Emulator, sb: &Sandbox) -> Result<(), String> {
    // Every claim parses (`claims` panics on a torn one).
    let claims = sb.claims();
    let listed: Vec<Value> = serde_json::from_str(&ok(sb.run(&["list", "--json"]))).unwrap();
    for id in emu.sandbox_ids() {
        let claimed = claims.iter().any(|c| c["remoteId"] == id.as_str());
        let shown = listed.iter().any(|b| b["remoteId"] == id.as_str());
        if !claimed && !shown {
            return Err(format!(
                "sandbox {id} is neither claimed nor listed: {listed:?}"
            ));
        }
    }
    let o = sb.run(&["cleanup", "--yes"]);
    if code(&o) != 0 {
        return Err(format!("cleanup failed: {}", stderr(&o)));
    }
    let claims = sb.claims();
    for c in &claims {
        if c["remoteId"] == "" || c["keep"] != true {
            return Err(format!("cleanup left a half-made or abandoned lease: {c}"));
        }
    }
    for id in emu.sandbox_ids() {
        if !claims.iter().any(|c| c["remoteId"] == id.as_str()) {
            return Err(format!(
                "cleanup left sandbox {id} unclaimed: {}",
                stderr(&o)
            ));
        }
    }
    let leases: Vec<String> = claims
        .iter()
        .map(|c| c["leaseId"].as_str().unwrap().to_string())
        .collect();
    let state = sb.state.join("crabbox");
    for name in names(&state.join("claims")) {
        let lease = name.split('.').next().unwrap_or("");
        let expected =
            name == ".store.lock" || (leases.iter().any(|l| l == lease) && !name.starts_with('.'));
        if !expected {
            return Err(format!("stale file claims/{name} after cleanup"));
        }
    }
    for name in names(&state.join("locks")) {
        if !leases.iter().any(|l| name == format!("{l}.tree")) {
            return Err(format!("stale file locks/{name} after cleanup"));
        }
    }
    if !names(&state.join("spool")).is_empty() {
        return Err(format!(
            "stale spool files: {:?}",
            names(&state.join("spool"))
        ));
    }
    for lease in &leases {
        ok(sb.run(&["stop", lease]));
    }
    if !emu.sandbox_ids().is_empty() {
        return Err(format!("sandboxes left: {:?}", emu.sandbox_ids()));
    }
    Ok(())
}

#[test]
fn kill_9_during_warmup_and_run_leaves_nothing_cleanup_cannot_recover() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let seed = std::env::var("CRABBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_u64);
    let trials: usize = std::env::var("CRABBOX_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    eprintln!("crash trials: {trials}, seed {seed} (CRABBOX_CRASH_SEED replays it)");
    let mut rng = Lcg(seed);
    let mut failures = Vec::new();
    let mut kills = 0;
    for trial in 0..trials {
        let sb = fast(emu.sandbox());
        // Enough files that the sync takes a moment.
        for i in 0..200 {
            std::fs::write(
                sb.root().join(format!("f{i}.txt")),
                format!("{i}\n").repeat(50),
            )
            .unwrap();
        }
        // Every point is visited in turn, in an order the seed shuffles; a warmup (which
        // prints no sync line and runs no command) stands in for a run where it can.
        let at = POINTS[(trial + rng.next(POINTS.len())) % POINTS.len()];
        let warmup_can = !matches!(at, KillAt::FirstOutput | KillAt::Stderr("sync: sending"));
        let run = !warmup_can || rng.next(2) == 0;
        let args: &[&str] = if run {
            &["run", "--", "sh", "-c", "echo first; sleep 30"]
        } else {
            &["warmup"]
        };
        let killed = run_and_kill(&emu, &sb, args, at);
        kills += usize::from(killed);
        let result = check_trial(&emu, &sb);
        eprintln!(
            "trial {trial}: {} killed at {at:?}: {}",
            args[0],
            match (&result, killed) {
                (Ok(()), true) => "ok",
                (Ok(()), false) => "ok (it ended before the kill)",
                (Err(_), _) => "FAILED",
            }
        );
        if let Err(e) = result {
            failures.push(format!(
                "trial {trial} ({} at {at:?}, seed {seed}): {e}",
                args[0]
            ));
        }
        for id in emu.sandbox_ids() {
            emu.kill_sandbox(&id);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        kills * 2 >= trials,
        "only {kills} of {trials} trials killed a running crabbox"
    );
}
