//! The `e2b` config section, the secrets it carries, and the endpoint rules: where the key
//! may be sent (HTTPS, or plain HTTP to loopback only) and which config layers may say so.

use std::time::Duration;

use crabbox_core::config::{ConfigSection, LoadedConfig, Origin, Setting};
use crabbox_core::{Error, Result};
use serde::Deserialize;
use url::{Host, Url};

pub use crabbox_core::secret::Secret;

/// The `e2b` config section: its settings (environment variables in precedence order,
/// secrecy, flags) and defaults.
pub const SECTION: ConfigSection = ConfigSection {
    name: "e2b",
    settings: &[
        Setting::new("e2b.apiKey", &["CRABBOX_E2B_API_KEY", "E2B_API_KEY"]).secret(),
        Setting::new("e2b.apiUrl", &["CRABBOX_E2B_API_URL", "E2B_API_URL"]).flag(
            "e2b-api-url",
            "URL",
            "E2B API URL [env: CRABBOX_E2B_API_URL, E2B_API_URL]",
        ),
        Setting::new("e2b.domain", &["CRABBOX_E2B_DOMAIN", "E2B_DOMAIN"]).flag(
            "e2b-domain",
            "DOMAIN",
            "E2B domain [env: CRABBOX_E2B_DOMAIN, E2B_DOMAIN]",
        ),
        Setting::new(
            "e2b.sandboxUrl",
            &["CRABBOX_E2B_SANDBOX_URL", "E2B_SANDBOX_URL"],
        )
        .flag(
            "e2b-sandbox-url",
            "URL",
            "One envd base URL for every sandbox [env: CRABBOX_E2B_SANDBOX_URL, E2B_SANDBOX_URL]",
        ),
        Setting::new("e2b.template", &["CRABBOX_E2B_TEMPLATE"]).flag(
            "e2b-template",
            "TEMPLATE",
            "E2B template [env: CRABBOX_E2B_TEMPLATE]",
        ),
        Setting::new("e2b.workdir", &["CRABBOX_E2B_WORKDIR"]).flag(
            "e2b-workdir",
            "DIR",
            "Workdir inside the sandbox; relative paths are under the user's home [env: CRABBOX_E2B_WORKDIR]",
        ),
        Setting::new("e2b.user", &["CRABBOX_E2B_USER"]).flag(
            "e2b-user",
            "USER",
            "Sandbox user (template default `user`) [env: CRABBOX_E2B_USER]",
        ),
        Setting::new("e2b.network.allowInternet", &["CRABBOX_E2B_ALLOW_INTERNET"]).flag(
            "e2b-allow-internet",
            "BOOL",
            "New sandboxes may reach the internet (false: deny all egress but --e2b-allow-out) \
             [env: CRABBOX_E2B_ALLOW_INTERNET]",
        ),
        Setting::new("e2b.network.allowOut", &["CRABBOX_E2B_ALLOW_OUT"])
            .list()
            .flag(
                "e2b-allow-out",
                "HOST",
                "Egress destination new sandboxes may always reach: domain (*.example.com), \
                 IP or CIDR; repeatable [env: CRABBOX_E2B_ALLOW_OUT, comma-separated]",
            ),
        Setting::new("e2b.network.denyOut", &["CRABBOX_E2B_DENY_OUT"])
            .list()
            .flag(
                "e2b-deny-out",
                "CIDR",
                "Egress destination new sandboxes may not reach: IP or CIDR; repeatable \
                 [env: CRABBOX_E2B_DENY_OUT, comma-separated]",
            ),
        Setting::new("e2b.maxTtl", &["CRABBOX_E2B_MAX_TTL"]),
        Setting::new("e2b.controlTimeout", &["CRABBOX_E2B_CONTROL_TIMEOUT"]),
        Setting::new("e2b.retryAttempts", &["CRABBOX_E2B_RETRY_ATTEMPTS"]),
        Setting::new("e2b.retryMaxWait", &["CRABBOX_E2B_RETRY_MAX_WAIT"]),
    ],
    defaults_yaml: include_str!("defaults.yaml"),
};

/// The `e2b` section as configured (defaults < files < environment < flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct E2bSettings {
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub api_url: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub sandbox_url: String,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub user: String,
    /// Egress rules of new sandboxes; checked by [`crate::network::rules`].
    #[serde(default)]
    pub network: crate::network::NetworkSettings,
    #[serde(
        default = "default_max_ttl",
        deserialize_with = "crabbox_core::config::de_duration"
    )]
    pub max_ttl: Duration,
    /// Timeout of one control-plane call.
    #[serde(
        default = "default_control_timeout",
        deserialize_with = "crabbox_core::config::de_duration"
    )]
    pub control_timeout: Duration,
    /// Attempts of an idempotent control-plane call, the first included.
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: u32,
    /// The longest wait before a retry, whatever `Retry-After` asks.
    #[serde(
        default = "default_retry_max_wait",
        deserialize_with = "crabbox_core::config::de_duration"
    )]
    pub retry_max_wait: Duration,
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_control_timeout() -> Duration {
    crate::control::CONTROL_TIMEOUT
}

fn default_retry_attempts() -> u32 {
    crate::retry::RetryPolicy::default().max_attempts
}

fn default_retry_max_wait() -> Duration {
    crate::retry::RetryPolicy::default().max_delay
}

pub const DEFAULT_API_URL: &str = "https://api.e2b.app";
pub const DEFAULT_DOMAIN: &str = "e2b.app";

/// Where to talk to E2B, checked.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Control plane base, without a trailing slash (also the claims' endpoint scope).
    pub api_url: String,
    /// Domain of per-sandbox envd hosts (`49983-<id>.<domain>`), unless `sandbox_url` is set.
    pub domain: String,
    /// One envd base for every sandbox, routed by the `E2b-Sandbox-Id` header.
    pub sandbox_url: Option<String>,
}

/// The keys a repository config must not point elsewhere while the key comes from the user.
const REDIRECT_KEYS: &[(&str, &str)] = &[
    ("e2b.apiUrl", DEFAULT_API_URL),
    ("e2b.domain", DEFAULT_DOMAIN),
    ("e2b.sandboxUrl", ""),
];

/// The API key, or a usage error naming the variables that provide it.
pub fn api_key(settings: &E2bSettings) -> Result<Secret> {
    match settings.api_key.as_ref().map(|k| k.expose().trim()) {
        Some(k) if !k.is_empty() => Ok(Secret::new(k)),
        _ => Err(Error::Usage(
            "no E2B API key: set E2B_API_KEY or CRABBOX_E2B_API_KEY in the environment".into(),
        )),
    }
}

/// Refuses a repository config (which comes with a clone) that sends E2B traffic elsewhere
/// while the API key comes from the user's environment: the repo could steal the key.
pub fn refuse_repo_redirect(cfg: &LoadedConfig, settings: &E2bSettings) -> Result<()> {
    let key_from_user = !matches!(
        cfg.origin("e2b.apiKey"),
        Some(Origin::RepoFile { .. }) | None
    );
    if !key_from_user {
        return Ok(());
    }
    for (key, default) in REDIRECT_KEYS {
        let Some(Origin::RepoFile { path }) = cfg.origin(key) else {
            continue;
        };
        let value = match *key {
            "e2b.apiUrl" => &settings.api_url,
            "e2b.domain" => &settings.domain,
            _ => &settings.sandbox_url,
        };
        if value.trim().trim_end_matches('/') == *default {
            continue;
        }
        return Err(Error::Usage(format!(
            "repository config {} sets `{key}` while the E2B API key comes from your environment; \
             a cloned repository must not redirect your key. Set it in your user config or \
             with CRABBOX_{} instead",
            path.display(),
            env_suffix(key)
        )));
    }
    Ok(())
}

fn env_suffix(key: &str) -> &'static str {
    match key {
        "e2b.apiUrl" => "E2B_API_URL",
        "e2b.domain" => "E2B_DOMAIN",
        _ => "E2B_SANDBOX_URL",
    }
}

/// Resolves and checks the endpoints. An explicitly configured domain with the default API
/// URL derives `https://api.<domain>`, as E2B's SDKs do.
pub fn endpoints(cfg: &LoadedConfig, settings: &E2bSettings) -> Result<Endpoints> {
    let domain = match settings.domain.trim() {
        "" => DEFAULT_DOMAIN.to_string(),
        d => d.to_string(),
    };
    check_domain(&domain)?;
    let api_default = matches!(cfg.origin("e2b.apiUrl"), Some(Origin::Default) | None);
    let raw_api = settings.api_url.trim();
    let api_url = if raw_api.is_empty() || (api_default && domain != DEFAULT_DOMAIN) {
        format!("https://api.{domain}")
    } else {
        raw_api.to_string()
    };
    let api_url = check_url("e2b.apiUrl", &api_url)?;
    let sandbox_url = match settings.sandbox_url.trim() {
        "" => None,
        s => Some(check_url("e2b.sandboxUrl", s)?),
    };
    Ok(Endpoints {
        api_url,
        domain,
        sandbox_url,
    })
}

/// Whether a host is loopback: 127.0.0.0/8, ::1, or `localhost`.
pub fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Parses a base URL: `https`, or `http` to a loopback host. Returns it without the trailing
/// slash, and without query or fragment.
pub fn check_url(key: &str, raw: &str) -> Result<String> {
    let url = Url::parse(raw)
        .map_err(|e| Error::Usage(format!("`{key}` is not a valid URL ({raw:?}): {e}")))?;
    let host = url
        .host()
        .ok_or_else(|| Error::Usage(format!("`{key}` has no host: {raw:?}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(Error::Usage(format!(
                "`{key}` uses plain http to {host}: the API key and access tokens would travel \
                 in clear; use https (plain http is only allowed to 127.0.0.1, ::1 or localhost)"
            )))
        }
        other => {
            return Err(Error::Usage(format!(
                "`{key}` must be an https URL, not {other}: {raw:?}"
            )))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Usage(format!(
            "`{key}` must not carry credentials in the URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Usage(format!(
            "`{key}` must not have a query or fragment: {raw:?}"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn check_domain(domain: &str) -> Result<()> {
    let ok = domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && !domain.starts_with('.')
        && !domain.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "`e2b.domain` must be a host name like e2b.app, not {domain:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_accepted_and_trailing_slash_dropped() {
        assert_eq!(
            check_url("k", "https://api.e2b.app/").unwrap(),
            "https://api.e2b.app"
        );
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:3000",
            "http://127.9.8.7",
            "http://[::1]:80/",
            "http://localhost:1",
            "http://LOCALHOST",
        ] {
            assert!(check_url("k", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1",
            "http://api.e2b.app",
            "http://128.0.0.1",
            "http://[::2]",
            "http://localhost.evil.com",
            "ftp://127.0.0.1",
            "https://user:pw@api.e2b.app",
            "not a url",
        ] {
            let err = check_url("e2b.apiUrl", bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn secret_is_masked_in_debug_and_scrub() {
        let s = Secret::new("e2b_abcdef");
        assert_eq!(format!("{s:?}"), "Secret(****)");
        assert_eq!(s.scrub("bad key e2b_abcdef!"), "bad key ****!");
    }

    #[test]
    fn settings_debug_hides_the_key() {
        let s: E2bSettings = serde_json::from_value(serde_json::json!({
            "apiKey": "e2b_hidden_key", "apiUrl": "https://api.e2b.app", "maxTtl": "24h"
        }))
        .unwrap();
        assert_eq!(s.max_ttl, Duration::from_secs(86400));
        let text = format!("{s:?}");
        assert!(!text.contains("e2b_hidden_key"), "{text}");
    }

    #[test]
    fn domain_must_be_a_host_name() {
        assert!(check_domain("e2b.app").is_ok());
        assert!(check_domain("localhost:3000").is_ok());
        assert!(check_domain("evil.com/x").is_err());
        assert!(check_domain("a b").is_err());
    }
}
