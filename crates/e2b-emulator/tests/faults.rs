//! Faults programmed into a running emulator over its admin route: each one does to a client
//! what it says, for as many requests as it says, and then the emulator answers normally.

use crabbox_e2b_wire::control::Sandbox;
use crabbox_e2b_wire::envelope::{self, EnvelopeDecoder};
use e2b_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "e2b_0123456789abcdef";

async fn emulator() -> Option<EmulatorHandle> {
    if !e2b_emulator::available_or_skip() {
        return None;
    }
    Some(
        Emulator::start(EmulatorConfig::new(KEY))
            .await
            .expect("emulator starts"),
    )
}

async fn arm(emu: &EmulatorHandle, faults: Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/_emulator/faults", emu.api_url()))
        .header("X-API-Key", KEY)
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "{}", res.text().await.unwrap());
}

async fn list(http: &reqwest::Client, emu: &EmulatorHandle) -> reqwest::Result<reqwest::Response> {
    http.get(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .send()
        .await
}

async fn create(http: &reqwest::Client, emu: &EmulatorHandle) -> Sandbox {
    let res = http
        .post(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .json(&json!({"timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

async fn count_sandboxes(http: &reqwest::Client, emu: &EmulatorHandle) -> usize {
    let v: Vec<Value> = list(http, emu).await.unwrap().json().await.unwrap();
    v.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_faults_fire_count_times_with_retry_after_then_the_route_answers() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    arm(
        &emu,
        json!([{"plane": "control", "method": "GET", "path": "/v2/sandboxes", "count": 2,
                "action": {"status": {"status": 503, "retryAfter": 7}}},
               {"plane": "control", "method": "GET", "path": "/v2/sandboxes", "count": 1,
                "action": {"status": {"status": 429}}}]),
    )
    .await;
    let first = list(&http, &emu).await.unwrap();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "7");
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["code"], 503, "E2B's error body: {body}");
    assert_eq!(list(&http, &emu).await.unwrap().status(), 503);
    let third = list(&http, &emu).await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().get("retry-after").is_none());
    assert_eq!(list(&http, &emu).await.unwrap().status(), 200);
    // Envd requests and other methods never matched.
    let listed: Vec<Value> = http
        .get(format!("{}/_emulator/faults", emu.api_url()))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["fired"], 2);
    assert_eq!(listed[1]["fired"], 1);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_route_needs_the_key_and_refuses_unknown_faults() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    let url = format!("{}/_emulator/faults", emu.api_url());
    let res = http.post(&url).json(&json!([])).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = http
        .post(&url)
        .header("X-API-Key", KEY)
        .json(&json!([{"path": "*", "action": "explode"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_before_loses_the_request_and_reset_after_loses_only_the_answer() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    arm(
        &emu,
        json!([{"method": "POST", "path": "/v2/sandboxes", "action": "resetBefore"}]),
    )
    .await;
    let err = http
        .post(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .json(&json!({"timeout": 60}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_request(), "{err:?}");
    assert_eq!(count_sandboxes(&http, &emu).await, 0, "nothing was created");

    arm(
        &emu,
        json!([{"method": "POST", "path": "/v2/sandboxes", "action": "resetAfter"}]),
    )
    .await;
    let err = http
        .post(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .json(&json!({"timeout": 60}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_request(), "{err:?}");
    assert_eq!(count_sandboxes(&http, &emu).await, 1, "the create happened");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_outlasts_a_client_timeout() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    arm(
        &emu,
        json!([{"plane": "control", "path": "/v2/sandboxes", "action": {"stall": {"ms": 2000}}}]),
    )
    .await;
    let t = Instant::now();
    let err = http
        .get(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(t.elapsed() < Duration::from_millis(1500));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_ends_when_the_faults_are_cleared() {
    let Some(emu) = emulator().await else {
        return;
    };
    arm(
        &emu,
        json!([{"plane": "control", "path": "/v2/sandboxes", "action": {"stall": {"ms": 600_000}}}]),
    )
    .await;
    let url = format!("{}/v2/sandboxes", emu.api_url());
    let held = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .get(url)
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        res.status()
    });
    while emu.faults().list().iter().all(|f| f.fired == 0) {
        tokio::task::yield_now().await;
    }
    assert!(!held.is_finished(), "held by the stall");
    emu.faults().clear();
    // Ten minutes of stall, ended by the clear.
    let status = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the clear ended the stall")
        .unwrap();
    assert_eq!(status, 200);
    emu.shutdown().await;
}

fn start_request(
    http: &reqwest::Client,
    emu: &EmulatorHandle,
    sbx: &Sandbox,
    script: &str,
) -> reqwest::RequestBuilder {
    let body = json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", script]}});
    http.post(format!("{}/process.Process/Start", emu.api_url()))
        .header("E2b-Sandbox-Id", &sbx.sandbox_id)
        .header(
            "X-Access-Token",
            sbx.envd_access_token.clone().unwrap_or_default(),
        )
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(envelope::encode_message(&body).unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_stream_is_cut_after_the_chunks_it_names() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    let sbx = create(&http, &emu).await;
    arm(
        &emu,
        json!([{"plane": "envd", "path": "/process.Process/Start",
                "action": {"dropStreamAfter": {"chunks": 2}}}]),
    )
    .await;
    let res = start_request(&http, &emu, &sbx, "echo first; sleep 1; echo second")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut decoder = EnvelopeDecoder::new();
    let mut messages = 0;
    let mut broke = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => messages += decoder.decode(&chunk).unwrap().len(),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "the stream must break, not end");
    assert_eq!(messages, 2, "the start event and the first output");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_sandbox_kills_it_and_envd_answers_502() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    let sbx = create(&http, &emu).await;
    arm(
        &emu,
        json!([{"plane": "envd", "path": "/process.Process/Start", "action": "killSandbox"}]),
    )
    .await;
    let res = start_request(&http, &emu, &sbx, "true")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(count_sandboxes(&http, &emu).await, 0);
    emu.shutdown().await;
}

/// A sandbox killed under its command drops the command's stream, as E2B's proxy does:
/// no end event, the connection just breaks.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_sandbox_mid_command_drops_its_stream() {
    let Some(emu) = emulator().await else {
        return;
    };
    let http = reqwest::Client::new();
    let sbx = create(&http, &emu).await;
    let res = start_request(&http, &emu, &sbx, "echo up; sleep 60")
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut decoder = EnvelopeDecoder::new();
    let mut seen = 0;
    let mut deleted = false;
    let mut outcome = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), body.next())
        .await
        .expect("the stream ends soon after the delete")
    {
        match chunk {
            Ok(chunk) => {
                for env in decoder.decode(&chunk).unwrap() {
                    assert!(!env.is_end_stream(), "no end-of-stream envelope");
                    seen += 1;
                }
            }
            Err(_) => {
                outcome = Some("broken");
                break;
            }
        }
        if seen >= 2 && !deleted {
            deleted = true;
            let res = http
                .delete(format!("{}/sandboxes/{}", emu.api_url(), sbx.sandbox_id))
                .header("X-API-Key", KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 204);
        }
    }
    assert!(deleted);
    assert_eq!(
        outcome,
        Some("broken"),
        "the stream must break without an end event"
    );
    emu.shutdown().await;
}
