//! [`Secret`]: an API key or token. It prints, debugs and serialises as `****`, so a secret
//! in a struct cannot reach a log, an error, a claim file or `--json` output by accident;
//! [`Secret::expose`] is the one way to the value, for a request header.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a secret shows instead of its value.
pub const REDACTED: &str = "****";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for a request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret masked. Secrets shorter than 4 bytes are
    /// left alone: masking them would mangle ordinary text and hide nothing.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, REDACTED)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_its_value() {
        let s = Secret::new("e2b_abcdef0123");
        assert_eq!(format!("{s:?}"), "Secret(****)");
        assert_eq!(s.to_string(), "****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"****\"");
        #[derive(Debug, Deserialize)]
        struct Holder {
            #[allow(dead_code)]
            key: Option<Secret>,
        }
        let h: Holder = serde_json::from_str(r#"{"key":"e2b_abcdef0123"}"#).unwrap();
        assert!(!format!("{h:?}").contains("abcdef"));
        assert_eq!(h.key.unwrap().expose(), "e2b_abcdef0123");
        assert_eq!(s.scrub("key e2b_abcdef0123!"), "key ****!");
    }
}
