//! Linux-namespace isolation of sandboxes.
//!
//! Every sandbox gets one long-lived bubblewrap "init" that owns a private pid,
//! mount, uts and ipc namespace. Inside it, the host's file system is mounted
//! read-only, except per-sandbox host directories bound over `/home`, `/root` and
//! `/tmp`, and a generated `/etc/passwd` and `/etc/group` that know `root` (uid 0)
//! and `user` (uid 1000, home `/home/user`). Commands enter those namespaces with
//! `nsenter`, which also drops to the selected user (and its supplementary groups), so
//! background processes
//! outlive the command that started them (as in a real sandbox), and killing the
//! init tears down everything the sandbox ran.
//!
//! Needs, on the host: root, and the `bubblewrap` and `util-linux` packages
//! (`bwrap`, `nsenter`). There is no non-isolated fallback.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A user that exists in every sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'static str,
}

/// E2B templates' default user.
pub const USER: SandboxUser = SandboxUser {
    name: "user",
    uid: 1000,
    gid: 1000,
    home: "/home/user",
};

pub const ROOT: SandboxUser = SandboxUser {
    name: "root",
    uid: 0,
    gid: 0,
    home: "/root",
};

impl SandboxUser {
    pub fn by_name(name: &str) -> Option<SandboxUser> {
        match name {
            "user" => Some(USER),
            "root" => Some(ROOT),
            _ => None,
        }
    }

    /// The name of a host uid as seen inside a sandbox.
    pub fn name_of_uid(uid: u32) -> String {
        match uid {
            0 => "root".into(),
            1000 => "user".into(),
            65534 => "nobody".into(),
            other => other.to_string(),
        }
    }

    pub fn name_of_gid(gid: u32) -> String {
        match gid {
            0 => "root".into(),
            1000 => "user".into(),
            65534 => "nogroup".into(),
            other => other.to_string(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
user:x:1000:1000:user:/home/user:/bin/bash\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

const GROUP: &str = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n";

/// Why sandboxes cannot be isolated on this host.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "`{tool}` was not found on PATH; the emulator isolates sandboxes with Linux \
         namespaces and needs it: install it with `apt-get install {package}`"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "the emulator must run as root (uid 0) to give each sandbox its own namespaces \
         and users; it is running as uid {0}"
    )]
    NotRoot(u32),
    #[error(
        "bubblewrap could not create namespaces ({0}); the kernel or container refuses \
         them: run the emulator as root on a host or privileged container that allows \
         user/pid/mount namespaces, with bubblewrap installed (`apt-get install bubblewrap`)"
    )]
    NamespacesRefused(String),
    #[error("could not prepare the sandbox directory {path}: {source}")]
    Layout { path: PathBuf, source: io::Error },
    #[error("could not start the sandbox namespace: {0}")]
    Start(String),
}

/// Host tools the isolation uses, located once.
#[derive(Debug, Clone)]
pub struct HostTools {
    pub bwrap: PathBuf,
    pub nsenter: PathBuf,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| {
        OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    });
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

impl HostTools {
    /// Locates the tools and proves the kernel lets bubblewrap make namespaces.
    ///
    /// Blocks while a short bubblewrap probe runs; from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn check() -> Result<HostTools, IsolationError> {
        let bwrap = find_on_path("bwrap").ok_or(IsolationError::MissingTool {
            tool: "bwrap",
            package: "bubblewrap",
        })?;
        let nsenter = find_on_path("nsenter").ok_or(IsolationError::MissingTool {
            tool: "nsenter",
            package: "util-linux",
        })?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(IsolationError::NotRoot(euid));
        }
        let probe = std::process::Command::new(&bwrap)
            .args([
                "--unshare-pid",
                "--unshare-uts",
                "--unshare-ipc",
                "--unshare-net",
                "--ro-bind",
                "/",
                "/",
                "--proc",
                "/proc",
                "--",
                "/bin/true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| IsolationError::NamespacesRefused(format!("running bwrap: {e}")))?;
        if !probe.status.success() {
            let stderr = String::from_utf8_lossy(&probe.stderr).trim().to_string();
            return Err(IsolationError::NamespacesRefused(format!(
                "bwrap exited with {}: {stderr}",
                probe.status
            )));
        }
        Ok(HostTools { bwrap, nsenter })
    }
}

/// A sandbox's host directories.
#[derive(Debug, Clone)]
pub struct SandboxLayout {
    pub root: PathBuf,
}

impl SandboxLayout {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    pub fn root_home(&self) -> PathBuf {
        self.root.join("root")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn passwd(&self) -> PathBuf {
        self.root.join("etc/passwd")
    }

    pub fn group(&self) -> PathBuf {
        self.root.join("etc/group")
    }

    /// Creates the directories with the owners and modes of a real sandbox.
    pub fn create(&self) -> Result<(), IsolationError> {
        let layout_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IsolationError::Layout { path, source }
        };
        let user_home = self.home().join("user");
        for (dir, mode, owner) in [
            (self.home(), 0o755, (0, 0)),
            (user_home.clone(), 0o755, (USER.uid, USER.gid)),
            (self.root_home(), 0o700, (0, 0)),
            (self.tmp(), 0o1777, (0, 0)),
            (self.root.join("etc"), 0o755, (0, 0)),
        ] {
            fs::create_dir_all(&dir).map_err(layout_err(&dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(layout_err(&dir))?;
            chown(&dir, Some(owner.0), Some(owner.1)).map_err(layout_err(&dir))?;
        }
        fs::write(self.passwd(), PASSWD).map_err(layout_err(&self.passwd()))?;
        fs::write(self.group(), GROUP).map_err(layout_err(&self.group()))?;
        Ok(())
    }
}

/// The per-sandbox namespaces, held open by a bubblewrap init.
#[derive(Debug)]
pub struct SandboxNamespace {
    outer: tokio::process::Child,
    /// Host pid of the namespace's pid 1; the `nsenter` target.
    init_pid: u32,
    pid_ns: Option<PathBuf>,
}

impl SandboxNamespace {
    /// Starts the namespace for `layout` and waits until its mounts are in place.
    pub async fn start(
        tools: &HostTools,
        layout: &SandboxLayout,
        hostname: &str,
    ) -> Result<SandboxNamespace, IsolationError> {
        let path_arg = |p: PathBuf| p.into_os_string();
        let mut cmd = std::process::Command::new(&tools.bwrap);
        cmd.args([
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-ipc",
            // Its own network, so two sandboxes can listen on one port; the emulator
            // reaches a port through `connect_port`.
            "--unshare-net",
        ])
        .args(["--hostname", hostname])
        .args(["--ro-bind", "/", "/"])
        .args(["--dev-bind", "/dev", "/dev"])
        .args(["--proc", "/proc"])
        .arg("--bind")
        .arg(path_arg(layout.home()))
        .arg("/home")
        .arg("--bind")
        .arg(path_arg(layout.root_home()))
        .arg("/root")
        .arg("--bind")
        .arg(path_arg(layout.tmp()))
        .arg("/tmp")
        .arg("--ro-bind")
        .arg(path_arg(layout.passwd()))
        .arg("/etc/passwd")
        .arg("--ro-bind")
        .arg(path_arg(layout.group()))
        .arg("/etc/group")
        .args(["--", "/bin/sh", "-c", "echo ready; exec sleep infinity"])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut outer = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| IsolationError::Start(format!("spawning bwrap: {e}")))?;
        let outer_pid = outer.id().unwrap_or(0);
        let stdout = outer.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.trim() == "ready" => {}
            other => {
                let _ = outer.start_kill();
                let mut stderr = String::new();
                if let Some(mut err) = outer.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        err.read_to_string(&mut stderr),
                    )
                    .await;
                }
                return Err(IsolationError::Start(format!(
                    "bwrap did not come up ({other:?}): {}",
                    stderr.trim()
                )));
            }
        }
        let init_pid = proc_children(outer_pid).into_iter().next().ok_or_else(|| {
            IsolationError::Start(format!("bwrap (pid {outer_pid}) has no namespace init"))
        })?;
        let pid_ns = fs::read_link(format!("/proc/{init_pid}/ns/pid")).ok();
        Ok(SandboxNamespace {
            outer,
            init_pid,
            pid_ns,
        })
    }

    /// A command that runs `program args` inside the sandbox as `user` in `cwd`,
    /// with exactly the environment `envs`. `nsenter` sets the user itself (`--setgid` drops
    /// the supplementary groups): one program started before the command, not two.
    pub fn command(
        &self,
        tools: &HostTools,
        user: SandboxUser,
        cwd: &str,
        envs: &[(String, String)],
        program: &str,
        args: &[String],
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(&tools.nsenter);
        cmd.arg(format!("--target={}", self.init_pid))
            .args(["--mount", "--pid", "--uts", "--ipc", "--net"])
            .arg(format!("--wdns={cwd}"))
            .arg(format!("--setuid={}", user.uid))
            .arg(format!("--setgid={}", user.gid))
            .arg("--")
            .arg(program)
            .args(args)
            .env_clear();
        for (key, value) in envs {
            cmd.env(key, value);
        }
        cmd
    }

    /// The sandbox's network namespace, for [`connect_in_netns`].
    pub fn netns(&self) -> io::Result<fs::File> {
        fs::File::open(format!("/proc/{}/ns/net", self.init_pid))
    }

    /// Host pids of every process inside the sandbox's pid namespace.
    pub fn members(&self) -> Vec<i32> {
        let Some(ns) = &self.pid_ns else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for pid in all_pids() {
            if let Ok(link) = fs::read_link(format!("/proc/{pid}/ns/pid")) {
                if &link == ns {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Sends `signal` to every process in the sandbox (used to pause and resume).
    pub fn signal_all(&self, signal: i32) {
        for pid in self.members() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Kills everything the sandbox runs: the init's death tears the namespace down.
    pub async fn kill(&mut self) {
        self.signal_all(libc::SIGKILL);
        let _ = self.outer.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.outer.wait()).await;
    }
}

/// A TCP connection to `port` on the loopback of network namespace `netns`, made on a
/// thread of its own that exits after, so no other thread of the emulator changes
/// namespace (the socket stays in the namespace it was made in). Blocks for up to five
/// seconds.
pub fn connect_in_netns(netns: fs::File, port: u16) -> io::Result<std::net::TcpStream> {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it changes only this thread.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .join()
    .map_err(|_| io::Error::other("the connecting thread panicked"))?
}

/// Fields of `/proc/<pid>/stat` the emulator needs.
#[derive(Debug, Clone)]
pub struct ProcStat {
    pub comm: String,
    pub ppid: i32,
    pub session: i32,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] = state, [1] = ppid, [2] = pgrp, [3] = session
    Some(ProcStat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
    })
}

pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Host pids of the children of `parent`: from `/proc/<pid>/task/<pid>/children`
/// when the kernel has it, else by scanning every process's parent.
pub fn proc_children_of(parent: u32) -> Vec<u32> {
    match fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect(),
        Err(_) => proc_children(parent),
    }
}

/// The pid of host process `host_pid` as seen in its own (innermost) pid
/// namespace: the last field of `NSpid:` in `/proc/<pid>/status`.
pub fn pid_in_namespace(host_pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn proc_children(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.ppid == parent as i32))
        .map(|pid| pid as u32)
        .collect()
}

/// Host pids of the processes in session `sid`, the session a command's
/// `nsenter` leads.
pub fn session_members(sid: i32) -> Vec<(i32, ProcStat)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| proc_stat(pid).map(|s| (pid, s)))
        .filter(|(_, s)| s.session == sid)
        .collect()
}
