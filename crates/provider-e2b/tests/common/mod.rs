//! Test harness: an in-process E2B emulator, and providers built against it from a config
//! loaded with an explicit environment (the process environment is never touched).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crabbox_core::claims::ClaimStore;
use crabbox_core::config::{LoadOptions, LoadedConfig};
use crabbox_core::engine::Engine;
use crabbox_core::events::{Reporter, SilentReporter};
use crabbox_provider_e2b::{E2bProvider, RetryPolicy};
use e2b_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use serde_json::Value;

pub const KEY: &str = "e2b_5ecre7c0ffee5ecre7c0ffee";

/// A running emulator, or `None` (the reason printed) when this host cannot run one:
/// tests return early on `None` (see `e2b_emulator::available_or_skip`).
pub async fn emulator() -> Option<EmulatorHandle> {
    if !e2b_emulator::available_or_skip() {
        return None;
    }
    let mut config = EmulatorConfig::new(KEY);
    config.max_keepalive_interval = Duration::from_millis(500);
    Some(Emulator::start(config).await.expect("emulator starts"))
}

/// A provider's private world: state dir (claims, sync state) and a cwd for config loading.
pub struct World {
    pub state: tempfile::TempDir,
    pub cwd: tempfile::TempDir,
}

impl World {
    pub fn new() -> Self {
        Self {
            state: tempfile::tempdir().unwrap(),
            cwd: tempfile::tempdir().unwrap(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    pub fn claims(&self) -> ClaimStore {
        ClaimStore::new(self.state.path().join("claims"))
    }

    pub fn config(&self, env: &[(&str, &str)]) -> crabbox_core::Result<LoadedConfig> {
        LoadedConfig::load(&LoadOptions {
            cwd: self.cwd.path().to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: vec![],
            user_file: None,
            sections: vec![crabbox_provider_e2b::SECTION],
        })
    }

    /// A provider for `api_url`/`sandbox_url` with `extra` environment on top.
    pub fn provider_at(
        &self,
        api_url: &str,
        sandbox_url: &str,
        extra: &[(&str, &str)],
    ) -> crabbox_core::Result<Engine> {
        let fast = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        self.provider_with(api_url, sandbox_url, extra, fast, Arc::new(SilentReporter))
    }

    /// [`World::provider_at`] with a retry policy and a reporter for its waits.
    pub fn provider_with(
        &self,
        api_url: &str,
        sandbox_url: &str,
        extra: &[(&str, &str)],
        retry: RetryPolicy,
        reporter: Arc<dyn Reporter>,
    ) -> crabbox_core::Result<Engine> {
        let mut env: Vec<(&str, &str)> = vec![
            ("CRABBOX_E2B_API_KEY", KEY),
            ("CRABBOX_E2B_API_URL", api_url),
            ("CRABBOX_E2B_SANDBOX_URL", sandbox_url),
        ];
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k, v));
        }
        let cfg = self.config(&env)?;
        let provider = E2bProvider::from_config(&cfg)?
            .with_retry_policy(retry)
            .with_reporter(reporter)
            .with_scan_cache(self.state_dir().join("e2b-scans"))
            // Tests assert which path a sync took (the watcher's or the scripts'): on a loaded
            // machine the watcher must not lose that race to the production patience.
            .with_watcher_patience(Duration::from_secs(10));
        Ok(Engine::new(Box::new(provider), self.claims(), self.state_dir()).configured(&cfg))
    }

    pub fn provider(
        &self,
        emu: &EmulatorHandle,
        extra: &[(&str, &str)],
    ) -> crabbox_core::Result<Engine> {
        self.provider_at(&emu.api_url(), &emu.sandbox_url(), extra)
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Every sandbox the emulator holds, straight from its list endpoint (no metadata filter).
pub async fn raw_list(emu: &EmulatorHandle) -> Vec<Value> {
    let res = reqwest::Client::new()
        .get(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Creates a sandbox behind crabbox's back.
pub async fn raw_create(emu: &EmulatorHandle, metadata: BTreeMap<&str, &str>) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{}/v2/sandboxes", emu.api_url()))
        .header("X-API-Key", KEY)
        .json(&serde_json::json!({"templateID": "base", "timeout": 300, "metadata": metadata}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

pub async fn raw_delete(emu: &EmulatorHandle, id: &str) {
    let res = reqwest::Client::new()
        .delete(format!("{}/sandboxes/{id}", emu.api_url()))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
}

pub async fn raw_exists(emu: &EmulatorHandle, id: &str) -> bool {
    let res = reqwest::Client::new()
        .get(format!("{}/sandboxes/{id}", emu.api_url()))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    res.status() == 200
}

/// A reporter that remembers its status lines.
#[derive(Default)]
pub struct Recorder {
    pub lines: Mutex<Vec<String>>,
    pub hints: Mutex<Vec<crabbox_core::hint::Hint>>,
}

impl Reporter for Recorder {
    fn status(&self, message: &str) {
        self.lines.lock().unwrap().push(message.to_string());
    }
    fn hint(&self, hint: &crabbox_core::hint::Hint) {
        self.hints.lock().unwrap().push(hint.clone());
    }
}

impl Recorder {
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn hints(&self) -> Vec<crabbox_core::hint::Hint> {
        self.hints.lock().unwrap().clone()
    }
}

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Rewrites `rel` with `text` and sets its mtime a second past the old one, so the edit shows
/// in a warm sync's delta however coarse the filesystem's timestamps are (no sleeping for a
/// fresh mtime).
pub fn edit(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    let before = std::fs::metadata(&p).unwrap().modified().unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(before + Duration::from_secs(1))
        .unwrap();
}
