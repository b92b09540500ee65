//! Helpers for end-to-end tests: run the real `crabbox` binary in a temporary git repository
//! with private state and config directories and a scrubbed environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[allow(unused_imports)]
pub use crabbox_core::conformance::{git, RepoFixture};

/// One isolated crabbox "machine": its own state dir, config dir and repository.
pub struct Sandbox {
    _home: tempfile::TempDir,
    pub state: PathBuf,
    pub config: PathBuf,
    pub repo: RepoFixture,
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let state = home.path().join("state");
        let config = home.path().join("config");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&config).unwrap();
        Self {
            state,
            config,
            repo: RepoFixture::new(),
            _home: home,
            env: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.repo.root()
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// A `crabbox` command in the repository with only the environment this test set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_crabbox"));
        c.args(args).current_dir(self.root()).env_clear();
        for k in ["PATH", "HOME", "USER", "LANG", "TERM"] {
            if let Ok(v) = std::env::var(k) {
                c.env(k, v);
            }
        }
        c.env("XDG_STATE_HOME", &self.state)
            .env("XDG_CONFIG_HOME", &self.config)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("crabbox runs")
    }

    pub fn claims_dir(&self) -> PathBuf {
        self.state.join("crabbox/claims")
    }

    /// Parsed claim files.
    pub fn claims(&self) -> Vec<serde_json::Value> {
        let Ok(rd) = std::fs::read_dir(self.claims_dir()) else {
            return vec![];
        };
        let mut out = Vec::new();
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(
                    serde_json::from_slice(&std::fs::read(&p).unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
                );
            }
        }
        out
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert_eq!(
        code(&o),
        0,
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Processes on this machine whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}
