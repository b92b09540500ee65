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

/// A running `e2b-emulator` process (the sibling binary in the target directory), killed on drop.
pub struct Emulator {
    child: std::process::Child,
    pub api_url: String,
    pub sandbox_url: String,
    pub key: String,
}

impl Emulator {
    /// Starts the emulator binary, or returns `None` (the reason printed) when this host cannot
    /// run it: tests return early on `None` (see `e2b_emulator::available_or_skip`).
    pub fn start() -> Option<Self> {
        use std::io::BufRead;
        if !e2b_emulator::available_or_skip() {
            return None;
        }
        let bin = Path::new(env!("CARGO_BIN_EXE_crabbox")).with_file_name("e2b-emulator");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build -p e2b-emulator; cargo xtask ci does)",
            bin.display()
        );
        let key = format!("e2b_{}", "0123456789abcdef0123456789abcdef01234567");
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--api-key", &key])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("emulator starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("emulator said {line:?}: {e}"));
        Some(Self {
            child,
            api_url: v["api_url"].as_str().unwrap().to_string(),
            sandbox_url: v["sandbox_url"].as_str().unwrap().to_string(),
            key,
        })
    }

    /// A test sandbox whose environment points crabbox at this emulator.
    pub fn sandbox(&self) -> Sandbox {
        Sandbox::new()
            .with_env("E2B_API_KEY", &self.key)
            .with_env("E2B_API_URL", &self.api_url)
            .with_env("E2B_SANDBOX_URL", &self.sandbox_url)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: signalling our own child so it can kill its sandboxes.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 5 s for every process mentioning `needle` to be gone (a killed process may take
/// a moment to exit on a busy machine); returns the ones still there.
pub fn survivors_after_grace(needle: &str) -> Vec<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The environment a box command printed with `env -0`, as name -> value.
pub fn env_of(o: &Output) -> std::collections::BTreeMap<String, String> {
    o.stdout
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Panics unless `o` exited 0; prints only stderr, for commands whose stdout may hold
/// values a test must not print (an environment dump).
pub fn ok_quiet(o: &Output) {
    assert_eq!(code(o), 0, "stderr: {}", stderr(o));
}

/// One HTTP/1.1 request to a loopback address, answered whole: (status, body).
pub fn http(base: &str, method: &str, path: &str, key: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr).expect("the emulator answers");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    )
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

impl Emulator {
    /// Arms faults (a JSON array, see `e2b_emulator::faults`).
    pub fn arm(&self, faults: serde_json::Value) {
        let (status, body) = http(
            &self.api_url,
            "POST",
            "/_emulator/faults",
            &self.key,
            &faults.to_string(),
        );
        assert_eq!(status, 204, "arming faults: {body}");
    }

    /// The faults armed since the last clear, each with how often it fired.
    pub fn faults(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(&self.api_url, "GET", "/_emulator/faults", &self.key, "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn clear_faults(&self) {
        let (status, body) = http(&self.api_url, "DELETE", "/_emulator/faults", &self.key, "");
        assert_eq!(status, 204, "{body}");
    }

    /// Every sandbox the emulator runs, as its list route answers (ids).
    pub fn sandbox_ids(&self) -> Vec<String> {
        let (status, body) = http(&self.api_url, "GET", "/v2/sandboxes", &self.key, "");
        assert_eq!(status, 200, "{body}");
        let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        listed
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_string())
            .collect()
    }

    /// Kills a sandbox behind crabbox's back.
    pub fn kill_sandbox(&self, id: &str) {
        let (status, body) = http(
            &self.api_url,
            "DELETE",
            &format!("/sandboxes/{id}"),
            &self.key,
            "",
        );
        assert!(status == 204 || status == 404, "{status}: {body}");
    }
}

/// Panics if the key, or its part after `e2b_`, is in any of `texts` or any file under
/// `dir` (claims, locks, spools, whatever crabbox left).
pub fn assert_no_secret(key: &str, texts: &[&str], dir: &Path) {
    let tail = key.trim_start_matches("e2b_");
    for text in texts {
        assert!(!text.contains(tail), "the key leaked: {text}");
    }
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            let leaked = bytes.windows(tail.len()).any(|w| w == tail.as_bytes());
            assert!(!leaked, "the key is in {}", p.display());
        }
    }
}

/// Local boxes of a test machine (box directories, not their dot-files).
pub fn local_box_count(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.state.join("crabbox/boxes"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// E2B boxes `crabbox list` shows for a test machine.
pub fn e2b_box_count(sb: &Sandbox) -> usize {
    let out = ok(sb.run(&["list", "--provider", "e2b", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}
