//! `cargo xtask bench`: warm-sync speed against a baseline measured in the same run.
//!
//! The baseline is what the reference tool does on every run: send the whole tree again
//! (`--full-resync`). The measured case is crabbox's warm sync after a one-file edit, which
//! sends only what changed. Both go through the real release binary with `--timing-json`;
//! the table prints medians and the ratio baseline/crabbox (higher is better).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{step, Result};

const FILES: usize = 3000;
const FILE_BYTES: usize = 8 * 1024;
const ROUNDS: usize = 7;

struct Bench {
    bin: PathBuf,
    repo: PathBuf,
    state: PathBuf,
    env: Vec<(String, String)>,
}

impl Bench {
    fn crabbox(&self, args: &[&str]) -> Result<std::process::Output> {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(&self.repo)
            .env("XDG_STATE_HOME", &self.state)
            .env("XDG_CONFIG_HOME", self.state.join("config"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running crabbox: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "crabbox {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    }

    fn sync_ms(&self, lease: &str, full: bool) -> Result<u64> {
        let mut args = vec!["run", "--id", lease, "--timing-json"];
        if full {
            args.push("--full-resync");
        }
        args.extend(["--", "true"]);
        let out = self.crabbox(&args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .ok_or("no timing line")?;
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        v["syncMs"].as_u64().ok_or_else(|| "no syncMs".to_string())
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn make_repo(dir: &Path) -> Result {
    let git = |args: &[&str]| -> Result {
        let s = Command::new("git")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@crabbox.invalid",
            ])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if s.success() {
            Ok(())
        } else {
            Err(format!("git {args:?} failed"))
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    git(&["init", "-q"])?;
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for i in 0..FILES {
        let sub = dir.join(format!("src/m{:02}", i % 50));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        // Pseudo-random content so gzip cannot make the baseline artificially cheap.
        let mut body = Vec::with_capacity(FILE_BYTES);
        while body.len() < FILE_BYTES {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            body.extend_from_slice(&seed.to_le_bytes());
        }
        std::fs::write(sub.join(format!("f{i}.txt")), &body).map_err(|e| e.to_string())?;
    }
    git(&["add", "."])?;
    git(&["commit", "-q", "-m", "bench"])
}

fn scenario(name: &str, b: &Bench) -> Result<(String, u64, u64)> {
    let lease = String::from_utf8_lossy(&b.crabbox(&["warmup"])?.stdout)
        .trim()
        .to_string();
    b.sync_ms(&lease, false)?; // first sync fills the box
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        std::fs::write(b.repo.join("src/m00/f0.txt"), format!("edit {round}\n"))
            .map_err(|e| e.to_string())?;
        ours.push(b.sync_ms(&lease, false)?);
        std::fs::write(
            b.repo.join("src/m00/f0.txt"),
            format!("edit again {round}\n"),
        )
        .map_err(|e| e.to_string())?;
        base.push(b.sync_ms(&lease, true)?);
    }
    b.crabbox(&["stop", &lease])?;
    Ok((name.to_string(), median(base), median(ours)))
}

/// Starts the emulator binary and returns it with its API and sandbox URLs.
fn start_emulator(root: &Path, key: &str) -> Result<(Child, String, String)> {
    let mut child = Command::new(root.join("target/release/e2b-emulator"))
        .args(["--listen", "127.0.0.1:0", "--api-key", key])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting e2b-emulator: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped").by_ref())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("emulator said {line:?}: {e}"))?;
    let get = |k: &str| {
        v[k].as_str()
            .map(String::from)
            .ok_or(format!("emulator line lacks {k}"))
    };
    Ok((child, get("api_url")?, get("sandbox_url")?))
}

pub fn run(root: &Path, _args: &[String]) -> Result {
    step(
        root,
        "release build",
        "cargo",
        &["build", "--release", "-p", "crabbox"],
        &[],
    )?;
    let emulator_built = step(
        root,
        "release build (emulator)",
        "cargo",
        &["build", "--release", "-p", "e2b-emulator"],
        &[],
    );
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let repo = tmp.path().join("repo");
    make_repo(&repo)?;
    let bin = root.join("target/release/crabbox");
    let mut rows = Vec::new();
    let local = Bench {
        bin: bin.clone(),
        repo: repo.clone(),
        state: tmp.path().join("state-local"),
        env: vec![("CRABBOX_PROVIDER".into(), "local".into())],
    };
    rows.push(scenario("local: warm sync after 1-file edit", &local)?);

    let key = "e2b_bench0000000000000000";
    match emulator_built.and_then(|()| start_emulator(root, key)) {
        Ok((mut child, api, sbx)) => {
            let e2b = Bench {
                bin,
                repo,
                state: tmp.path().join("state-e2b"),
                env: vec![
                    ("CRABBOX_PROVIDER".into(), "e2b".into()),
                    ("E2B_API_KEY".into(), key.into()),
                    ("E2B_API_URL".into(), api),
                    ("E2B_SANDBOX_URL".into(), sbx),
                ],
            };
            let r = scenario("e2b (emulator): warm sync after 1-file edit", &e2b);
            let _ = child.kill();
            rows.push(r?);
        }
        Err(e) => eprintln!("xtask: bench: skipping e2b scenario: {e}"),
    }
    println!("\n{FILES} files x {} KiB, median of {ROUNDS} rounds; baseline = full re-sync of the tree (the reference's behaviour)", FILE_BYTES / 1024);
    println!(
        "{:<46} {:>12} {:>12} {:>8}",
        "scenario", "baseline ms", "crabbox ms", "ratio"
    );
    for (name, base, ours) in rows {
        println!(
            "{name:<46} {base:>12} {ours:>12} {:>7.1}x",
            base as f64 / ours.max(1) as f64
        );
    }
    Ok(())
}
