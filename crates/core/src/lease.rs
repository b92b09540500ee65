//! Lease ids (`cbx_` + 12 lowercase hex) and their human slugs (`blue-lobster`).

use sha2::{Digest, Sha256};

pub const LEASE_PREFIX: &str = "cbx_";

const ADJECTIVES: &[&str] = &[
    "amber", "azure", "blue", "brave", "brisk", "calm", "coral", "crisp", "dusky", "eager",
    "fuzzy", "gentle", "gold", "green", "happy", "jolly", "keen", "lively", "lucky", "mellow",
    "misty", "nimble", "olive", "plucky", "quick", "quiet", "rapid", "rosy", "rusty", "sandy",
    "shiny", "silver", "sleek", "snappy", "steady", "sunny", "swift", "tidy", "violet", "witty",
];

const CRUSTACEANS: &[&str] = &[
    "lobster",
    "crab",
    "shrimp",
    "prawn",
    "crayfish",
    "krill",
    "barnacle",
    "copepod",
    "isopod",
    "amphipod",
    "langoustine",
    "hermit",
    "fiddler",
    "mantis",
    "scampi",
    "yabby",
];

/// A fresh random lease id.
pub fn new_lease_id() -> String {
    let bytes: [u8; 6] = rand::random();
    format!("{LEASE_PREFIX}{}", hex::encode(bytes))
}

/// `cbx_` followed by exactly 12 lowercase hex digits.
pub fn is_lease_id(s: &str) -> bool {
    s.strip_prefix(LEASE_PREFIX).is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The slug derived from a lease id: stable, `adjective-crustacean`.
pub fn base_slug(lease_id: &str) -> String {
    let h = Sha256::digest(lease_id.as_bytes());
    let adj = ADJECTIVES[usize::from(u16::from_be_bytes([h[0], h[1]])) % ADJECTIVES.len()];
    let animal = CRUSTACEANS[usize::from(u16::from_be_bytes([h[2], h[3]])) % CRUSTACEANS.len()];
    format!("{adj}-{animal}")
}

/// The slug for a lease given the slugs already taken locally: the base slug, or on collision
/// the base slug plus a 4-hex suffix derived from the id (random if that collides too).
pub fn unique_slug(lease_id: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let base = base_slug(lease_id);
    if !taken(&base) {
        return base;
    }
    let h = Sha256::digest(lease_id.as_bytes());
    let derived = format!("{base}-{}", hex::encode(&h[4..6]));
    if !taken(&derived) {
        return derived;
    }
    loop {
        let candidate = format!("{base}-{}", hex::encode(rand::random::<[u8; 2]>()));
        if !taken(&candidate) {
            return candidate;
        }
    }
}

/// A slug the user chose with `--slug`: lowercase letters, digits and dashes.
pub fn validate_slug(slug: &str) -> Result<(), String> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && !is_lease_id(slug);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid slug {slug:?}: use 1-63 lowercase letters, digits and inner dashes"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn new_ids_have_the_canonical_shape_and_differ() {
        let ids: HashSet<String> = (0..1000).map(|_| new_lease_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(is_lease_id(id), "{id}");
        }
    }

    #[test]
    fn lease_id_shape_is_strict() {
        assert!(is_lease_id("cbx_0123456789ab"));
        assert!(!is_lease_id("cbx_0123456789AB"));
        assert!(!is_lease_id("cbx_0123456789a"));
        assert!(!is_lease_id("cbx_0123456789abc"));
        assert!(!is_lease_id("cbx_0123456789ag"));
        assert!(!is_lease_id("blue-lobster"));
    }

    #[test]
    fn slug_is_stable_adjective_crustacean() {
        let s = base_slug("cbx_0123456789ab");
        assert_eq!(s, base_slug("cbx_0123456789ab"));
        let (adj, animal) = s.split_once('-').unwrap();
        assert!(ADJECTIVES.contains(&adj), "{s}");
        assert!(CRUSTACEANS.contains(&animal), "{s}");
    }

    #[test]
    fn colliding_slug_gets_a_four_hex_suffix() {
        let id = "cbx_0123456789ab";
        let base = base_slug(id);
        let taken = |s: &str| s == base;
        let s = unique_slug(id, &taken);
        let suffix = s.strip_prefix(&format!("{base}-")).expect("suffix");
        assert_eq!(suffix.len(), 4);
        assert!(suffix.bytes().all(|b| b.is_ascii_hexdigit()));
        // Both the base and the derived suffix taken: still unique.
        let taken2 = |c: &str| c == base || c == s;
        let s2 = unique_slug(id, &taken2);
        assert_ne!(s2, s);
        assert_ne!(s2, base);
    }

    #[test]
    fn user_slugs_are_validated() {
        assert!(validate_slug("my-box-1").is_ok());
        assert!(validate_slug("My-Box").is_err());
        assert!(validate_slug("-x").is_err());
        assert!(validate_slug("a/b").is_err());
        assert!(validate_slug("cbx_0123456789ab").is_err());
    }
}
