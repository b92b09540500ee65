//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets in `fuzz/` for N
//! seconds each (all of them unless named), then prints one line per target.
//!
//! Needs nightly Rust and cargo-fuzz, and says how to install whichever is missing. Each
//! target starts from the inputs it found before (`fuzz/corpus/<target>`, not committed) and
//! the hand-made seeds in `fuzz/seeds/<target>`; a crash leaves its input in
//! `fuzz/artifacts/<target>/`. Temp dirs go to `/dev/shm` unless `TMPDIR` is set. Not part of
//! `ci`: fuzzing is open-ended; the property tests over the same parsers are what CI runs.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::Result;

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "connect_envelope",
    "process_event",
    "config_loader",
    "archive_extract",
    "manifest_paths",
];

const DEFAULT_SECONDS: u64 = 30;

const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [TARGET...]";

struct Args {
    seconds: u64,
    targets: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.as_str() {
            "--seconds" | "-s" => Some(
                it.next()
                    .ok_or_else(|| format!("--seconds needs a value\n{USAGE}"))?
                    .as_str(),
            ),
            other => other.strip_prefix("--seconds="),
        };
        if let Some(v) = value {
            seconds = v
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("--seconds: {v:?} is not a positive number"))?;
        } else if arg == "-h" || arg == "--help" {
            return Err(format!("{USAGE}\ntargets: {}", TARGETS.join(", ")));
        } else if TARGETS.contains(&arg.as_str()) {
            targets.push(arg.clone());
        } else {
            return Err(format!(
                "unknown fuzz target {arg:?}; the targets are {}\n{USAGE}",
                TARGETS.join(", ")
            ));
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(Args { seconds, targets })
}

/// `cargo +nightly <args>` succeeds quietly.
fn nightly_cargo_ok(args: &[&str]) -> bool {
    Command::new("cargo")
        .arg("+nightly")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn check_toolchain() -> Result {
    if !nightly_cargo_ok(&["--version"]) {
        return Err(
            "fuzzing needs nightly Rust, which is missing: install it with \
             `rustup toolchain install nightly`"
                .into(),
        );
    }
    if !nightly_cargo_ok(&["fuzz", "--version"]) {
        return Err(
            "fuzzing needs cargo-fuzz, which is missing: install it with `cargo install cargo-fuzz`"
                .into(),
        );
    }
    Ok(())
}

/// A tmpfs for the targets' temp dirs (`archive_extract` makes one per input: some 25 times
/// faster than on a busy disk), unless the caller chose `TMPDIR`.
fn fast_tmp() -> Option<&'static str> {
    let shm = "/dev/shm";
    let writable = || tempfile::tempdir_in(shm).is_ok();
    (std::env::var_os("TMPDIR").is_none() && Path::new(shm).is_dir() && writable()).then_some(shm)
}

pub fn run(root: &Path, args: &[String]) -> Result {
    let Args { seconds, targets } = parse_args(args)?;
    check_toolchain()?;
    let fuzz = root.join("fuzz");
    let mut results = Vec::new();
    for target in &targets {
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", target.as_str()])
            .arg(&corpus)
            .current_dir(root);
        let seeds = fuzz.join("seeds").join(target);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args(["--", &format!("-max_total_time={seconds}")]);
        if let Some(dir) = fast_tmp() {
            cmd.env("TMPDIR", dir);
        }
        eprintln!("xtask: ==> fuzz {target} for {seconds}s");
        let t = Instant::now();
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo +nightly fuzz: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("xtask: <== fuzz {target}: {status} in {secs:.1}s");
        results.push((target, status, secs));
    }
    eprintln!("xtask: fuzz summary ({seconds}s per target):");
    let mut failed = Vec::new();
    for (target, status, secs) in &results {
        if status.success() {
            eprintln!("xtask:   {target:<18} ok      {secs:>6.1}s");
        } else {
            eprintln!(
                "xtask:   {target:<18} FAILED  {secs:>6.1}s  ({status}; the input is under fuzz/artifacts/{target}/)"
            );
            failed.push(target.as_str());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found a failure in {}; reproduce with `cargo +nightly fuzz run <target> <artifact>`",
            failed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_pick_seconds_and_targets() {
        let all = parse_args(&[]).unwrap();
        assert_eq!(
            (all.seconds, all.targets.len()),
            (DEFAULT_SECONDS, TARGETS.len())
        );
        let one = parse_args(&args(&["--seconds", "5", "process_event"])).unwrap();
        assert_eq!(
            (one.seconds, one.targets),
            (5, vec!["process_event".to_string()])
        );
        assert_eq!(parse_args(&args(&["--seconds=7"])).unwrap().seconds, 7);
        assert!(parse_args(&args(&["--seconds", "0"])).is_err());
        assert!(parse_args(&args(&["--seconds"])).is_err());
        let err = parse_args(&args(&["nope"])).err().unwrap();
        assert!(err.contains("connect_envelope"), "{err}");
    }

    #[test]
    fn every_target_is_declared_in_the_fuzz_manifest() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"),
        )
        .unwrap();
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }
}
