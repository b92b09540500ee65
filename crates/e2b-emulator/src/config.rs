//! Emulator settings and their validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default largest sandbox timeout, in seconds (E2B's base tier).
pub const DEFAULT_MAX_TIMEOUT_SECS: u64 = 3600;
/// Default sandbox timeout when the create body has none (the SDK's default).
pub const DEFAULT_SANDBOX_TIMEOUT_SECS: u64 = 300;

/// How an emulator instance is set up.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Address to listen on; must be loopback. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The only API key the control plane accepts.
    pub api_key: String,
    /// Where sandbox files live. `None`: a fresh temporary directory, removed on exit.
    pub state_dir: Option<PathBuf>,
    /// Largest accepted sandbox timeout.
    pub max_timeout: Duration,
    /// Upper bound on the keepalive interval of process streams. The client asks
    /// for one with `Keepalive-Ping-Interval` (seconds); the smaller wins.
    pub max_keepalive_interval: Duration,
    /// Templates `GET /templates/aliases/{alias}` knows (default: `base`). Creates accept
    /// any template id whatever this says.
    pub templates: Vec<String>,
}

impl EmulatorConfig {
    /// A config listening on `127.0.0.1:0` with the given API key.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: api_key.into(),
            state_dir: None,
            max_timeout: Duration::from_secs(DEFAULT_MAX_TIMEOUT_SECS),
            max_keepalive_interval: Duration::from_secs(50),
            templates: vec![crabbox_e2b_wire::control::DEFAULT_TEMPLATE.to_string()],
        }
    }
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "refusing to listen on {0}: the emulator serves API keys and access tokens in clear \
         text and only listens on loopback (127.0.0.0/8 or ::1)"
    )]
    NotLoopback(SocketAddr),
    #[error("the API key must not be empty")]
    EmptyApiKey,
}

impl EmulatorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() {
            return Err(ConfigError::NotLoopback(self.listen));
        }
        if self.api_key.is_empty() {
            return Err(ConfigError::EmptyApiKey);
        }
        Ok(())
    }
}
