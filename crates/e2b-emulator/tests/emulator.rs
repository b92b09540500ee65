//! Behaviour of the emulator over HTTP, through its library API and a plain client.

use crabbox_e2b_wire::control::{ListedSandbox, Sandbox, SandboxDetail};
use crabbox_e2b_wire::envelope::{self, EnvelopeDecoder};
use crabbox_e2b_wire::process::{DataEvent, EndEvent, ProcessEvent, StartResponse};
use e2b_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "e2b_0123456789abcdef";

/// A running emulator, or `None` (the reason printed) when this host cannot run one.
async fn emulator() -> Option<EmulatorHandle> {
    if !e2b_emulator::available_or_skip() {
        return None;
    }
    let mut config = EmulatorConfig::new(KEY);
    config.max_keepalive_interval = Duration::from_millis(200);
    Some(Emulator::start(config).await.expect("emulator starts"))
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(emu: &EmulatorHandle) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: emu.api_url(),
        }
    }

    async fn create(&self, body: Value) -> Sandbox {
        let res = self
            .http
            .post(format!("{}/v2/sandboxes", self.base))
            .header("X-API-Key", KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "create status");
        res.json().await.unwrap()
    }

    /// A control-plane request, with the API key.
    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", KEY)
    }

    fn envd(
        &self,
        sandbox: &Sandbox,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("E2b-Sandbox-Id", &sandbox.sandbox_id)
            .header("E2b-Sandbox-Port", "49983")
            .header(
                "X-Access-Token",
                sandbox.envd_access_token.clone().unwrap_or_default(),
            )
    }

    /// Starts `script` with bash and returns the raw response.
    async fn start(
        &self,
        sandbox: &Sandbox,
        script: &str,
        user: Option<&str>,
    ) -> reqwest::Response {
        let body =
            json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", script]}, "stdin": false});
        let mut req = self
            .envd(sandbox, reqwest::Method::POST, "/process.Process/Start")
            .header("Content-Type", "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .header("Keepalive-Ping-Interval", "50")
            .body(envelope::encode_message(&body).unwrap().to_vec());
        if let Some(user) = user {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
            req = req.header("Authorization", format!("Basic {basic}"));
        }
        req.send().await.unwrap()
    }

    /// Runs `script` to completion: (stdout, stderr, end event, saw keepalive).
    async fn run(&self, sandbox: &Sandbox, script: &str, user: Option<&str>) -> Run {
        let res = self.start(sandbox, script, user).await;
        assert_eq!(res.status(), 200);
        collect(res).await
    }
}

#[derive(Debug, Default)]
struct Run {
    stdout: String,
    stderr: String,
    end: Option<EndEvent>,
    keepalives: usize,
    started: bool,
    error: Option<String>,
    /// The connection broke before the end-of-stream envelope.
    broken: bool,
}

async fn collect(res: reqwest::Response) -> Run {
    let mut run = Run::default();
    let mut decoder = EnvelopeDecoder::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            run.broken = true;
            return run;
        };
        for env in decoder.decode(&chunk).unwrap() {
            if env.is_end_stream() {
                run.error = env
                    .end_stream_message()
                    .unwrap()
                    .error
                    .map(|e| e.to_string());
                continue;
            }
            let msg: StartResponse = serde_json::from_slice(&env.payload).unwrap();
            match msg.event.unwrap() {
                ProcessEvent::Start(_) => run.started = true,
                ProcessEvent::Data(DataEvent::Stdout(b)) => {
                    run.stdout.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::Data(DataEvent::Stderr(b)) => {
                    run.stderr.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::Data(DataEvent::Pty(_)) => {}
                ProcessEvent::End(end) => run.end = Some(end),
                ProcessEvent::Keepalive(_) => run.keepalives += 1,
            }
        }
    }
    decoder.finish().unwrap();
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn create_get_list_and_kill_a_sandbox() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c
        .create(json!({"templateID": "base", "timeout": 60, "metadata": {"team": "crab"}}))
        .await;
    assert_eq!(sbx.envd_version, "0.6.13");
    assert!(sbx.domain.is_none());
    assert!(sbx.envd_access_token.is_some());

    let detail: SandboxDetail = c
        .http
        .get(format!("{}/sandboxes/{}", c.base, sbx.sandbox_id))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail.metadata["team"], "crab");

    let list = |filter: &'static str| {
        let http = c.http.clone();
        let url = format!("{}/v2/sandboxes", c.base);
        async move {
            http.get(url)
                .header("X-Api-Key", KEY)
                .query(&[("metadata", filter), ("state", "running,paused")])
                .send()
                .await
                .unwrap()
                .json::<Vec<ListedSandbox>>()
                .await
                .unwrap()
        }
    };
    assert_eq!(list("team=crab").await.len(), 1);
    assert_eq!(list("team=other").await.len(), 0);

    let kill = || {
        c.http
            .delete(format!("{}/sandboxes/{}", c.base, sbx.sandbox_id))
            .header("X-API-Key", KEY)
            .send()
    };
    assert_eq!(kill().await.unwrap().status(), 204);
    assert_eq!(kill().await.unwrap().status(), 404);
    assert!(list("").await.is_empty());
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_paginates_with_next_token_header() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    for _ in 0..3 {
        c.create(json!({"timeout": 60})).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = c
            .http
            .get(format!("{}/v2/sandboxes", c.base))
            .header("X-API-Key", KEY)
            .query(&[("limit", "2")]);
        if let Some(t) = &token {
            req = req.query(&[("nextToken", t)]);
        }
        let res = req.send().await.unwrap();
        token = res
            .headers()
            .get("x-next-token")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<ListedSandbox> = res.json().await.unwrap();
        seen.extend(page.into_iter().map(|s| s.sandbox_id));
        pages += 1;
        if token.is_none() {
            break;
        }
    }
    assert_eq!((pages, seen.len()), (2, 3));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_valid_credentials_get_401() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let res = c
        .http
        .post(format!("{}/v2/sandboxes", c.base))
        .header("X-API-Key", "e2b_wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], 401);

    let sbx = c.create(json!({"timeout": 60})).await;
    let res = c
        .http
        .post(format!("{}/process.Process/List", c.base))
        .header("E2b-Sandbox-Id", &sbx.sandbox_id)
        .header("X-Access-Token", "wrong")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let health = c
        .http
        .get(format!("{}/health", c.base))
        .header("E2b-Sandbox-Id", &sbx.sandbox_id)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 204, "/health needs no token");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_above_max_timeout_is_400_with_error_body() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let res = c
        .http
        .post(format!("{}/sandboxes", c.base))
        .header("X-API-Key", KEY)
        .json(&json!({"templateID": "base", "timeout": 999_999}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], 400);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_streams_separated_output_and_exit_code_7() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let run = c
        .run(
            &sbx,
            "echo to-stdout; echo to-stderr >&2; whoami; exit 7",
            None,
        )
        .await;
    assert!(run.started);
    assert_eq!(run.stdout, "to-stdout\nuser\n");
    assert_eq!(run.stderr, "to-stderr\n");
    let end = run.end.expect("end event");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (7, true, "exit status 7")
    );
    assert_eq!(run.error, None);

    let root = c.run(&sbx, "whoami; echo $HOME", Some("root")).await;
    assert_eq!(root.stdout, "root\n/root\n");
    // Real and effective ids, and no supplementary group carried over from the host.
    let ids = "id -ru; id -u; id -rg; id -g; id -G";
    let user = c.run(&sbx, ids, None).await;
    assert_eq!(user.stdout, "1000\n1000\n1000\n1000\n1000\n");
    let root = c.run(&sbx, ids, Some("root")).await;
    assert_eq!(root.stdout, "0\n0\n0\n0\n0\n");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_arrives_while_the_command_runs_with_keepalives_in_silence() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let began = Instant::now();
    let res = c
        .start(&sbx, "echo first; sleep 1.5; echo second", None)
        .await;
    let mut body = res.bytes_stream();
    let mut decoder = EnvelopeDecoder::new();
    let mut first_at = None;
    let mut keepalives = 0;
    while let Some(chunk) = body.next().await {
        for env in decoder.decode(&chunk.unwrap()).unwrap() {
            if env.is_end_stream() {
                continue;
            }
            let msg: StartResponse = serde_json::from_slice(&env.payload).unwrap();
            match msg.event.unwrap() {
                ProcessEvent::Data(DataEvent::Stdout(b)) if b == b"first\n" => {
                    first_at = Some(began.elapsed())
                }
                ProcessEvent::Keepalive(_) => keepalives += 1,
                _ => {}
            }
        }
    }
    let first_at = first_at.expect("saw the first line");
    // Measured against the stream's end (1.5 s of sleep after it), not an absolute bound a
    // loaded machine's slow start could break.
    let ended_at = began.elapsed();
    assert!(
        ended_at.saturating_sub(first_at) >= Duration::from_millis(1000),
        "first line arrived at {first_at:?}, the stream ended at {ended_at:?}: output was buffered"
    );
    assert!(
        keepalives >= 2,
        "only {keepalives} keepalives during 1.5 s of silence"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cwd_ends_the_stream_with_an_error_before_start() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let body = json!({"process": {"cmd": "/bin/true", "cwd": "/no/such/dir"}});
    let res = c
        .envd(&sbx, reqwest::Method::POST, "/process.Process/Start")
        .header("Content-Type", "application/connect+json")
        .body(envelope::encode_message(&body).unwrap().to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let run = collect(res).await;
    assert!(!run.started);
    assert!(run.error.unwrap().starts_with("invalid_argument"));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_signal_kills_a_running_process() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let res = c.start(&sbx, "sleep 30 & sleep 30", None).await;
    let mut body = res.bytes_stream();
    let mut decoder = EnvelopeDecoder::new();
    let first = decoder
        .decode(&body.next().await.unwrap().unwrap())
        .unwrap();
    let start: StartResponse = serde_json::from_slice(&first[0].payload).unwrap();
    let Some(ProcessEvent::Start(start)) = start.event else {
        panic!("first event is not start");
    };
    let res = c
        .envd(&sbx, reqwest::Method::POST, "/process.Process/SendSignal")
        .header("Content-Type", "application/json")
        .json(&json!({"process": {"pid": start.pid}, "signal": "SIGNAL_SIGKILL"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let began = Instant::now();
    let mut end = None;
    while let Some(chunk) = body.next().await {
        for env in decoder.decode(&chunk.unwrap()).unwrap() {
            if !env.is_end_stream() {
                let msg: StartResponse = serde_json::from_slice(&env.payload).unwrap();
                if let Some(ProcessEvent::End(e)) = msg.event {
                    end = Some(e);
                }
            }
        }
    }
    assert!(began.elapsed() < Duration::from_secs(5));
    let end = end.expect("end event");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (-1, false, "signal: killed")
    );
    let unknown = c
        .envd(&sbx, reqwest::Method::POST, "/process.Process/SendSignal")
        .header("Content-Type", "application/json")
        .json(&json!({"process": {"pid": start.pid}, "signal": "SIGNAL_SIGKILL"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_then_download_files() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let part = reqwest::multipart::Part::bytes(b"multipart body".to_vec())
        .file_name("/home/user/deep/dir/a.txt");
    let res = c
        .envd(&sbx, reqwest::Method::POST, "/files")
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let written: Value = res.json().await.unwrap();
    assert_eq!(
        written,
        json!([{"path": "/home/user/deep/dir/a.txt", "name": "a.txt", "type": "file"}])
    );

    let res = c
        .envd(&sbx, reqwest::Method::POST, "/files")
        .query(&[("path", "notes/b.txt")])
        .header("Content-Type", "application/octet-stream")
        .body(b"octet body".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let download = |path: &'static str| {
        c.envd(&sbx, reqwest::Method::GET, "/files")
            .query(&[("path", path)])
            .send()
    };
    let a = download("/home/user/deep/dir/a.txt").await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(&a.bytes().await.unwrap()[..], b"multipart body");
    let b = download("/home/user/notes/b.txt").await.unwrap();
    assert_eq!(&b.bytes().await.unwrap()[..], b"octet body");
    // Several parts are written in order, each as it is read; a second part to one path
    // (here, `path` names every part's target) is refused, the first left written.
    let form = |names: [&str; 2]| {
        names.iter().fold(reqwest::multipart::Form::new(), |f, n| {
            f.part(
                "file",
                reqwest::multipart::Part::bytes(n.as_bytes().to_vec()).file_name(n.to_string()),
            )
        })
    };
    let res = c
        .envd(&sbx, reqwest::Method::POST, "/files")
        .multipart(form(["/home/user/m/one", "/home/user/m/two"]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let written: Value = res.json().await.unwrap();
    assert_eq!(written.as_array().map(Vec::len), Some(2));
    let res = c
        .envd(&sbx, reqwest::Method::POST, "/files")
        .query(&[("path", "/home/user/m/same")])
        .multipart(form(["first", "second"]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("multiple files to the same path")),
        "{body}"
    );
    let same = download("/home/user/m/same").await.unwrap();
    assert_eq!(&same.bytes().await.unwrap()[..], b"first");
    let two = download("/home/user/m/two").await.unwrap();
    assert_eq!(&two.bytes().await.unwrap()[..], b"/home/user/m/two");
    let missing = download("/home/user/nope").await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["message"], "path '/home/user/nope' does not exist");

    let seen = c
        .run(
            &sbx,
            "cat ~/deep/dir/a.txt; echo; stat -c %U ~/notes/b.txt",
            None,
        )
        .await;
    assert_eq!(seen.stdout, "multipart body\nuser\n");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sandboxes_never_see_each_others_files() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let a = c.create(json!({"timeout": 60})).await;
    let b = c.create(json!({"timeout": 60})).await;
    let wrote = c
        .run(
            &a,
            "echo secret > /tmp/a-only; echo mine > ~/a-home; echo r > /root/x",
            Some("root"),
        )
        .await;
    assert_eq!(wrote.end.unwrap().exit_code, 0, "stderr: {}", wrote.stderr);
    let looked = c
        .run(
            &b,
            "ls -A /tmp; echo ---; ls -A /root; echo ---; ls -A /home/user; cat /tmp/a-only 2>/dev/null || echo absent",
            Some("root"),
        )
        .await;
    assert_eq!(looked.stdout, "---\n---\nabsent\n");
    let as_user = c
        .run(&a, "ls /root 2>&1; touch /usr/x 2>&1; true", None)
        .await;
    assert!(
        as_user.stdout.contains("Permission denied"),
        "{}",
        as_user.stdout
    );
    assert!(
        as_user.stdout.contains("Read-only file system"),
        "{}",
        as_user.stdout
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_sandbox_and_envd_answers_502() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 1})).await;
    let res = c.start(&sbx, "sleep 30", None).await;
    assert_eq!(res.status(), 200);
    let run = tokio::time::timeout(Duration::from_secs(10), collect(res))
        .await
        .expect("the stream ends when the sandbox times out");
    // As through E2B's proxy, the stream of a sandbox that went away is dropped: no end event.
    assert!(run.broken, "{run:?}");
    assert!(run.end.is_none(), "{run:?}");
    let path = format!("/sandboxes/{}", sbx.sandbox_id);
    let detail = c.api(reqwest::Method::GET, &path).send().await.unwrap();
    assert_eq!(detail.status(), 404);
    let health = c
        .envd(&sbx, reqwest::Method::GET, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 502);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_to_a_request_whose_body_went_unread_closes_the_connection_saying_so() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let path = format!("/sandboxes/{}", sbx.sandbox_id);
    let killed = c.api(reqwest::Method::DELETE, &path).send().await.unwrap();
    assert_eq!(killed.status(), 204);
    // A command for the sandbox that is gone: answered before its body is read.
    let res = c.start(&sbx, "true", None).await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "{:?}",
        res.headers()
    );
    // An error to a request without a body keeps the connection.
    let health = c
        .envd(&sbx, reqwest::Method::GET, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 502);
    assert!(health.headers().get("connection").is_none());
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_pause_sandbox_pauses_at_timeout_and_resumes_on_connect() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 1, "autoPause": true})).await;
    // Paused once its timeout passes (checked every 100 ms): polled, with room for a loaded
    // machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = c
            .envd(&sbx, reqwest::Method::GET, "/health")
            .send()
            .await
            .unwrap();
        if health.status() == 502 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox still answers {} 20 s after its 1 s timeout",
            health.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect = |timeout: u64| {
        c.http
            .post(format!(
                "{}/v2/sandboxes/{}/connect",
                c.base, sbx.sandbox_id
            ))
            .header("X-API-Key", KEY)
            .json(&json!({"timeout": timeout}))
            .send()
    };
    assert_eq!(connect(60).await.unwrap().status(), 201, "resumed");
    assert_eq!(connect(60).await.unwrap().status(), 200, "already running");
    let run = c.run(&sbx, "echo back", None).await;
    assert_eq!(run.stdout, "back\n");
    emu.shutdown().await;
}

/// Host pids of the processes whose command line is exactly `argv`.
fn host_pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| {
            // A zombie has finished dying.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        })
        .collect()
}

async fn send_signal(c: &Client, sbx: &Sandbox, pid: u32, signal: &str) -> reqwest::StatusCode {
    c.envd(sbx, reqwest::Method::POST, "/process.Process/SendSignal")
        .header("Content-Type", "application/json")
        .json(&json!({"process": {"pid": pid}, "signal": signal}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Like envd, SendSignal (and the Connect-Timeout-Ms deadline) reach only the command's
/// own process, whose pid is reported as seen inside the sandbox; its background children
/// live on until the sandbox is killed.
#[tokio::test(flavor = "multi_thread")]
async fn send_signal_reaches_only_the_command_process_not_its_children() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"timeout": 60})).await;
    let res = c
        .start(
            &sbx,
            "exec sh -c 'echo $$; sleep 3171 & echo $!; wait'",
            None,
        )
        .await;
    let mut body = res.bytes_stream();
    let mut decoder = EnvelopeDecoder::new();
    let (mut pid, mut stdout, mut end) = (None, String::new(), None);
    let mut signalled = false;
    while let Some(chunk) = body.next().await {
        for env in decoder.decode(&chunk.unwrap()).unwrap() {
            if env.is_end_stream() {
                continue;
            }
            let msg: StartResponse = serde_json::from_slice(&env.payload).unwrap();
            match msg.event.unwrap() {
                ProcessEvent::Start(s) => pid = Some(s.pid),
                ProcessEvent::Data(DataEvent::Stdout(b)) => {
                    stdout.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::End(e) => end = Some(e),
                _ => {}
            }
        }
        if !signalled && stdout.lines().count() >= 2 {
            signalled = true;
            let status = send_signal(&c, &sbx, pid.unwrap(), "SIGNAL_SIGKILL").await;
            assert_eq!(status, 200);
        }
    }
    let end = end.expect("end event");
    assert_eq!(end.status, "signal: killed");
    let lines: Vec<u32> = stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    let (sh_pid, sleep_pid) = (lines[0], lines[1]);
    assert_eq!(
        pid,
        Some(sh_pid),
        "the reported pid is the command's pid in the sandbox"
    );

    let check = format!("kill -0 {sleep_pid} && tr '\\0' ' ' < /proc/{sleep_pid}/cmdline");
    let run = c.run(&sbx, &check, None).await;
    assert_eq!(
        run.stdout.trim(),
        "sleep 3171",
        "the background child lives: {run:?}"
    );
    assert_eq!(host_pids_running(&["sleep", "3171"]).len(), 1);

    // The Connect-Timeout-Ms deadline kills only the command, too.
    let body = json!({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 3172 & echo go; wait"]}});
    let res = c
        .envd(&sbx, reqwest::Method::POST, "/process.Process/Start")
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .header("Connect-Timeout-Ms", "3000")
        .body(envelope::encode_message(&body).unwrap().to_vec())
        .send()
        .await
        .unwrap();
    let run = tokio::time::timeout(Duration::from_secs(20), collect(res))
        .await
        .expect("the deadline ends the command");
    assert_eq!(run.stdout, "go\n", "the child started before the deadline");
    assert_eq!(run.end.unwrap().status, "signal: killed");
    assert_eq!(host_pids_running(&["sleep", "3172"]).len(), 1);

    // Killing the sandbox kills everything it ran.
    let res = c
        .http
        .delete(format!("{}/sandboxes/{}", c.base, sbx.sandbox_id))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_pids_running(&["sleep", "3171"]).is_empty()
        || !host_pids_running(&["sleep", "3172"]).is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the sandbox's processes outlived it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emu.shutdown().await;
}

/// envd is strict about framing: a stream request must be one envelope with the Connect
/// stream content type, a unary call JSON with `application/json` and a non-empty body.
#[tokio::test(flavor = "multi_thread")]
async fn rpc_requests_with_the_wrong_framing_are_refused() {
    let Some(emu) = emulator().await else {
        return;
    };
    let c = Client::new(&emu);
    let sbx = c.create(json!({"templateID": "base"})).await;
    let start = json!({"process": {"cmd": "/bin/true"}, "stdin": false});

    let res = c
        .envd(&sbx, reqwest::Method::POST, "/process.Process/Start")
        .header("Content-Type", "application/json")
        .body(envelope::encode_message(&start).unwrap().to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415, "Start with a unary content type");

    let res = c
        .envd(&sbx, reqwest::Method::POST, "/process.Process/Start")
        .header("Content-Type", "application/connect+json")
        .body(start.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.bytes().await.unwrap();
    let envs = EnvelopeDecoder::new().decode(&body).unwrap();
    assert_eq!(envs.len(), 1, "only the end-of-stream envelope");
    let end = String::from_utf8_lossy(&envs[0].payload).into_owned();
    assert!(
        envs[0].is_end_stream() && end.contains("invalid_argument"),
        "{end}"
    );

    let res = c
        .envd(&sbx, reqwest::Method::POST, "/filesystem.Filesystem/Stat")
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "empty unary body");

    let res = c
        .envd(&sbx, reqwest::Method::POST, "/filesystem.Filesystem/Stat")
        .header("Content-Type", "text/plain")
        .body(r#"{"path":"/tmp"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    emu.shutdown().await;
}

/// `GET /templates/aliases/{alias}`, as the SDKs' `Template.exists` asks: 200 with the id for
/// a template the emulator knows (`base`, and any configured), 404 otherwise, 401 without
/// the key.
#[tokio::test(flavor = "multi_thread")]
async fn template_lookup_knows_base_and_configured_templates() {
    if !e2b_emulator::available_or_skip() {
        return;
    }
    let mut config = EmulatorConfig::new(KEY);
    config.templates.push("custom-node".into());
    let emu = Emulator::start(config).await.expect("emulator starts");
    let http = reqwest::Client::new();
    let get = |alias: &str, key: Option<&str>| {
        let mut req = http.get(format!("{}/templates/aliases/{alias}", emu.api_url()));
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        req.send()
    };
    let base = get("base", Some(KEY)).await.unwrap();
    assert_eq!(base.status(), 200);
    let body: Value = base.json().await.unwrap();
    assert_eq!(body["templateID"], "base");
    assert_eq!(get("custom-node", Some(KEY)).await.unwrap().status(), 200);
    let missing = get("no-such", Some(KEY)).await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], 404);
    assert_eq!(get("base", None).await.unwrap().status(), 401);
    emu.shutdown().await;
}
