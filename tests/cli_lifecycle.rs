//! End to end: a box's life between runs on e2b (pause and resume, idle timeout, snapshots,
//! forks, port URLs, usage), the real `crabbox` binary against the local E2B emulator.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

fn json(o: std::process::Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn warmup(sb: &Sandbox, extra: &[&str]) -> String {
    let mut args = vec!["warmup", "--provider", "e2b"];
    args.extend_from_slice(extra);
    let lease = ok(sb.run(&args)).trim().to_string();
    assert!(crabbox_core::lease::is_lease_id(&lease), "{lease}");
    lease
}

fn state_of(sb: &Sandbox, lease: &str) -> String {
    let st = json(sb.run(&["status", "--provider", "e2b", "--id", lease, "--json"]));
    st["state"].as_str().unwrap().to_string()
}

/// Polls the box's state as the service reports it until it is `want` (the service changes
/// it on its own clock: there is no event to wait on).
fn wait_for_state(sb: &Sandbox, lease: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if state_of(sb, lease) == want {
            return;
        }
        assert!(Instant::now() < deadline, "{lease} never became {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pause_and_resume_show_in_status_and_list_and_run_wakes_a_paused_box_saying_so() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = warmup(&sb, &[]);
    ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--",
        "sh",
        "-c",
        "echo kept > ~/kept.txt",
    ]));

    let paused = json(sb.run(&["pause", "--provider", "e2b", &lease, "--json"]));
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["already"], false);
    assert_eq!(state_of(&sb, &lease), "paused");
    let list = json(sb.run(&["list", "--provider", "e2b", "--json"]));
    assert_eq!(list[0]["state"], "paused", "{list}");
    let again = sb.run(&["pause", "--provider", "e2b", &lease]);
    assert!(
        stderr(&again).contains("was already paused"),
        "{}",
        stderr(&again)
    );

    let resumed = json(sb.run(&["resume", "--provider", "e2b", &lease, "--json"]));
    assert_eq!(resumed["state"], "running");
    assert_eq!(resumed["already"], false);
    assert_eq!(state_of(&sb, &lease), "running");

    ok(sb.run(&["pause", "--provider", "e2b", &lease]));
    let run = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--",
        "cat",
        "/home/user/kept.txt",
    ]);
    assert_eq!(stdout(&run), "kept\n", "{}", stderr(&run));
    assert!(
        stderr(&run).contains("resumed paused e2b box"),
        "run --id on a paused box must say it resumed it: {}",
        stderr(&run)
    );
    assert_eq!(state_of(&sb, &lease), "running");

    let usage = json(sb.run(&["usage", "--json"]));
    let mine = &usage["leases"][0];
    assert_eq!(mine["leaseId"], lease.as_str());
    assert_eq!(mine["state"], "running");
    assert_eq!(usage["repos"].as_array().unwrap().len(), 1);

    let stop = sb.run(&["stop", "--provider", "e2b", &lease]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    assert!(
        stderr(&stop).contains(&format!("lease {lease} used ")) && stderr(&stop).contains("paused"),
        "stop prints the lease's total: {}",
        stderr(&stop)
    );
    let usage = json(sb.run(&["usage", "--json"]));
    assert_eq!(usage["leases"][0]["state"], "stopped", "{usage}");
}

#[test]
fn an_idle_timeout_pauses_the_warm_box_instead_of_killing_it_and_a_run_wakes_it() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = warmup(&sb, &["--idle-timeout", "2s"]);
    ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--",
        "sh",
        "-c",
        "echo warm > ~/warm.txt",
    ]));
    wait_for_state(&sb, &lease, "paused");
    let run = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--",
        "cat",
        "/home/user/warm.txt",
    ]);
    assert_eq!(stdout(&run), "warm\n", "{}", stderr(&run));
    assert!(stderr(&run).contains("resumed paused"), "{}", stderr(&run));
    // A run outlasting the idle timeout is not paused under it: the box lives for the TTL
    // while a run uses it, and the idle timeout starts again when the run ends.
    let long = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--",
        "sh",
        "-c",
        "sleep 3; echo survived",
    ]);
    assert_eq!(stdout(&long), "survived\n", "{}", stderr(&long));
    assert_eq!(state_of(&sb, &lease), "running");
    // Then it pauses again rather than dying.
    wait_for_state(&sb, &lease, "paused");
    let usage = json(sb.run(&["usage", "--json"]));
    let mine = &usage["leases"][0];
    assert!(mine["runningSecs"].as_u64().unwrap() >= 2, "{usage}");
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
}

#[test]
fn a_ttl_above_what_the_account_allows_is_refused_naming_e2b_max_ttl() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox().with_env("CRABBOX_E2B_MAX_TTL", "24h");
    let out = sb.run(&["warmup", "--provider", "e2b", "--ttl", "2h"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("e2b.maxTtl"), "{}", stderr(&out));
    assert!(sb.claims().is_empty(), "a refused create leaves no claim");
}

#[test]
fn a_box_started_from_a_snapshot_has_its_files_and_syncs_nothing_unchanged() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = warmup(&sb, &[]);
    ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--shell",
        "--",
        "mkdir -p node_modules && echo installed > node_modules/dep.txt",
    ]));
    let snap = ok(sb.run(&[
        "snapshot",
        "--provider",
        "e2b",
        &lease,
        "--name",
        "with-deps",
    ]))
    .trim()
    .to_string();
    assert!(!snap.is_empty());
    let listed = json(sb.run(&["snapshot", "list", "--provider", "e2b", "--json"]));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == snap.as_str() && s["names"][0] == "with-deps"),
        "{listed}"
    );

    let child = warmup(&sb, &["--from-snapshot", "with-deps"]);
    assert_ne!(child, lease);
    let run = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &child,
        "--timing-json",
        "--",
        "cat",
        "node_modules/dep.txt",
    ]);
    assert_eq!(stdout(&run), "installed\n", "{}", stderr(&run));
    let timing: serde_json::Value = stderr(&run)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a timing line");
    assert_eq!(
        timing["sync"]["sentFiles"], 0,
        "unchanged files are not sent: {timing}"
    );

    // A one-shot run from the snapshot works too, and releases its box.
    let once = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--from-snapshot",
        &snap,
        "--",
        "cat",
        "node_modules/dep.txt",
    ]);
    assert_eq!(stdout(&once), "installed\n", "{}", stderr(&once));

    ok(sb.run(&["snapshot", "delete", "--provider", "e2b", &snap]));
    let listed = json(sb.run(&["snapshot", "list", "--provider", "e2b", "--json"]));
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    let again = sb.run(&["snapshot", "delete", "--provider", "e2b", &snap]);
    assert_eq!(code(&again), 4, "{}", stderr(&again));
    let template = sb.run(&["snapshot", "delete", "--provider", "e2b", "base"]);
    assert_eq!(
        code(&template),
        4,
        "only snapshots are deleted: {}",
        stderr(&template)
    );
    ok(sb.run(&["stop", "--provider", "e2b", &child]));
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
}

#[test]
fn fork_makes_count_new_leases_each_with_its_own_claim_and_slug() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = warmup(&sb, &[]);
    ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--",
        "sh",
        "-c",
        "echo from-source > marker",
    ]));
    let out = json(sb.run(&[
        "fork",
        "--provider",
        "e2b",
        &lease,
        "--count",
        "3",
        "--json",
    ]));
    let forks = out["forks"].as_array().unwrap();
    assert_eq!(forks.len(), 3, "{out}");
    let mut slugs: Vec<&str> = forks.iter().map(|f| f["slug"].as_str().unwrap()).collect();
    slugs.sort();
    slugs.dedup();
    assert_eq!(slugs.len(), 3, "each fork has its own slug: {out}");
    assert_eq!(sb.claims().len(), 4);
    for f in forks {
        let id = f["leaseId"].as_str().unwrap();
        let run = sb.run(&[
            "run",
            "--provider",
            "e2b",
            "--id",
            id,
            "--",
            "cat",
            "marker",
        ]);
        assert_eq!(stdout(&run), "from-source\n", "{}", stderr(&run));
    }
    let bad = sb.run(&["fork", "--provider", "e2b", &lease, "--count", "21"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    for f in forks {
        ok(sb.run(&["stop", "--provider", "e2b", f["leaseId"].as_str().unwrap()]));
    }
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
    assert!(sb.claims().is_empty());
}

/// `GET /` through the emulator, addressed by `Host` the way E2B's proxy is.
fn get_via_host(api_url: &str, host: &str) -> Option<(u16, String)> {
    let addr = api_url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

#[test]
fn url_names_the_port_host_and_it_reaches_a_server_on_the_box() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = warmup(&sb, &[]);
    ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--shell",
        "--",
        "mkdir -p www && echo served-by-crabbox > www/index.html && \
         (cd www && nohup python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 &)",
    ]));
    let url = json(sb.run(&["url", "--provider", "e2b", &lease, "8123", "--json"]));
    let st = json(sb.run(&["status", "--provider", "e2b", "--id", &lease, "--json"]));
    let sandbox_id = st["remoteId"].as_str().unwrap();
    assert_eq!(
        url["url"],
        format!("https://8123-{sandbox_id}.e2b.app").as_str(),
        "{url}"
    );
    assert_eq!(url["port"], 8123);
    let plain = ok(sb.run(&["url", "--provider", "e2b", &lease, "8123"]));
    assert_eq!(plain.trim(), url["url"].as_str().unwrap());

    let host = url["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, body)) = get_via_host(&emu.api_url, &host) {
            assert!(body.contains("served-by-crabbox"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never answered through {host}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // On a paused box, `url` wakes it for its TTL; the server kept running through the pause.
    ok(sb.run(&["pause", "--provider", "e2b", &lease]));
    let again = json(sb.run(&["url", "--provider", "e2b", &lease, "8123", "--json"]));
    assert_eq!(again["url"], url["url"]);
    assert_eq!(state_of(&sb, &lease), "running");
    let (status, body) = get_via_host(&emu.api_url, &host).expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("served-by-crabbox"), "{body}");
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
}

// --- the local provider: snapshots and forks as directory copies; the rest refused ---

#[test]
fn local_snapshots_and_forks_copy_the_box_directory() {
    let sb = Sandbox::new();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    ok(sb.run(&[
        "run",
        "--id",
        &lease,
        "--shell",
        "--",
        "echo built > built.txt",
    ]));
    let snap = ok(sb.run(&["snapshot", &lease, "--name", "built"]))
        .trim()
        .to_string();
    assert!(snap.starts_with("snap_"), "{snap}");
    let listed = json(sb.run(&["snapshot", "list", "--json"]));
    assert_eq!(listed[0]["id"], snap.as_str(), "{listed}");

    let child = ok(sb.run(&["warmup", "--from-snapshot", "built"]))
        .trim()
        .to_string();
    let run = sb.run(&[
        "run",
        "--id",
        &child,
        "--timing-json",
        "--",
        "cat",
        "built.txt",
    ]);
    assert_eq!(stdout(&run), "built\n", "{}", stderr(&run));
    // The box's files changed after the snapshot is taken do not reach it.
    ok(sb.run(&[
        "run",
        "--id",
        &lease,
        "--shell",
        "--",
        "echo changed > built.txt",
    ]));
    let again = sb.run(&["run", "--id", &child, "--", "cat", "built.txt"]);
    assert_eq!(stdout(&again), "built\n");

    let out = json(sb.run(&["fork", &lease, "--count", "2", "--json"]));
    let forks = out["forks"].as_array().unwrap();
    assert_eq!(forks.len(), 2, "{out}");
    for f in forks {
        let id = f["leaseId"].as_str().unwrap();
        let run = sb.run(&["run", "--id", id, "--", "cat", "built.txt"]);
        assert_eq!(stdout(&run), "changed\n", "{}", stderr(&run));
        ok(sb.run(&["stop", id]));
    }
    ok(sb.run(&["snapshot", "delete", &snap]));
    assert!(json(sb.run(&["snapshot", "list", "--json"]))
        .as_array()
        .unwrap()
        .is_empty());
    ok(sb.run(&["stop", &child]));
    ok(sb.run(&["stop", &lease]));
}

#[test]
fn local_refuses_pause_urls_and_idle_timeouts_naming_what_to_use_instead() {
    let sb = Sandbox::new();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    for (args, instead) in [
        (
            vec!["pause", lease.as_str()],
            "crabbox run --provider local --id",
        ),
        (
            vec!["resume", lease.as_str()],
            "crabbox run --provider local --id",
        ),
        (
            vec!["url", lease.as_str(), "8080"],
            "http://localhost:<port>",
        ),
        (vec!["warmup", "--idle-timeout", "30m"], "idleTimeout to 0"),
    ] {
        let out = sb.run(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("provider local cannot"), "{args:?}: {err}");
        assert!(err.contains(instead), "{args:?}: {err}");
    }
    assert_eq!(sb.claims().len(), 1, "a refusal makes nothing");
    ok(sb.run(&["stop", &lease]));
}

// --- crabbox shell, through a real pseudo-terminal ---

/// `crabbox` running with a pseudo-terminal as its stdin, stdout and stderr (its
/// controlling terminal), as under a terminal emulator; what it prints is collected.
struct Terminal {
    master: std::fs::File,
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    fn spawn(mut cmd: std::process::Command, cols: u16, rows: u16) -> Terminal {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two new descriptors, which we own from here.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("crabbox starts");
        drop(slave);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once crabbox and every holder of the terminal are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master,
            child,
            seen,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits until the terminal has shown `needle`.
    fn wait_for(&self, needle: &str) {
        self.wait_for_count(needle, 1);
    }

    /// Waits until the terminal has shown `needle` `n` times.
    fn wait_for_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.text().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {needle:?} {n} times; it shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resizes the terminal as a window resize does (the kernel signals SIGWINCH).
    fn resize(&self, cols: u16, rows: u16) {
        use std::os::fd::AsRawFd;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0);
    }

    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "crabbox shell did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn shell_is_a_raw_terminal_on_the_box_with_resizes_ctrl_c_and_the_exit_code() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = warmup(&sb, &[]);
    ok(sb.run(&["run", "--provider", "e2b", "--id", &lease, "--", "true"]));
    let mut term = Terminal::spawn(sb.cmd(&["shell", "--provider", "e2b", &lease]), 80, 24);
    term.type_keys("echo mark-$((6*7)); pwd; tty\n");
    term.wait_for("mark-42");
    term.wait_for("/home/user/crabbox");
    term.wait_for("/dev/pts/");
    term.type_keys("stty size\n");
    term.wait_for("24 80");

    // A window resize reaches the box; the forwarding is asynchronous, so ask until it shows.
    term.resize(120, 40);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !term.text().contains("40 120") {
        assert!(
            Instant::now() < deadline,
            "resize never reached the box:\n{}",
            term.text()
        );
        term.type_keys("stty size\n");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Ctrl-C goes to the remote shell: it interrupts the remote sleep, not crabbox. What is
    // typed after it waits for the shell's next prompt (the interrupt discards typeahead); the
    // prompt is one only the shell prints (its own echo shows the unexpanded form).
    term.type_keys("PS1='ready-$((3*3))> '\n");
    term.wait_for_count("ready-9> ", 1);
    term.type_keys("echo sleeping-$((2+2)); sleep 1000\n");
    term.wait_for("sleeping-4");
    let prompts = term.text().matches("ready-9> ").count();
    term.type_keys("\u{3}");
    term.wait_for_count("ready-9> ", prompts + 1);
    term.type_keys("echo after-$((1+1))\n");
    term.wait_for("after-2");

    term.type_keys("exit 7\n");
    assert_eq!(term.exit_code(), 7);

    let mut one = Terminal::spawn(
        sb.cmd(&[
            "shell",
            "--provider",
            "e2b",
            &lease,
            "--",
            "sh",
            "-c",
            "stty size; exit 3",
        ]),
        100,
        30,
    );
    let code = one.exit_code();
    assert!(one.text().contains("30 100"), "{}", one.text());
    assert_eq!(code, 3, "{}", one.text());
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
}

#[test]
fn local_shell_is_a_terminal_in_the_box_directory() {
    let sb = Sandbox::new();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    ok(sb.run(&["run", "--id", &lease, "--", "true"]));
    let mut term = Terminal::spawn(sb.cmd(&["shell", &lease]), 80, 24);
    term.type_keys("echo local-$((6*7)); basename \"$PWD\"; stty size\n");
    term.wait_for("local-42");
    term.wait_for(&lease);
    term.wait_for("24 80");
    term.resize(90, 33);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !term.text().contains("33 90") {
        assert!(
            Instant::now() < deadline,
            "resize never arrived:\n{}",
            term.text()
        );
        term.type_keys("stty size\n");
        std::thread::sleep(Duration::from_millis(200));
    }
    term.type_keys("exit 9\n");
    assert_eq!(term.exit_code(), 9, "{}", term.text());
    ok(sb.run(&["stop", &lease]));
}
