//! Control-plane REST bodies (`https://api.<domain>`), camelCase as the service
//! writes them, plus the list endpoint's metadata filter encoding.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The envd version the emulator reports; `0.6.13` enables every SDK feature.
pub const EMULATED_ENVD_VERSION: &str = "0.6.13";
/// Default template of `POST /sandboxes`.
pub const DEFAULT_TEMPLATE: &str = "base";

/// `autoResume` of a create request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

fn default_template() -> String {
    DEFAULT_TEMPLATE.to_string()
}

/// Body of `POST /sandboxes` (v1) and `POST /v2/sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(
        rename = "templateID",
        alias = "templateId",
        default = "default_template"
    )]
    pub template_id: String,
    /// Seconds until the sandbox times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// The one snake_case field of the body.
    #[serde(
        rename = "allow_internet_access",
        alias = "allowInternetAccess",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    /// Pause instead of kill at timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause_memory: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<AutoResume>,
    /// v1 only; every sandbox is secured now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<serde_json::Value>,
}

impl Default for NewSandbox {
    fn default() -> Self {
        Self {
            template_id: default_template(),
            timeout: None,
            metadata: None,
            env_vars: None,
            allow_internet_access: None,
            auto_pause: None,
            auto_pause_memory: None,
            auto_resume: None,
            secure: None,
            network: None,
            volume_mounts: None,
            mcp: None,
        }
    }
}

/// Create/connect response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Nullable: written as `null` when absent.
    #[serde(default)]
    pub traffic_access_token: Option<String>,
    /// Nullable: `null` means "use the configured domain".
    #[serde(default)]
    pub domain: Option<String>,
}

/// `running` or `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Paused,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(SandboxState::Running),
            "paused" => Some(SandboxState::Paused),
            _ => None,
        }
    }
}

/// What happens at timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Kill,
    Pause,
}

/// `lifecycle` of a sandbox detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    pub on_timeout: OnTimeout,
}

/// `GET /sandboxes/{id}` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub end_at: String,
    pub envd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    pub state: SandboxState,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    /// The egress rules in force (absent when none were set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
}

/// One element of `GET /v2/sandboxes` (and v1 `GET /sandboxes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub started_at: String,
    pub end_at: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    pub state: SandboxState,
    pub envd_version: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Reads an absent or explicit `null` map as empty: a sandbox without metadata may come back
/// either way.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

/// `POST /sandboxes/{id}/timeout` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: u64,
}

/// `POST /v2/sandboxes/{id}/connect` (and v1) body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectSandboxRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `network` of a create request and of a sandbox detail, as far as the emulator and
/// crabbox read it (other fields, such as `dnsServers` or `rules`, are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// `false`: a port's URL needs the `e2b-traffic-access-token` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_traffic: Option<bool>,
    /// Egress destinations allowed even when denied otherwise: CIDR blocks, IP addresses or
    /// domain names (`example.com`, `*.example.com`). Allowed entries win over denied ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// Egress destinations denied: CIDR blocks or IP addresses only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
}

/// The CIDR block that stands for all IPv4 traffic: `allow_internet_access: false` is the
/// same as denying it.
pub const ALL_TRAFFIC: &str = "0.0.0.0/0";

/// Checks one `denyOut` entry: a CIDR block or an IP address (E2B takes no domain names
/// there).
pub fn check_deny_out(entry: &str) -> Result<(), String> {
    if is_ip_or_cidr(entry) {
        Ok(())
    } else {
        Err(format!(
            "denyOut entry {entry:?} is not an IP address or CIDR block (such as 10.0.0.0/8); \
             domain names can only be allowed, not denied"
        ))
    }
}

/// Checks one `allowOut` entry: a CIDR block, an IP address, or a domain name, optionally
/// with a leading `*.` (`example.com`, `*.example.com`).
pub fn check_allow_out(entry: &str) -> Result<(), String> {
    if is_ip_or_cidr(entry) || is_domain_pattern(entry) {
        Ok(())
    } else {
        Err(format!(
            "allowOut entry {entry:?} is not an IP address, CIDR block or domain name (such as \
             8.8.8.8, 10.0.0.0/8, example.com or *.example.com)"
        ))
    }
}

fn is_ip_or_cidr(entry: &str) -> bool {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => true,
        Some(p) => p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok_and(|n| n <= max),
    }
}

fn is_domain_pattern(entry: &str) -> bool {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `PUT /sandboxes/{id}/network` body (answered 204): replaces the sandbox's egress rules
/// whole, as E2B does (an absent list is an empty one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    /// The one snake_case field, as in the create body.
    #[serde(
        rename = "allow_internet_access",
        alias = "allowInternetAccess",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
}

/// `POST /sandboxes/{id}/pause` body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keep memory (the default) or the filesystem only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A snapshot: `POST /sandboxes/{id}/snapshots`' 201 answer and each element of
/// `GET /snapshots`. Its id is a template id: `templateID` of a create starts a sandbox
/// from it; `DELETE /templates/{id}` deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    #[serde(default)]
    pub names: Vec<String>,
}

/// `POST /sandboxes/{id}/fork` body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRequest {
    /// Seconds the forks live (the service's default is 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// 1..=20 (the service's default is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// Largest `count` of one fork request.
pub const MAX_FORK_COUNT: u32 = 20;
/// `timeout` of a fork request that names none.
pub const DEFAULT_FORK_TIMEOUT_SECS: u64 = 15;

/// One element of the fork answer: each fork succeeds or fails on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// The header a request to a sandbox port carries when the sandbox does not take public
/// traffic (`network.allowPublicTraffic: false`): the create answer's `trafficAccessToken`.
pub const TRAFFIC_ACCESS_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// The host a sandbox's port is reached at: `<port>-<sandboxID>.<domain>`.
pub fn port_host(port: u16, sandbox_id: &str, domain: &str) -> String {
    format!("{port}-{sandbox_id}.{domain}")
}

/// The port and sandbox id of a `<port>-<sandboxID>.<domain>` host (a `:port` suffix
/// ignored), or `None` when the host is not one.
pub fn parse_port_host(host: &str) -> Option<(u16, &str)> {
    let host = host.split(':').next()?;
    let (label, _domain) = host.split_once('.')?;
    let (port, id) = label.split_once('-')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((port.parse().ok()?, id))
}

/// Every control-plane error body: `{"code": <http status>, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Encodes a metadata filter as the value of the list endpoint's `metadata`
/// query parameter: `k=v&k2=v2` with each key and value percent-encoded. The
/// caller's URL builder encodes the whole string once more as a query value.
pub fn encode_metadata_filter(filter: &BTreeMap<String, String>) -> String {
    filter
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes the `metadata` query parameter value (already query-decoded once) into
/// key/value pairs. Accepts both single- and double-encoded pairs, since the SDK
/// quotes each key and value before form-encoding them.
pub fn decode_metadata_filter(value: &str) -> Vec<(String, String)> {
    value
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(&percent_decode(&k.replace('+', " ")));
            let v = percent_decode(&percent_decode(&v.replace('+', " ")));
            (k, v)
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; malformed escapes are kept literally.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Exactly two hex digits (`u8::from_str_radix` would also take a sign: `%+5`).
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let (Some(hi), Some(lo)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_entries_are_checked() {
        for ok in ["10.0.0.0/8", "8.8.8.8", "::1", "2001:db8::/32", "0.0.0.0/0"] {
            assert!(check_deny_out(ok).is_ok(), "{ok}");
            assert!(check_allow_out(ok).is_ok(), "{ok}");
        }
        for ok in [
            "example.com",
            "*.example.com",
            "registry.npmjs.org",
            "localhost",
        ] {
            assert!(check_allow_out(ok).is_ok(), "{ok}");
            assert!(check_deny_out(ok).is_err(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "1.2.3.4/",
            "exa mple.com",
            "*",
            "a..b",
            "-a.com",
            "a/b",
        ] {
            assert!(check_allow_out(bad).is_err(), "{bad}");
            assert!(check_deny_out(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn network_update_and_detail_shapes() {
        let body = serde_json::to_value(NetworkUpdate {
            allow_out: Some(vec!["example.com".into()]),
            deny_out: Some(vec![ALL_TRAFFIC.into()]),
            allow_internet_access: Some(false),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"allowOut": ["example.com"], "denyOut": ["0.0.0.0/0"],
                               "allow_internet_access": false})
        );
        let net: NetworkConfig = serde_json::from_value(serde_json::json!({
            "allowOut": ["a.com"], "denyOut": [], "allowPublicTraffic": true, "dnsServers": []
        }))
        .unwrap();
        assert_eq!(net.allow_out.as_deref(), Some(&["a.com".to_string()][..]));
        assert_eq!(net.allow_public_traffic, Some(true));
    }
    use serde_json::json;

    /// The bodies of the lifecycle calls as the SDK (2.63) spells them: its models'
    /// `to_dict` keys (`SandboxForkRequest`, `SandboxSnapshotRequest`, `SnapshotInfo`,
    /// `SandboxForkResult`, `SandboxNetworkConfig`).
    #[test]
    fn lifecycle_bodies_have_the_sdk_field_names() {
        let fork = ForkRequest {
            timeout: Some(600),
            count: Some(3),
        };
        assert_eq!(
            serde_json::to_value(fork).unwrap(),
            json!({"timeout": 600, "count": 3})
        );
        let snap = SnapshotRequest {
            name: Some("deps".into()),
            memory: None,
        };
        assert_eq!(
            serde_json::to_value(&snap).unwrap(),
            json!({"name": "deps"})
        );
        let info: SnapshotInfo =
            serde_json::from_value(json!({"snapshotID": "s1", "names": ["deps"]})).unwrap();
        assert_eq!((info.snapshot_id.as_str(), info.names.len()), ("s1", 1));
        let results: Vec<ForkResult> = serde_json::from_value(json!([
            {"error": {"code": 429, "message": "too many"}},
        ]))
        .unwrap();
        assert_eq!(results[0].error.as_ref().unwrap().code, 429);
        let net: NetworkConfig =
            serde_json::from_value(json!({"allowPublicTraffic": false})).unwrap();
        assert_eq!(net.allow_public_traffic, Some(false));
        let pause = PauseRequest { memory: Some(true) };
        assert_eq!(
            serde_json::to_value(pause).unwrap(),
            json!({"memory": true})
        );
    }

    #[test]
    fn port_hosts_round_trip() {
        let host = port_host(8080, "iabc123", "e2b.app");
        assert_eq!(host, "8080-iabc123.e2b.app");
        assert_eq!(parse_port_host(&host), Some((8080, "iabc123")));
        assert_eq!(
            parse_port_host("8080-iabc123.e2b.app:443"),
            Some((8080, "iabc123"))
        );
        assert_eq!(parse_port_host("api.e2b.app"), None);
        assert_eq!(parse_port_host("x-iabc.e2b.app"), None);
        assert_eq!(parse_port_host("127.0.0.1:3000"), None);
    }

    #[test]
    fn percent_decode_takes_exactly_two_hex_digits_and_keeps_truncated_escapes() {
        for (text, decoded) in [
            ("a%41", "aA"),
            ("%41", "A"),
            ("a%4", "a%4"),
            ("a%", "a%"),
            ("%", "%"),
            ("%4%41", "%4A"),
            ("%+5x", "%+5x"),
            ("%-1", "%-1"),
            ("%zz", "%zz"),
            ("%e2%82%ac", "\u{20ac}"),
            ("100%", "100%"),
        ] {
            assert_eq!(percent_decode(text), decoded, "{text:?}");
        }
    }

    #[test]
    fn new_sandbox_reads_sdk_body() {
        let body = json!({
            "templateID": "base", "timeout": 300, "autoPause": false,
            "metadata": {"owner": "crabbox"}, "envVars": {"A": "1"},
            "allow_internet_access": true, "autoResume": {"enabled": false}
        });
        let parsed: NewSandbox = serde_json::from_value(body).unwrap();
        assert_eq!(parsed.template_id, "base");
        assert_eq!(parsed.timeout, Some(300));
        assert_eq!(parsed.allow_internet_access, Some(true));
        assert_eq!(parsed.env_vars.unwrap()["A"], "1");
        let empty: NewSandbox = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty.template_id, DEFAULT_TEMPLATE);
    }

    #[test]
    fn sandbox_writes_null_domain() {
        let sandbox = Sandbox {
            template_id: "base".into(),
            sandbox_id: "i123".into(),
            client_id: "emulator".into(),
            envd_version: EMULATED_ENVD_VERSION.into(),
            alias: None,
            envd_access_token: Some("tok".into()),
            traffic_access_token: None,
            domain: None,
        };
        let value = serde_json::to_value(&sandbox).unwrap();
        assert_eq!(value["domain"], serde_json::Value::Null);
        assert_eq!(value["sandboxID"], "i123");
        assert_eq!(value["envdAccessToken"], "tok");
    }

    #[test]
    fn metadata_filter_round_trips() {
        let mut filter = BTreeMap::new();
        filter.insert("run id".to_string(), "a&b=c".to_string());
        filter.insert("owner".to_string(), "crab".to_string());
        let encoded = encode_metadata_filter(&filter);
        let decoded = decode_metadata_filter(&encoded);
        assert_eq!(decoded.into_iter().collect::<BTreeMap<_, _>>(), filter);
    }

    #[test]
    fn metadata_filter_reads_sdk_double_encoding() {
        // The SDK quotes "a b" to "a%20b" and then form-encodes it to "a%2520b".
        assert_eq!(
            decode_metadata_filter("a%2520b=x%2Fy&k=v"),
            vec![
                ("a b".to_string(), "x/y".to_string()),
                ("k".into(), "v".into())
            ]
        );
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}

#[cfg(test)]
mod null_metadata_tests {
    use super::*;

    #[test]
    fn null_metadata_reads_as_empty() {
        let body = r#"{"templateID":"base","sandboxID":"i1","clientID":"c","startedAt":"2026-01-01T00:00:00Z",
            "endAt":"2026-01-01T01:00:00Z","cpuCount":2,"memoryMB":512,"diskSizeMB":1024,"state":"running",
            "envdVersion":"0.6.13","metadata":null}"#;
        let s: ListedSandbox = serde_json::from_str(body).unwrap();
        assert!(s.metadata.is_empty());
    }
}
