//! Processes running inside sandboxes: spawning, output fan-out, input, signals.
//!
//! Every process is an `nsenter` (leading its own session) that enters the
//! sandbox's namespaces and forks the command, which runs as the selected user.
//! Like real envd, the emulator reports the command's pid as seen inside the
//! sandbox's pid namespace, and `SendSignal` and the `Connect-Timeout-Ms`
//! deadline signal exactly that process, never its children: a background child
//! of a killed command goes on running until the sandbox dies. Output is read
//! as it is produced and fanned out, chunk by chunk, to every attached stream; a
//! stream that goes away detaches without touching the process.

use crate::isolation::{pid_in_namespace, proc_children_of, session_members, SandboxUser};
use crabbox_e2b_wire::process::{
    signal_name, DataEvent, EndEvent, ProcessConfig, ProcessInfo, PtySize, EXIT_STATUS_PREFIX,
    SIGNAL_STATUS_PREFIX,
};
use crabbox_e2b_wire::{Code, ConnectError};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Default `PATH` of sandbox processes.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const READ_CHUNK: usize = 32 * 1024;
/// How long output readers may keep going after the process exited: long enough
/// to drain the pipes, short enough that a background child holding the pipe
/// open does not hold up the end of the command.
const DRAIN_GRACE: Duration = Duration::from_millis(300);
/// How long `nsenter` may take to fork the command before the emulator stops
/// looking for it (and falls back to signalling `nsenter` itself).
const FORK_WAIT: Duration = Duration::from_secs(2);

/// What an attached stream receives.
#[derive(Debug, Clone)]
pub enum OutputEvent {
    Data(DataEvent),
    End(EndEvent),
}

enum InputSink {
    Pipe(tokio::process::ChildStdin),
    Pty(tokio::fs::File),
}

#[derive(Default)]
struct Fanout {
    subscribers: Vec<mpsc::UnboundedSender<OutputEvent>>,
    end: Option<EndEvent>,
}

/// The command process itself, on the host: the `nsenter` leader's child.
struct CommandProcess {
    host_pid: i32,
    /// Pins the process, so that a signal never reaches a recycled pid.
    pidfd: Option<OwnedFd>,
}

impl CommandProcess {
    fn find(leader: u32) -> Option<CommandProcess> {
        let host_pid = *proc_children_of(leader).first()? as i32;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, host_pid, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: a fresh descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd as i32) }
        });
        Some(CommandProcess { host_pid, pidfd })
    }

    fn signal(&self, signal: i32) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: fd is an open pidfd; info may be null.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                return;
            }
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.host_pid, signal);
        }
    }
}

/// One process started through `process.Process/Start`.
pub struct ProcessHandle {
    /// The command's pid inside the sandbox (what envd reports).
    pub pid: u32,
    /// Host pid of the `nsenter` that leads the command's session.
    leader: u32,
    command: Option<CommandProcess>,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    input: tokio::sync::Mutex<Option<InputSink>>,
    pty_master: Option<OwnedFd>,
    fanout: Mutex<Fanout>,
    last_signal: AtomicI32,
}

impl ProcessHandle {
    /// Attaches a new stream; output produced before this call is not replayed.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<OutputEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut fanout = self.fanout.lock().expect("fanout lock");
        match &fanout.end {
            Some(end) => {
                let _ = tx.send(OutputEvent::End(end.clone()));
            }
            None => fanout.subscribers.push(tx),
        }
        rx
    }

    fn publish(&self, event: OutputEvent) {
        let mut fanout = self.fanout.lock().expect("fanout lock");
        if fanout.end.is_some() {
            return;
        }
        if let OutputEvent::End(end) = &event {
            fanout.end = Some(end.clone());
        }
        fanout
            .subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        if fanout.end.is_some() {
            fanout.subscribers.clear();
        }
    }

    pub fn has_ended(&self) -> bool {
        self.fanout.lock().expect("fanout lock").end.is_some()
    }

    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: self.tag.clone(),
        }
    }

    /// Delivers `signal` to the command process only, as envd does: what the
    /// command started (a pipeline's other members, background jobs) is not
    /// signalled. The `nsenter` leader reports the command's fate when it ends.
    pub fn signal(&self, signal: i32) {
        if self.has_ended() {
            return;
        }
        self.last_signal.store(signal, Ordering::SeqCst);
        match &self.command {
            Some(command) => command.signal(signal),
            // The command was never seen (it ended at once, or nsenter failed).
            // SAFETY: kill has no memory-safety preconditions.
            None => unsafe {
                libc::kill(self.leader as i32, signal);
            },
        }
    }

    /// SIGKILLs the command's whole session, the `nsenter` leader included (the
    /// sandbox is being killed; what left the session dies with the namespace).
    pub fn kill_session(&self) {
        if self.has_ended() {
            return;
        }
        self.last_signal.store(libc::SIGKILL, Ordering::SeqCst);
        let sid = self.leader as i32;
        for (pid, _) in session_members(sid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(sid, libc::SIGKILL);
        }
    }

    /// Writes to the process's stdin or PTY.
    pub async fn write_input(&self, bytes: &[u8], to_pty: bool) -> Result<(), ConnectError> {
        let mut input = self.input.lock().await;
        let result = match input.as_mut() {
            Some(InputSink::Pipe(stdin)) if !to_pty => stdin.write_all(bytes).await,
            Some(InputSink::Pty(master)) if to_pty => match master.write_all(bytes).await {
                Ok(()) => master.flush().await,
                Err(e) => Err(e),
            },
            Some(_) if to_pty => {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!("process {} has no PTY", self.pid),
                ))
            }
            Some(_) => {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!("process {} runs in a PTY: send input to `pty`", self.pid),
                ))
            }
            None => {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!(
                        "stdin of process {} is closed or was not requested (start it with stdin: true)",
                        self.pid
                    ),
                ))
            }
        };
        result.map_err(|e| {
            ConnectError::new(
                Code::Internal,
                format!("writing to process {}: {e}", self.pid),
            )
        })
    }

    /// Closes stdin so the process reads EOF.
    pub async fn close_stdin(&self) -> Result<(), ConnectError> {
        let mut input = self.input.lock().await;
        match input.as_ref() {
            Some(InputSink::Pty(_)) => Err(ConnectError::new(
                Code::FailedPrecondition,
                "closing stdin is not supported for PTY processes; send Ctrl+D (0x04) instead",
            )),
            _ => {
                *input = None;
                Ok(())
            }
        }
    }

    /// Resizes the process's PTY.
    pub fn resize(&self, size: PtySize) -> Result<(), ConnectError> {
        let Some(master) = &self.pty_master else {
            return Err(ConnectError::new(
                Code::FailedPrecondition,
                format!("process {} has no PTY", self.pid),
            ));
        };
        set_window_size(master.as_raw_fd(), size);
        Ok(())
    }
}

fn set_window_size(fd: i32, size: PtySize) {
    let winsize = libc::winsize {
        ws_row: size.rows.clamp(1, u16::MAX as u32) as u16,
        ws_col: size.cols.clamp(1, u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is an open PTY master; winsize outlives the call.
    unsafe {
        libc::ioctl(fd, libc::TIOCSWINSZ, &winsize);
    }
}

/// The processes of one sandbox, by pid.
#[derive(Default)]
pub struct ProcessTable {
    processes: Mutex<BTreeMap<u32, Arc<ProcessHandle>>>,
}

impl ProcessTable {
    pub fn get(&self, pid: u32) -> Option<Arc<ProcessHandle>> {
        self.processes
            .lock()
            .expect("process table")
            .get(&pid)
            .cloned()
    }

    pub fn by_tag(&self, tag: &str) -> Option<Arc<ProcessHandle>> {
        self.processes
            .lock()
            .expect("process table")
            .values()
            .find(|p| p.tag.as_deref() == Some(tag))
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<ProcessHandle>> {
        self.processes
            .lock()
            .expect("process table")
            .values()
            .filter(|p| !p.has_ended())
            .cloned()
            .collect()
    }

    fn insert(&self, handle: Arc<ProcessHandle>) {
        self.processes
            .lock()
            .expect("process table")
            .insert(handle.pid, handle);
    }

    fn remove(&self, handle: &Arc<ProcessHandle>) {
        let mut processes = self.processes.lock().expect("process table");
        if processes
            .get(&handle.pid)
            .is_some_and(|p| Arc::ptr_eq(p, handle))
        {
            processes.remove(&handle.pid);
        }
    }

    /// SIGKILLs every process and its session (used when the sandbox is killed).
    pub fn kill_all(&self) {
        for process in self.list() {
            process.kill_session();
        }
    }
}

/// Everything needed to start one process.
pub struct SpawnSpec {
    pub user: SandboxUser,
    /// Absolute working directory inside the sandbox.
    pub cwd: String,
    /// The full environment, in order of precedence (later wins).
    pub envs: Vec<(String, String)>,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    pub stdin: bool,
    pub pty: Option<PtySize>,
    /// `Connect-Timeout-Ms` of the Start request: SIGKILL at this deadline.
    pub deadline: Option<Duration>,
}

fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let winsize = libc::winsize {
        ws_row: if size.rows == 0 { 24 } else { size.rows as u16 },
        ws_col: if size.cols == 0 { 80 } else { size.cols as u16 },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers are valid; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &winsize,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fd is open; the child gets the slave only through dup2 on stdio.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok((master, slave))
}

/// Waits until the `nsenter` leader has forked the command, and returns it with
/// its pid inside the sandbox. `None` when the leader exited first (the command
/// ended at once, or could not be started) or took implausibly long.
async fn find_command(
    leader: u32,
    child: &mut tokio::process::Child,
) -> Option<(CommandProcess, u32)> {
    let until = Instant::now() + FORK_WAIT;
    loop {
        if let Some(command) = CommandProcess::find(leader) {
            let pid = pid_in_namespace(command.host_pid)?;
            return Some((command, pid));
        }
        if !matches!(child.try_wait(), Ok(None)) || Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts `cmd` (an `nsenter` into the sandbox, from
/// [`crate::isolation::SandboxNamespace::command`]) and returns the process with
/// a stream already attached, so the caller sees all of its output.
pub async fn spawn(
    table: &Arc<ProcessTable>,
    mut cmd: std::process::Command,
    spec: SpawnSpec,
) -> Result<(Arc<ProcessHandle>, mpsc::UnboundedReceiver<OutputEvent>), ConnectError> {
    let pty = match spec.pty {
        Some(size) => Some(
            open_pty(size)
                .map_err(|e| ConnectError::new(Code::Internal, format!("allocating a PTY: {e}")))?,
        ),
        None => None,
    };
    match &pty {
        Some((_, slave)) => {
            let stdio = |fd: &OwnedFd| -> Result<Stdio, ConnectError> {
                fd.try_clone().map(Stdio::from).map_err(|e| {
                    ConnectError::new(Code::Internal, format!("duplicating the PTY: {e}"))
                })
            };
            cmd.stdin(stdio(slave)?)
                .stdout(stdio(slave)?)
                .stderr(stdio(slave)?);
        }
        None => {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
    }
    let with_tty = pty.is_some();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if with_tty {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd).spawn().map_err(|e| {
        ConnectError::new(
            Code::Internal,
            format!("starting '{}': {e}", spec.config.cmd),
        )
    })?;
    let leader = child.id().unwrap_or(0);
    let (command, pid) = match find_command(leader, &mut child).await {
        Some((command, pid)) => (Some(command), pid),
        None => (None, leader),
    };

    let (input, pty_master, pty_reader) = match pty {
        Some((master, slave)) => {
            drop(slave);
            let reader = master.try_clone().map(std::fs::File::from);
            let writer = master.try_clone().map(std::fs::File::from);
            let (Ok(reader), Ok(writer)) = (reader, writer) else {
                let _ = child.start_kill();
                return Err(ConnectError::new(
                    Code::Internal,
                    "duplicating the PTY master",
                ));
            };
            (
                Some(InputSink::Pty(tokio::fs::File::from_std(writer))),
                Some(master),
                Some(reader),
            )
        }
        None => (child.stdin.take().map(InputSink::Pipe), None, None),
    };

    let handle = Arc::new(ProcessHandle {
        pid,
        leader,
        command,
        config: spec.config,
        tag: spec.tag,
        input: tokio::sync::Mutex::new(input),
        pty_master,
        fanout: Mutex::new(Fanout::default()),
        last_signal: AtomicI32::new(0),
    });
    let first_stream = handle.subscribe();
    table.insert(handle.clone());

    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(spawn_pipe_reader(stdout, handle.clone(), DataEvent::Stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(spawn_pipe_reader(stderr, handle.clone(), DataEvent::Stderr));
    }
    if let Some(reader) = pty_reader {
        let handle = handle.clone();
        readers.push(tokio::task::spawn_blocking(move || {
            read_pty(reader, handle)
        }));
    }

    if let Some(deadline) = spec.deadline {
        let handle = handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            handle.signal(libc::SIGKILL);
        });
    }

    let table = table.clone();
    let waiter = handle.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let drained = futures::future::join_all(readers.iter_mut());
        if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
            for reader in &readers {
                reader.abort();
            }
        }
        let end = match status {
            Ok(status) => end_event(status, waiter.last_signal.load(Ordering::SeqCst)),
            Err(e) => EndEvent {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some(format!("waiting for the process: {e}")),
            },
        };
        waiter.publish(OutputEvent::End(end));
        table.remove(&waiter);
    });

    Ok((handle, first_stream))
}

fn spawn_pipe_reader<R>(
    mut pipe: R,
    handle: Arc<ProcessHandle>,
    wrap: fn(Vec<u8>) -> DataEvent,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => handle.publish(OutputEvent::Data(wrap(buf[..n].to_vec()))),
            }
        }
    })
}

fn read_pty(mut master: std::fs::File, handle: Arc<ProcessHandle>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match master.read(&mut buf) {
            // EIO: every slave descriptor is closed.
            Ok(0) | Err(_) => break,
            Ok(n) => handle.publish(OutputEvent::Data(DataEvent::Pty(buf[..n].to_vec()))),
        }
        if handle.has_ended() {
            break;
        }
    }
}

/// The end event envd reports for an exit status.
pub fn end_event(status: ExitStatus, signal_we_sent: i32) -> EndEvent {
    let signaled = status.signal().or_else(|| {
        // A signal we delivered may surface as the shell convention 128+n.
        status
            .code()
            .filter(|&code| signal_we_sent != 0 && code == 128 + signal_we_sent)
            .map(|_| signal_we_sent)
    });
    match (signaled, status.code()) {
        (Some(signal), _) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("{SIGNAL_STATUS_PREFIX}{}", signal_name(signal)),
            error: None,
        },
        (None, Some(code)) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("{EXIT_STATUS_PREFIX}{code}"),
            error: None,
        },
        (None, None) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_event_reports_exit_codes_and_signals_like_envd() {
        let ok = end_event(ExitStatus::from_raw(0), 0);
        assert_eq!(
            (ok.exit_code, ok.exited, ok.status.as_str()),
            (0, true, "exit status 0")
        );
        let seven = end_event(ExitStatus::from_raw(7 << 8), 0);
        assert_eq!((seven.exit_code, seven.exited), (7, true));
        let killed = end_event(ExitStatus::from_raw(libc::SIGKILL), 0);
        assert_eq!(
            (killed.exit_code, killed.exited, killed.status.as_str()),
            (-1, false, "signal: killed")
        );
        let terminated = end_event(ExitStatus::from_raw(143 << 8), libc::SIGTERM);
        assert_eq!(terminated.status, "signal: terminated");
        let plain_143 = end_event(ExitStatus::from_raw(143 << 8), 0);
        assert_eq!(plain_143.exit_code, 143);
        let usr1 = end_event(ExitStatus::from_raw(libc::SIGUSR1), 0);
        assert_eq!(usr1.status, "signal: user defined signal 1");
    }

    #[test]
    fn the_shared_signal_table_uses_this_hosts_numbers() {
        let host = [
            (libc::SIGHUP, "hangup"),
            (libc::SIGINT, "interrupt"),
            (libc::SIGQUIT, "quit"),
            (libc::SIGILL, "illegal instruction"),
            (libc::SIGTRAP, "trace/breakpoint trap"),
            (libc::SIGABRT, "aborted"),
            (libc::SIGBUS, "bus error"),
            (libc::SIGFPE, "floating point exception"),
            (libc::SIGKILL, "killed"),
            (libc::SIGUSR1, "user defined signal 1"),
            (libc::SIGSEGV, "segmentation fault"),
            (libc::SIGUSR2, "user defined signal 2"),
            (libc::SIGPIPE, "broken pipe"),
            (libc::SIGALRM, "alarm clock"),
            (libc::SIGTERM, "terminated"),
        ];
        for (number, name) in host {
            assert_eq!(signal_name(number), name);
        }
    }
}
