//! The metadata tags that mark a sandbox as Crabbox's, the ownership checks built on them,
//! and a sandbox as the engine sees it ([`RemoteBox`], read from its tags).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crabbox_core::provider::RemoteBox;
use crabbox_core::Error;
use crabbox_e2b_wire::control::{ListedSandbox, SandboxDetail, SandboxState};

/// Longest metadata value E2B accepts from us.
pub const MAX_VALUE_LEN: usize = 63;

/// The list filter: only sandboxes Crabbox made for provider e2b.
pub fn crabbox_filter() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("crabbox".to_string(), "true".to_string()),
        ("provider".to_string(), "e2b".to_string()),
    ])
}

/// Keeps `[A-Za-z0-9_.-]`, replacing anything else with `_`, and cuts at 63 characters.
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_VALUE_LEN)
        .collect()
}

/// What goes into a new sandbox's tags.
pub struct Tags<'a> {
    pub lease_id: &'a str,
    pub slug: &'a str,
    pub keep: bool,
    pub ttl: Duration,
    pub repo: Option<&'a std::path::Path>,
    pub workdir: &'a str,
    pub template: &'a str,
}

impl Tags<'_> {
    pub fn build(&self) -> BTreeMap<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let repo = self
            .repo
            .and_then(|r| r.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut tags = crabbox_filter();
        let mut put = |k: &str, v: &str| {
            tags.insert(k.to_string(), sanitize(v));
        };
        put("lease", self.lease_id);
        put("slug", self.slug);
        put("keep", if self.keep { "true" } else { "false" });
        put("created_at", &compact_utc(now));
        put("expires_at", &compact_utc(now + self.ttl));
        put("repo", &repo);
        put("workdir", self.workdir);
        put("template", self.template);
        tags
    }
}

/// `20240131T235959Z`: ISO 8601 basic format, which survives sanitizing unchanged.
fn compact_utc(since_epoch: Duration) -> String {
    let secs = i64::try_from(since_epoch.as_secs()).unwrap_or(0);
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The sandbox says it is Crabbox's, for provider e2b.
pub fn is_crabbox(meta: &BTreeMap<String, String>) -> bool {
    meta.get("crabbox").map(String::as_str) == Some("true")
        && meta.get("provider").map(String::as_str) == Some("e2b")
}

/// The sandbox is the one this lease created.
pub fn belongs_to(meta: &BTreeMap<String, String>, lease_id: &str) -> bool {
    is_crabbox(meta) && meta.get("lease").map(String::as_str) == Some(&sanitize(lease_id))
}

/// A listed sandbox as the engine sees it.
pub(crate) fn listed_box(s: &ListedSandbox) -> RemoteBox {
    remote_box(
        &s.sandbox_id,
        s.state,
        &s.metadata,
        &s.started_at,
        &s.end_at,
    )
}

/// A sandbox's detail as the engine sees it, with its egress rules (`network`).
pub(crate) fn detail_box(d: &SandboxDetail) -> RemoteBox {
    let mut remote = remote_box(
        &d.sandbox_id,
        d.state,
        &d.metadata,
        &d.started_at,
        &d.end_at,
    );
    if let Some(network) = crate::network::status_details(d) {
        remote.details.insert("network".into(), network);
    }
    remote
}

pub(crate) fn not_crabbox(sandbox_id: &str) -> Error {
    Error::NotOurs(format!(
        "sandbox {sandbox_id} was not created by crabbox for provider e2b (its metadata lacks \
         crabbox=true, provider=e2b); refusing to use it"
    ))
}

/// A sandbox as the engine sees it.
pub(crate) fn remote_box(
    sandbox_id: &str,
    state: SandboxState,
    meta: &BTreeMap<String, String>,
    started_at: &str,
    end_at: &str,
) -> RemoteBox {
    RemoteBox {
        remote_id: sandbox_id.to_string(),
        lease_id: meta.get("lease").cloned(),
        slug: meta.get("slug").cloned(),
        state: state.as_str().to_string(),
        running: state == SandboxState::Running,
        workdir: meta.get("workdir").cloned(),
        created_at: Some(started_at.to_string()),
        expires_at: Some(end_at.to_string()),
        details: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_safe_chars_and_cuts_at_63() {
        assert_eq!(sanitize("cbx_0123456789ab"), "cbx_0123456789ab");
        assert_eq!(sanitize("/home/user/crab box"), "_home_user_crab_box");
        assert_eq!(sanitize("a=b&c;d\u{e9}"), "a_b_c_d_");
        let long = "x".repeat(100);
        assert_eq!(sanitize(&long).len(), 63);
    }

    #[test]
    fn tags_mark_the_sandbox_and_every_value_is_safe() {
        let tags = Tags {
            lease_id: "cbx_0123456789ab",
            slug: "blue-lobster",
            keep: true,
            ttl: Duration::from_secs(60),
            repo: Some(std::path::Path::new("/src/my repo")),
            workdir: "/home/user/crabbox",
            template: "base",
        }
        .build();
        assert!(is_crabbox(&tags));
        assert!(belongs_to(&tags, "cbx_0123456789ab"));
        assert!(!belongs_to(&tags, "cbx_ffffffffffff"));
        assert_eq!(tags["repo"], "my_repo");
        assert_eq!(tags["keep"], "true");
        for key in [
            "crabbox",
            "provider",
            "lease",
            "slug",
            "keep",
            "created_at",
            "expires_at",
            "repo",
            "workdir",
            "template",
        ] {
            let v = &tags[key];
            assert!(v.len() <= 63, "{key}");
            assert_eq!(&sanitize(v), v, "{key} must already be sanitized");
        }
        assert_eq!(tags["created_at"].len(), "20240131T235959Z".len());
    }
}
