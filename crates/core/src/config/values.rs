//! Typed values of core's settings, and the parsers settings of every section share
//! (durations, booleans, comma-separated lists).

use std::time::Duration;

use figment::value::Value;
use serde::{Deserialize, Deserializer, Serialize};

use crate::sync::SyncOptions;

/// The provider-independent settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoreConfig {
    pub provider: String,
    pub target: String,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// A run's command is stopped after this long (exit 124); zero: no limit.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// The workspace (synced tree on the box) a run uses; `main` is the workdir itself.
    #[serde(default)]
    pub workspace: String,
    pub sync: SyncConfig,
    pub env: EnvConfig,
    pub shard: ShardConfig,
}

/// `shard`: what `crabbox shard` may ask for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardConfig {
    /// The most shards one `crabbox shard` may run (a repository may lower it).
    #[serde(deserialize_with = "de_count")]
    pub max_count: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConfig {
    #[serde(deserialize_with = "de_list")]
    pub exclude: Vec<String>,
    #[serde(deserialize_with = "de_list")]
    pub include: Vec<String>,
    #[serde(deserialize_with = "de_bool")]
    pub delete: bool,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de_bool")]
    pub allow_large: bool,
}

impl SyncConfig {
    pub fn options(&self) -> SyncOptions {
        SyncOptions {
            exclude: self.exclude.clone(),
            include: self.include.clone(),
            allow_large: self.allow_large,
            limits: Default::default(),
            listing_cache: None,
        }
    }
}

/// `env.allow`: which caller variables the remote command asks for. What is actually
/// forwarded is decided by [`crate::env_policy::forwarded_env`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvConfig {
    #[serde(deserialize_with = "de_list")]
    pub allow: Vec<String>,
}

/// Parses `90m`, `1h30m`, `45s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. 90m, 1h, 45s)"))
}

pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// What kind of value a config holds, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(..) | Value::Char(..) => "text",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a mapping",
        Value::Array(..) => "a list",
    }
}

/// Serde helper for duration settings: a number of seconds or text such as `90m`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    match <Value as Deserialize>::deserialize(d)? {
        Value::Num(_, n) => n
            .to_u128()
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .ok_or_else(|| {
                serde::de::Error::custom("expected a duration: a whole number of seconds >= 0")
            }),
        Value::String(_, t) => parse_duration(&t).map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected a duration (seconds, or text such as 90m), found {}",
            kind(&other)
        ))),
    }
}

pub(super) fn ser_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(super) fn de_count<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let text = match <Value as Deserialize>::deserialize(d)? {
        Value::Num(_, n) => n
            .to_u128()
            .map(|i| i.to_string())
            .or_else(|| n.to_i128().map(|i| i.to_string()))
            .unwrap_or_else(|| "a fraction".into()),
        Value::String(_, t) => t,
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a whole number, found {}",
                kind(&other)
            )))
        }
    };
    text.trim().parse::<u32>().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected a whole number, found {:?}",
            shorten(&text)
        ))
    })
}

/// Serde helper for boolean settings: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
pub fn de_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    let text = match <Value as Deserialize>::deserialize(d)? {
        Value::Bool(_, b) => return Ok(b),
        Value::String(_, t) => t,
        Value::Num(_, n) => n.to_i128().map(|i| i.to_string()).unwrap_or_default(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected true or false, found {}",
                kind(&other)
            )))
        }
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected true or false, found {:?}",
            shorten(other)
        ))),
    }
}

/// Serde helper for list settings: a list of text, or comma-separated text.
pub fn de_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    match <Value as Deserialize>::deserialize(d)? {
        Value::Array(_, items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(_, s) => Ok(s),
                other => Err(serde::de::Error::custom(format!(
                    "expected a list of text entries, found {} in it",
                    kind(&other)
                ))),
            })
            .collect(),
        Value::String(_, t) => Ok(t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        other => Err(serde::de::Error::custom(format!(
            "expected a list (or comma-separated text), found {}",
            kind(&other)
        ))),
    }
}

/// A value as a message may quote it: cut to a readable length.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}... ({} bytes in all)", text.len())
}
