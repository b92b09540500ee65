//! Egress rules of new sandboxes (`e2b.network`): what the config asks for, which layer may
//! ask for it, and how it goes on the wire.
//!
//! E2B takes `allow_internet_access` and `network.{allowOut, denyOut}` at create: with
//! internet off (or `0.0.0.0/0` denied) a sandbox reaches only its `allowOut` destinations,
//! and an allowed entry wins over a denied one. A repository's `crabbox.yaml` /
//! `.crabbox.yaml` arrives with a clone, so, as with `env.allow` ([`crabbox_core::env_policy`])
//! and the endpoints ([`crate::settings::refuse_repo_redirect`]), it may only tighten what the
//! user's own layers (built-in defaults, user config, environment, flags) give: it may turn
//! internet off, add denials and narrow `allowOut`, but a repository file that turns internet
//! on where the user's layers turn it off, allows a destination the user's layers do not, or
//! drops a denial of theirs while internet is on, is refused, naming the file. A user who
//! wants the repository's rules sets them in a layer of their own (their config, the
//! environment, `--e2b-allow-internet` / `--e2b-allow-out` / `--e2b-deny-out`).

use crabbox_core::config::{de_bool, de_list, LoadedConfig, Origin};
use crabbox_e2b_wire::control::{check_allow_out, check_deny_out, NetworkConfig, SandboxDetail};
use serde::Deserialize;

const ALLOW_INTERNET: &str = "e2b.network.allowInternet";
const ALLOW_OUT: &str = "e2b.network.allowOut";
const DENY_OUT: &str = "e2b.network.denyOut";

/// `e2b.network` as configured (all layers merged).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettings {
    #[serde(default = "yes", deserialize_with = "de_bool")]
    pub allow_internet: bool,
    #[serde(default, deserialize_with = "de_list")]
    pub allow_out: Vec<String>,
    #[serde(default, deserialize_with = "de_list")]
    pub deny_out: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            allow_internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

impl NetworkSettings {
    /// The create body's `allow_internet_access` and `network` (lists only when non-empty).
    /// The default rules (internet on, no lists) send neither, as the reference and the SDKs
    /// do, so the account's own default applies.
    pub fn create_fields(&self) -> (Option<bool>, Option<serde_json::Value>) {
        if *self == NetworkSettings::default() {
            return (None, None);
        }
        let nonempty = |l: &Vec<String>| (!l.is_empty()).then(|| l.clone());
        let network = NetworkConfig {
            allow_public_traffic: None,
            allow_out: nonempty(&self.allow_out),
            deny_out: nonempty(&self.deny_out),
        };
        let network = (network != NetworkConfig::default())
            .then(|| serde_json::to_value(network).expect("plain JSON"));
        (Some(self.allow_internet), network)
    }

    /// Whatever these rules let through, `within` lets through too; if not, what breaks it.
    fn loosening_of(&self, within: &NetworkSettings) -> Option<Loosening> {
        if within.allow_internet && within.deny_out.is_empty() {
            return None; // the user's rules let everything out
        }
        if self.allow_internet && !within.allow_internet {
            return Some(Loosening::InternetOn);
        }
        if let Some(extra) = self
            .allow_out
            .iter()
            .find(|a| !within.allow_out.contains(a))
        {
            return Some(Loosening::AllowOut(extra.clone()));
        }
        if self.allow_internet {
            if let Some(dropped) = within.deny_out.iter().find(|d| !self.deny_out.contains(d)) {
                return Some(Loosening::DroppedDeny(dropped.clone()));
            }
        }
        None
    }
}

enum Loosening {
    InternetOn,
    AllowOut(String),
    DroppedDeny(String),
}

/// The rules in force, checked: every entry well-formed, and nothing a repository file
/// loosens. The error is a complete message (a usage error, exit 2).
pub fn rules(cfg: &LoadedConfig, merged: &NetworkSettings) -> Result<NetworkSettings, String> {
    let from = |key: &str| {
        cfg.origin(key)
            .map(|o| o.to_string())
            .unwrap_or_else(|| "the defaults".into())
    };
    for entry in &merged.allow_out {
        check_allow_out(entry).map_err(|e| format!("{} ({}): {e}", ALLOW_OUT, from(ALLOW_OUT)))?;
    }
    for entry in &merged.deny_out {
        check_deny_out(entry).map_err(|e| format!("{} ({}): {e}", DENY_OUT, from(DENY_OUT)))?;
    }
    let users = users_rules(cfg);
    let Some(loosening) = merged.loosening_of(&users) else {
        return Ok(merged.clone());
    };
    let (key, what, fix) = match &loosening {
        Loosening::InternetOn => (
            ALLOW_INTERNET,
            "turns internet access on, which your own settings turn off".to_string(),
            "CRABBOX_E2B_ALLOW_INTERNET or --e2b-allow-internet",
        ),
        Loosening::AllowOut(entry) => (
            ALLOW_OUT,
            format!("allows egress to {entry}, which your own settings do not allow"),
            "CRABBOX_E2B_ALLOW_OUT or --e2b-allow-out",
        ),
        Loosening::DroppedDeny(entry) => (
            DENY_OUT,
            format!("drops the denial of {entry} your own settings make"),
            "CRABBOX_E2B_DENY_OUT or --e2b-deny-out",
        ),
    };
    let file = match cfg.origin(key) {
        Some(Origin::RepoFile { path }) => path.display().to_string(),
        // Only a repository layer can make the merged rules differ from the user's.
        other => other.map(|o| o.to_string()).unwrap_or_default(),
    };
    Err(format!(
        "repository config {file} loosens the E2B egress rules: its `{key}` {what}; a cloned \
         repository may only tighten them. To allow it, set it in your user config, {fix}"
    ))
}

/// The rules the user's own layers give (every layer but repository files, each key's
/// highest such layer winning).
fn users_rules(cfg: &LoadedConfig) -> NetworkSettings {
    #[derive(Deserialize)]
    struct Flag(#[serde(deserialize_with = "de_bool")] bool);
    let trusted = |o: &Origin| !matches!(o, Origin::RepoFile { .. });
    let mut users = NetworkSettings::default();
    if let Some(allow) = cfg
        .layer_values(ALLOW_INTERNET)
        .into_iter()
        .rev()
        .filter(|(o, _)| trusted(o))
        .find_map(|(_, v)| v.deserialize::<Flag>().ok())
    {
        users.allow_internet = allow.0;
    }
    let last_list = |key: &str| {
        cfg.layer_lists(key)
            .into_iter()
            .rev()
            .find(|(o, _)| trusted(o))
            .map(|(_, l)| l)
            .unwrap_or_default()
    };
    users.allow_out = last_list(ALLOW_OUT);
    users.deny_out = last_list(DENY_OUT);
    users
}

/// The egress rules a sandbox detail reports, as `status` shows them (`network`): absent
/// when the detail says nothing of them.
pub fn status_details(detail: &SandboxDetail) -> Option<serde_json::Value> {
    if detail.allow_internet_access.is_none() && detail.network.is_none() {
        return None;
    }
    let network = detail.network.clone().unwrap_or_default();
    Some(serde_json::json!({
        "allowInternet": detail.allow_internet_access,
        "allowOut": network.allow_out.unwrap_or_default(),
        "denyOut": network.deny_out.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests;
