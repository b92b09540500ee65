//! Processes the bench runs: crabbox with its wall time and peak memory, and the emulator.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Result;

/// A finished process: what it printed, how long it took, how much memory it held.
pub struct Measured {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub wall_ms: f64,
    /// Peak resident set of the process or of the largest process it waited for (the
    /// `ru_maxrss` `wait4` reports, as `/usr/bin/time -f %M` does), in KiB.
    pub max_rss_kib: u64,
    /// Peak resident set of the process itself (its `VmHWM`, read every 10 ms while it ran),
    /// in KiB; 0 if it ended before the first reading.
    pub own_rss_kib: u64,
}

/// `VmHWM` of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Reads a process's `VmHWM` until told to stop; returns the highest reading.
fn sample_hwm(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(v) = vm_hwm_kib(pid) {
                peak = peak.max(v);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

impl Measured {
    pub fn ok(self, what: &str) -> Result<Self> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(format!(
                "{what} exited {}: {}",
                self.code,
                self.stderr.trim_end()
            ))
        }
    }
}

/// Runs `cmd` to completion (stdin closed, output captured), reaping it with `wait4` for its
/// resource usage.
pub fn measure(mut cmd: Command) -> Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).map(|_| v)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_hwm(child.id(), stop.clone());
    let mut stderr = Vec::new();
    let read_err = err.read_to_end(&mut stderr);
    let stdout = reader.join().expect("reader thread");
    let pid = child.id() as libc::pid_t;
    // Wait for the exit without reaping, so the sampler never reads a recycled pid.
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child; WNOWAIT leaves it to be reaped below.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("waiting for {:?}: {e}", cmd.get_program()));
        }
    }
    // Timed at the exit, not after the sampler's join (it sleeps 10 ms between readings).
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    stop.store(true, Ordering::Relaxed);
    let own_rss_kib = sampler.join().expect("sampler thread");
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, which std has not reaped (we never called wait).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("waiting for {:?}: {e}", cmd.get_program()));
        }
    }
    read_err.map_err(|e| e.to_string())?;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Measured {
        code,
        stdout: stdout.map_err(|e| e.to_string())?,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        wall_ms,
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
        own_rss_kib,
    })
}

/// Writes dirty pages out before a timed step, so no step pays for the previous one's writes.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// A shell pipeline run in `dir`, timed.
pub fn shell(dir: &Path, script: &str) -> Result<Measured> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]).current_dir(dir);
    measure(cmd)?.ok(script)
}

/// The crabbox binary with a private state and config directory and a scrubbed environment:
/// nothing of the caller's crabbox or E2B settings (or credentials) reaches it.
pub struct Crabbox {
    pub bin: PathBuf,
    pub repo: PathBuf,
    pub home: PathBuf,
    pub env: Vec<(String, String)>,
}

/// One `crabbox run --timing-json`: the measured process and its timing line.
pub struct Timed {
    pub run: Measured,
    pub timing: serde_json::Value,
}

impl Timed {
    pub fn ms(&self, key: &str) -> f64 {
        self.timing[key].as_f64().unwrap_or(0.0)
    }
    pub fn sync(&self, key: &str) -> f64 {
        self.timing["sync"][key].as_f64().unwrap_or(0.0)
    }
}

impl Crabbox {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).current_dir(&self.repo).env_clear();
        for k in ["PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR"] {
            if let Some(v) = std::env::var_os(k) {
                c.env(k, v);
            }
        }
        c.env("XDG_STATE_HOME", self.home.join("state"))
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs crabbox; a non-zero exit is an error.
    pub fn run(&self, args: &[&str]) -> Result<Measured> {
        measure(self.command(args))?.ok(&format!("crabbox {}", args.join(" ")))
    }

    /// Runs `crabbox run --timing-json <args>` and parses the timing line.
    pub fn timed(&self, args: &[&str]) -> Result<Timed> {
        let mut full = vec!["run", "--timing-json"];
        full.extend_from_slice(args);
        let run = self.run(&full)?;
        let line = run
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| format!("crabbox {full:?} printed no timing line"))?;
        let timing = serde_json::from_str(line)
            .map_err(|e| format!("crabbox's timing line {line:?}: {e}"))?;
        Ok(Timed { run, timing })
    }

    /// `crabbox warmup`: a lease id.
    pub fn warmup(&self) -> Result<String> {
        let out = self.run(&["warmup"])?;
        let lease = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if lease.is_empty() {
            return Err("crabbox warmup printed no lease id".into());
        }
        Ok(lease)
    }

    pub fn stop(&self, lease: &str) -> Result {
        self.run(&["stop", lease]).map(drop)
    }

    /// `crabbox status --json` of a lease.
    pub fn status(&self, lease: &str) -> Result<serde_json::Value> {
        let out = self.run(&["status", "--id", lease, "--json"])?;
        serde_json::from_slice(&out.stdout).map_err(|e| format!("crabbox status --json: {e}"))
    }
}

/// The emulator binary, running until dropped (SIGTERM, so it removes its sandboxes).
pub struct Emulator {
    child: Child,
    pub api_url: String,
    pub sandbox_url: String,
    pub key: String,
    /// Its sandboxes' files are in memory (see [`memory_dir`]).
    pub in_memory: bool,
    /// Where its sandboxes' files live, removed after the emulator.
    _state: Option<tempfile::TempDir>,
}

impl Emulator {
    pub fn start(bin: &Path, log: &Path) -> Result<Self> {
        let key = "e2b_bench0123456789abcdef0123456789abcdef".to_string();
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let state = memory_dir();
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--api-key", &key]);
        if let Some(dir) = &state {
            cmd.arg("--state-dir").arg(dir.path());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        let ready: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let Some(ready) = ready.filter(|_| read.is_ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("the emulator did not start: {}", said.trim()));
        };
        let get = |k: &str| ready[k].as_str().map(String::from);
        let (Some(api_url), Some(sandbox_url)) = (get("api_url"), get("sandbox_url")) else {
            return Err(format!("the emulator's ready line {line:?} lacks its URLs"));
        };
        Ok(Self {
            child,
            api_url,
            sandbox_url,
            key,
            in_memory: state.is_some(),
            _state: state,
        })
    }

    /// Environment pointing crabbox at this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CRABBOX_PROVIDER".into(), "e2b".into()),
            ("E2B_API_KEY".into(), self.key.clone()),
            ("CRABBOX_E2B_API_URL".into(), self.api_url.clone()),
            ("CRABBOX_E2B_SANDBOX_URL".into(), self.sandbox_url.clone()),
        ]
    }

    /// A sandbox's envd access token, from the control plane.
    pub fn envd_token(&self, sandbox_id: &str) -> Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "-f", "-H"])
            .arg(format!("X-API-Key: {}", self.key))
            .arg(format!("{}/sandboxes/{sandbox_id}", self.api_url))
            .output()
            .map_err(|e| format!("running curl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "GET /sandboxes/{sandbox_id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("GET /sandboxes/{sandbox_id}: {e}"))?;
        v["envdAccessToken"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("GET /sandboxes/{sandbox_id} carries no envdAccessToken"))
    }

    /// A `curl` uploading `file` to `path` on the sandbox through envd's `POST /files`
    /// (multipart field `file`), as crabbox uploads its archives.
    pub fn upload_command(
        &self,
        sandbox_id: &str,
        token: &str,
        file: &Path,
        path: &str,
    ) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "-f", "-o", "/dev/null"])
            .arg("-H")
            .arg(format!("E2b-Sandbox-Id: {sandbox_id}"))
            .arg("-H")
            .arg("E2b-Sandbox-Port: 49983")
            .arg("-H")
            .arg(format!("X-Access-Token: {token}"))
            .arg("-F")
            .arg(format!(
                "file=@{};type=application/octet-stream",
                file.display()
            ))
            .arg(format!(
                "{}/files?path={path}&username=user",
                self.sandbox_url
            ));
        c
    }
}

/// A directory in memory (`/dev/shm`) for the emulator's sandboxes, where it has room. A real
/// box's disk is fresh; this machine's disk, after a bench's repeated extraction and removal
/// of tens of thousands of files, spends seconds per extraction searching for free inodes
/// (ext4's `recently_deleted`), which would drown both sides' figures in the host's noise.
fn memory_dir() -> Option<tempfile::TempDir> {
    const ROOM: u64 = 8 << 30;
    let shm = Path::new("/dev/shm");
    // SAFETY: statvfs on a NUL-terminated path into a zeroed struct.
    let free = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c"/dev/shm".as_ptr(), &mut st) == 0)
            .then(|| st.f_bavail as u64 * st.f_frsize as u64)
    };
    if free? < ROOM {
        return None;
    }
    tempfile::Builder::new()
        .prefix("crabbox-bench-emulator-")
        .tempdir_in(shm)
        .ok()
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: signalling our own child so it can remove its sandboxes.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
