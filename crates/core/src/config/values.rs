//! Typed values of core's settings, and the parsers settings of every section share
//! (durations, booleans, comma-separated lists).

use std::time::Duration;

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
    pub sync: SyncConfig,
    pub env: EnvConfig,
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

/// Serde helper for duration settings: a number of seconds or text such as `90m`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

pub(super) fn ser_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(super) fn de_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "expected a boolean, found {other:?}"
            ))),
        },
    }
}

pub(super) fn de_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(l) => l,
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}
