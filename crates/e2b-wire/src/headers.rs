//! The HTTP header names both planes use, and envd's user selection
//! (`Authorization: Basic base64("<user>:")`).
//!
//! Names are written in lowercase, as HTTP/2 sends them and as `http::HeaderName`
//! stores them (so `HeaderName::from_static` accepts them); header names are
//! case-insensitive, and HTTP/1.1 clients here send them lowercase too. The doc
//! comment of each gives the spelling E2B's documentation uses.

use base64::Engine as _;

/// `X-API-Key`: the API key on every control-plane request.
pub const API_KEY: &str = "x-api-key";
/// `X-Next-Token`: response header of `GET /v2/sandboxes` carrying the next page token.
pub const NEXT_TOKEN: &str = "x-next-token";
/// `E2b-Sandbox-Id`: the sandbox an envd request is for; E2B's proxy routes by it.
pub const SANDBOX_ID: &str = "e2b-sandbox-id";
/// `E2b-Sandbox-Port`: the sandbox port an envd request is for (envd's is 49983).
pub const SANDBOX_PORT: &str = "e2b-sandbox-port";
/// `X-Access-Token`: the sandbox's `envdAccessToken` on every envd request.
pub const ACCESS_TOKEN: &str = "x-access-token";
/// `Connect-Protocol-Version`: sent on every Connect RPC, with [`CONNECT_PROTOCOL_VERSION_1`].
pub const CONNECT_PROTOCOL_VERSION: &str = "connect-protocol-version";
/// The only value of [`CONNECT_PROTOCOL_VERSION`]: `1`.
pub const CONNECT_PROTOCOL_VERSION_1: &str = "1";
/// `Connect-Timeout-Ms`: an RPC's deadline in milliseconds; on `Process/Start` it bounds the process's life.
pub const CONNECT_TIMEOUT_MS: &str = "connect-timeout-ms";
/// `Keepalive-Ping-Interval`: seconds between keepalive events a stream's client asks for.
pub const KEEPALIVE_PING_INTERVAL: &str = "keepalive-ping-interval";

/// Scheme of the `Authorization` value that selects envd's user.
const BASIC: &str = "Basic ";

/// An `Authorization` value that is not `Basic <base64 of UTF-8>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Authorization header")]
pub struct InvalidUserAuth;

/// The `Authorization` value that selects `user` for an envd RPC: `Basic base64("<user>:")`.
pub fn encode_user(user: &str) -> String {
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
    format!("{BASIC}{credentials}")
}

/// The user an `Authorization` value written by [`encode_user`] selects: what comes before
/// the first `:` of the decoded credentials. `None` when it names no user (envd then uses its
/// default user). The scheme may be `Basic` or `basic`; any password is ignored.
pub fn decode_user(value: &str) -> Result<Option<String>, InvalidUserAuth> {
    let encoded = value
        .strip_prefix(BASIC)
        .or_else(|| value.strip_prefix("basic "))
        .ok_or(InvalidUserAuth)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| InvalidUserAuth)?;
    let decoded = String::from_utf8(decoded).map_err(|_| InvalidUserAuth)?;
    let name = decoded.split(':').next().unwrap_or("");
    Ok((!name.is_empty()).then(|| name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_encoding_round_trips() {
        for user in ["user", "root", "build-bot", "ünï"] {
            assert_eq!(decode_user(&encode_user(user)), Ok(Some(user.to_string())));
        }
        assert_eq!(decode_user(&encode_user("")), Ok(None), "no user named");
    }

    #[test]
    fn user_encoding_matches_the_sdk() {
        // base64("root:") and base64("user:"), as the official SDK sends them.
        assert_eq!(encode_user("root"), "Basic cm9vdDo=");
        assert_eq!(encode_user("user"), "Basic dXNlcjo=");
    }

    #[test]
    fn user_decoding_is_lenient_where_envd_is_and_strict_elsewhere() {
        assert_eq!(decode_user("basic cm9vdDo="), Ok(Some("root".into())));
        assert_eq!(decode_user("Basic  cm9vdDo= "), Ok(Some("root".into())));
        // base64("root:secret"): the password is ignored.
        assert_eq!(
            decode_user("Basic cm9vdDpzZWNyZXQ="),
            Ok(Some("root".into()))
        );
        assert_eq!(decode_user("Bearer cm9vdDo="), Err(InvalidUserAuth));
        assert_eq!(decode_user("Basic not base64!"), Err(InvalidUserAuth));
        assert_eq!(decode_user("Basic //79"), Err(InvalidUserAuth), "not UTF-8");
    }

    #[test]
    fn header_names_are_lowercase() {
        for name in [
            API_KEY,
            NEXT_TOKEN,
            SANDBOX_ID,
            SANDBOX_PORT,
            ACCESS_TOKEN,
            CONNECT_PROTOCOL_VERSION,
            CONNECT_TIMEOUT_MS,
            KEEPALIVE_PING_INTERVAL,
        ] {
            assert_eq!(name, name.to_ascii_lowercase());
        }
    }
}
