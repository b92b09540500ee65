//! [`Secret`]: an API key or token. It prints, debugs and serialises as `****`, so a secret
//! in a struct cannot reach a log, an error, a claim file or `--json` output by accident;
//! [`Secret::expose`] is the one way to the value, for a request header.
//!
//! A server may still quote a secret back in an error; [`scrub`] masks it in every form a
//! server might quote it in, and a [`Scrubber`] holds every secret a client has seen so that
//! each message built from a server's answer is scrubbed of all of them.

use std::sync::{Arc, RwLock};

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

    /// `text` with every occurrence of the secret masked, in any of the forms [`scrub`]
    /// knows. Secrets shorter than 4 bytes are left alone: masking them would mangle
    /// ordinary text and hide nothing.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, [self])
    }

    /// Every way a server may quote this secret: as it is and without a short `word_` prefix
    /// (`e2b_`), each raw, JSON-escaped (as serde does, with `\/`, and with every other
    /// character a `\uXXXX` escape; and each of those quoted once more, backslashes doubled)
    /// and percent-encoded (reserved characters, all but letters and digits, or every byte;
    /// upper- or lower-case hex; `+` for a space).
    fn forms(&self) -> Vec<String> {
        if self.0.len() < 4 {
            return Vec::new();
        }
        let mut bases = vec![self.0.as_str()];
        let mut rest = self.0.as_str();
        while let Some((prefix, tail)) = rest.split_once('_') {
            let short_word = (1..=8).contains(&prefix.len())
                && prefix.bytes().all(|b| b.is_ascii_alphanumeric());
            if !short_word || tail.len() < 8 {
                break;
            }
            bases.push(tail);
            rest = tail;
        }
        let mut forms = Vec::new();
        for base in bases {
            forms.push(base.to_string());
            let json = serde_json::to_string(base).expect("a string serializes");
            let json = &json[1..json.len() - 1];
            forms.push(json.to_string());
            forms.push(json.replace('/', "\\/"));
            forms.push(json_escape_all(base, false));
            forms.push(json_escape_all(base, true));
            let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-_.~".contains(&b);
            for upper in [false, true] {
                let reserved = percent_encode(base, upper, unreserved);
                forms.push(reserved.replace("%20", "+"));
                forms.push(reserved);
                forms.push(percent_encode(base, upper, |b| b.is_ascii_alphanumeric()));
                forms.push(percent_encode(base, upper, |_| false));
            }
        }
        // An escaped form quoted once more (a parser's complaint, a debug dump) doubles its
        // backslashes.
        let requoted: Vec<String> = forms
            .iter()
            .filter(|f| f.contains('\\'))
            .map(|f| f.replace('\\', "\\\\"))
            .collect();
        forms.extend(requoted);
        forms
    }
}

/// `text` with each of `secrets`, in every form a server may quote it in
/// ([`Secret::scrub`]), replaced by [`REDACTED`]. The one scrubbing function: every message
/// built from a server's answer goes through it.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut forms: Vec<String> = secrets.into_iter().flat_map(Secret::forms).collect();
    // Longest first, so a whole secret is masked before the tail a shorter form matches.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
        .iter()
        .filter(|f| !f.is_empty())
        .fold(text.to_string(), |text, form| {
            text.replace(form.as_str(), REDACTED)
        })
}

/// Every character but ASCII letters and digits as a JSON `\uXXXX` escape.
fn json_escape_all(text: &str, upper: bool) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            continue;
        }
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            if upper {
                out.push_str(&format!("\\u{unit:04X}"));
            } else {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Percent-encoding of `text`, keeping the bytes `keep` says.
fn percent_encode(text: &str, upper: bool, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if keep(byte) {
            out.push(byte as char);
        } else if upper {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

/// The secrets a client holds, shared between the clients that may hear them quoted back (an
/// API key, and the tokens the service hands out as it goes). Clones share one set.
#[derive(Clone, Default)]
pub struct Scrubber(Arc<RwLock<Vec<Secret>>>);

impl Scrubber {
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let s = Self::default();
        for secret in secrets {
            s.add(secret);
        }
        s
    }

    /// Adds a secret (once).
    pub fn add(&self, secret: Secret) {
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        if !all.contains(&secret) {
            all.push(secret);
        }
    }

    /// `text` scrubbed of every secret held ([`scrub`]).
    pub fn scrub(&self, text: &str) -> String {
        let all = self.0.read().unwrap_or_else(|e| e.into_inner());
        scrub(text, all.iter())
    }
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map(|all| all.len()).unwrap_or_default();
        write!(f, "Scrubber({n} secrets)")
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

    #[test]
    fn scrub_masks_every_form_a_server_may_quote() {
        let key = Secret::new("e2b_5ecre7/c0ffee+5ecre7");
        for quoted in [
            "e2b_5ecre7/c0ffee+5ecre7",
            "5ecre7/c0ffee+5ecre7",
            "e2b_5ecre7\\/c0ffee+5ecre7",
            "e2b\\u005f5ecre7\\u002fc0ffee\\u002b5ecre7",
            "e2b\\\\u005f5ecre7\\\\u002fc0ffee\\\\u002b5ecre7",
            "5ecre7\\u002Fc0ffee\\u002B5ecre7",
            "e2b_5ecre7%2Fc0ffee%2B5ecre7",
            "e2b_5ecre7%2fc0ffee%2b5ecre7",
            "e2b%5F5ecre7%2Fc0ffee%2B5ecre7",
            "5ecre7%2Fc0ffee%2B5ecre7",
            "%65%32%62%5F%35%65%63%72%65%37%2F%63%30%66%66%65%65%2B%35%65%63%72%65%37",
        ] {
            let text = format!("invalid key \"{quoted}\" (HTTP 401)");
            assert_eq!(
                key.scrub(&text),
                "invalid key \"****\" (HTTP 401)",
                "{quoted}"
            );
        }
        // A JSON-quoted secret with characters JSON must escape.
        let token = Secret::new("tok\"en\\value");
        let body = serde_json::json!({ "message": token.expose() }).to_string();
        assert_eq!(token.scrub(&body), r#"{"message":"****"}"#);
        // Short words are not a prefix worth stripping from; short tails are not masked.
        assert_eq!(
            Secret::new("ab_cdefgh").scrub("cdefgh ab_cdefgh"),
            "cdefgh ****"
        );
        assert_eq!(Secret::new("abc").scrub("abc"), "abc");
    }

    #[test]
    fn a_scrubber_masks_every_secret_it_was_given_and_debugs_none() {
        let s = Scrubber::new([Secret::new("e2b_0123456789")]);
        let other = s.clone();
        other.add(Secret::new("token-abcdef"));
        assert_eq!(
            s.scrub("e2b_0123456789 0123456789 token-abcdef token%2Dabcdef"),
            "**** **** **** ****"
        );
        assert_eq!(format!("{s:?}"), "Scrubber(2 secrets)");
    }
}
