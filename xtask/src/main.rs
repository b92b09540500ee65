//! Project chores: `cargo xtask ci | setup | emulator | bench | fuzz`.
//!
//! `ci` is the one test command: it installs what the tests need (bubblewrap for the E2B
//! emulator's sandboxes, a Python venv with E2B's and MCP's official SDKs), then runs
//! formatting and lint checks, every Rust test, the SDK fidelity script against the emulator,
//! and the MCP client script against `crabbox mcp`. `fuzz` runs the
//! cargo-fuzz targets in `fuzz/` (nightly; not part of `ci`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

mod bench;
mod fuzz;

/// The official SDK version the emulator is proven against.
const E2B_SDK_VERSION: &str = "2.63.0";
/// The official MCP Python SDK version `crabbox mcp` is driven with (`tests/mcp/client.py`).
const MCP_SDK_VERSION: &str = "2.3.0";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("emulator") => emulator(&root, &args[1..]),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("setup") => setup(&root),
        Some("fuzz") => fuzz::run(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|setup|emulator [ARGS]|bench|fuzz [--seconds N] [TARGET...]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub type Result<T = ()> = std::result::Result<T, String>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory, wherever `CARGO_TARGET_DIR` or a config file puts it.
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    without_cargo_run_env(&mut cmd);
    let out = cmd
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed ({})", out.status));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata names no target_directory".into())
}

pub fn step(
    root: &Path,
    name: &str,
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result {
    eprintln!("xtask: ==> {name}: {program} {}", args.join(" "));
    let t = Instant::now();
    let mut cmd = Command::new(program);
    if program == "cargo" {
        without_cargo_run_env(&mut cmd);
    }
    let status = cmd
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .status()
        .map_err(|e| format!("{name}: cannot run {program}: {e}"))?;
    eprintln!(
        "xtask: <== {name}: {status} in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// Removes what `cargo run` put in xtask's environment about xtask itself. A cargo started from
/// here would otherwise see `CARGO_MANIFEST_DIR=.../xtask`, and build scripts that track it (ring's)
/// rerun, rebuilding everything above them, on every switch between `cargo xtask` and plain cargo.
fn without_cargo_run_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(name);
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs what the tests need that cargo does not: bubblewrap and the SDK venv.
fn setup(root: &Path) -> Result {
    if !have("bwrap") {
        if !have("apt-get") {
            return Err(
                "bubblewrap (bwrap) is missing and apt-get is not available: install bubblewrap"
                    .into(),
            );
        }
        step(root, "apt update", "apt-get", &["update", "-qq"], &[])?;
        step(
            root,
            "install bubblewrap",
            "apt-get",
            &["install", "-y", "-qq", "bubblewrap"],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )?;
    }
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        step(
            root,
            "python venv",
            "python3",
            &["-m", "venv", venv.to_str().unwrap()],
            &[],
        )?;
    }
    for (package, version, what) in [
        ("e2b", E2B_SDK_VERSION, "the E2B SDK"),
        ("mcp", MCP_SDK_VERSION, "the MCP SDK"),
    ] {
        if !has_package(&python, package, version) {
            step(
                root,
                &format!("install {what}"),
                python.to_str().unwrap(),
                &[
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    &format!("{package}=={version}"),
                ],
                &[],
            )?;
        }
    }
    Ok(())
}

/// Whether the venv's Python has `package` at `version`. A quiet check: a missing package is
/// an answer (false), not a traceback.
fn has_package(python: &Path, package: &str, version: &str) -> bool {
    let probe = format!(
        "import importlib.metadata as m, sys\n\
         try:\n    v = m.version('{package}')\n\
         except m.PackageNotFoundError:\n    sys.exit(1)\n\
         sys.exit(v != '{version}')\n"
    );
    Command::new(python)
        .args(["-c", &probe])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ci(root: &Path) -> Result {
    let t = Instant::now();
    setup(root)?;
    step(
        root,
        "format check",
        "cargo",
        &["fmt", "--all", "--", "--check"],
        &[],
    )?;
    step(
        root,
        "clippy",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    step(
        root,
        "build",
        "cargo",
        &["build", "--workspace", "--bins"],
        &[],
    )?;
    // Tests that need the E2B emulator skip on a host that cannot run it; here they must not.
    step(
        root,
        "tests",
        "cargo",
        &["test", "--workspace"],
        &[("CRABBOX_REQUIRE_EMULATOR", "1")],
    )?;
    let emulator = target_dir(root)?.join("debug/e2b-emulator");
    let script = root.join("tests/sdk/conformance.py");
    step(
        root,
        "E2B SDK fidelity",
        root.join(".venv/bin/python").to_str().unwrap(),
        &[script.to_str().unwrap()],
        &[("E2B_EMULATOR_BIN", emulator.to_str().unwrap())],
    )?;
    let crabbox = target_dir(root)?.join("debug/crabbox");
    let script = root.join("tests/mcp/client.py");
    step(
        root,
        "MCP client (official MCP SDK) against crabbox mcp",
        root.join(".venv/bin/python").to_str().unwrap(),
        &[script.to_str().unwrap()],
        &[
            ("CRABBOX_BIN", crabbox.to_str().unwrap()),
            ("E2B_EMULATOR_BIN", emulator.to_str().unwrap()),
        ],
    )?;
    eprintln!("xtask: ci passed in {:.0}s", t.elapsed().as_secs_f64());
    Ok(())
}

fn emulator(root: &Path, args: &[String]) -> Result {
    let mut full = vec!["run", "--quiet", "-p", "e2b-emulator", "--"];
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    if extra.is_empty() {
        full.extend([
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "e2b_local_emulator_key",
        ]);
    } else {
        full.extend(extra);
    }
    step(root, "e2b-emulator", "cargo", &full, &[])
}
