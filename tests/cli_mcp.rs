//! End to end: `crabbox mcp` over stdio, spoken to as raw JSON-RPC lines (the official MCP
//! SDK drives it in `tests/mcp/client.py`; these pin what a client cannot see through an SDK:
//! stdout carries the protocol and nothing else, and a client that goes away mid-run leaves
//! no command running and no box behind).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A `crabbox mcp` child with its stdout read line by line on a thread.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(sb: &Sandbox) -> Self {
        let mut child = sb
            .cmd(&["mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crabbox mcp starts");
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            stdin,
            lines,
        };
        s.send(json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "cli_mcp", "version": "0"}
            }
        }));
        let init = s.response(0);
        assert_eq!(init["result"]["serverInfo"]["name"], "crabbox", "{init}");
        s.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next stdout line, which must be one JSON-RPC message.
    fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .expect("the server answers");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("stdout carried a line that is not JSON-RPC: {line:?}: {e}")
        });
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        v
    }

    /// Reads messages until the response to `id`.
    fn response(&self, id: u64) -> Value {
        loop {
            let v = self.next();
            if v["id"] == id && v.get("method").is_none() {
                return v;
            }
        }
    }

    fn call(&mut self, id: u64, tool: &str, args: Value) -> Value {
        self.send(json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}
        }));
        self.response(id)
    }

    /// Closes stdin and waits for the server to exit; the rest of stdout, each line checked.
    fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|e| panic!("stdout carried {line:?}: {e}"));
        }
        status
    }
}

#[test]
fn tools_answer_with_structured_results_and_protocol_errors_on_stdout_only() {
    let sb = Sandbox::new().with_env("CRABBOX_PROVIDER", "local");
    let mut s = Server::start(&sb);
    let r = s.call(1, "run", json!({"command": "echo hi; exit 7"}));
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["exitCode"], 7, "{r}");
    assert_eq!(out["stdout"]["tail"], "hi\n", "{r}");
    assert_eq!(r["result"]["isError"], false, "{r}");
    let r = s.call(2, "stop", json!({"id": "cbx_0000deadbeef"}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cbx_0000deadbeef"),
        "{r}"
    );
    let r = s.call(3, "run", json!({"command": ["echo"], "sync": "yes"}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("run: bad arguments: invalid type"),
        "{r}"
    );
    let r = s.call(4, "list", json!({}));
    assert_eq!(r["result"]["structuredContent"]["boxes"], json!([]), "{r}");
    assert!(s.close().success());
    assert!(sb.claims().is_empty());
}

#[test]
fn a_client_that_goes_mid_run_leaves_no_command_and_no_box() {
    let sb = Sandbox::new().with_env("CRABBOX_PROVIDER", "local");
    let token = format!("crabbox-mcp-gone-{}", std::process::id());
    let mut s = Server::start(&sb);
    s.send(json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": "run",
            "arguments": {
                "command": ["/bin/sh", "-c", format!("echo started; sleep 300 # {token}")]
            },
            "_meta": {"progressToken": "p1"}
        }
    }));
    loop {
        let v = s.next();
        assert!(v.get("error").is_none(), "{v}");
        if v["method"] == "notifications/progress" && v["params"]["message"] == "stdout: started" {
            assert_eq!(v["params"]["progressToken"], "p1");
            break;
        }
    }
    assert!(
        !processes_mentioning(&token).is_empty(),
        "the command should be running"
    );
    assert_eq!(sb.claims().len(), 1);
    let status = s.close();
    assert!(status.success(), "{status}");
    assert!(
        survivors_after_grace(&token).is_empty(),
        "the command outlived its client"
    );
    assert!(sb.claims().is_empty(), "the box's claim is left");
    let boxes = std::fs::read_dir(sb.state.join("crabbox/boxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(boxes, 0, "the one-shot box is left");
}

#[test]
fn a_calls_root_brings_that_repository_and_its_config() {
    let sb = Sandbox::new().with_env("CRABBOX_PROVIDER", "local");
    let other = RepoFixture::new();
    std::fs::write(other.root().join("only-here.txt"), "x\n").unwrap();
    std::fs::write(
        other.root().join(".crabbox.yaml"),
        "sync:\n  exclude: [\"untracked.txt\"]\n",
    )
    .unwrap();
    let mut s = Server::start(&sb);
    let list = "find . -type f | sed 's|^./||' | sort";
    let here = s.call(1, "run", json!({"command": list}));
    let there = s.call(
        2,
        "run",
        json!({"command": list, "root": other.root().to_str().unwrap()}),
    );
    let files = |r: &Value| {
        r["result"]["structuredContent"]["stdout"]["tail"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string()
    };
    assert!(files(&here).contains("untracked.txt"), "{here}");
    assert!(!files(&here).contains("only-here.txt"), "{here}");
    assert!(files(&there).contains("only-here.txt"), "{there}");
    assert!(
        !files(&there).contains("untracked.txt"),
        "the root's .crabbox.yaml excludes it: {there}"
    );
    assert!(s.close().success());
}
