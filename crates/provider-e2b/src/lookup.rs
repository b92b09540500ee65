//! Finding a crabbox sandbox that no claim of this machine names: by its sandbox id (`run
//! --id`, `status --id`), or also by the lease id and slug in its tags (`stop --reclaim`).

use crabbox_core::lease;
use crabbox_core::provider::RemoteBox;
use crabbox_core::{Error, Result};

use crate::metadata;
use crate::metadata::{detail_box, listed_box, not_crabbox};
use crate::provider::E2bProvider;

/// A crabbox sandbox by raw sandbox id or `e2b_<id>`; `None` when there is none.
pub async fn find_by_id(p: &E2bProvider, id: &str) -> Result<Option<RemoteBox>> {
    if lease::is_lease_id(id) {
        return Ok(None);
    }
    let raw = id.strip_prefix("e2b_").unwrap_or(id);
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Ok(None);
    }
    let Some(detail) = p.control.get(raw).await? else {
        return Ok(None);
    };
    if !metadata::is_crabbox(&detail.metadata) {
        return Err(not_crabbox(raw));
    }
    p.remember(&detail);
    Ok(Some(detail_box(&detail)))
}

/// A crabbox sandbox named by lease id, slug, sandbox id or `e2b_<id>`, found through E2B's
/// list rather than a local claim. A slug is only unique per machine, so one that names
/// several sandboxes is refused.
pub async fn find_by_tags(p: &E2bProvider, id: &str) -> Result<Option<RemoteBox>> {
    let raw = id.strip_prefix("e2b_").unwrap_or(id);
    let listed = p.crabbox_sandboxes().await?;
    // A sandbox id or a lease id names one sandbox.
    if let Some(s) = listed
        .iter()
        .find(|s| s.sandbox_id == raw || s.metadata.get("lease").map(String::as_str) == Some(id))
    {
        return Ok(Some(listed_box(s)));
    }
    if lease::is_lease_id(id) {
        return Ok(None);
    }
    let by_slug: Vec<_> = listed
        .iter()
        .filter(|s| s.metadata.get("slug").map(String::as_str) == Some(id))
        .collect();
    if by_slug.len() > 1 {
        let names = by_slug
            .iter()
            .map(|s| {
                format!(
                    "{} (lease {})",
                    s.sandbox_id,
                    s.metadata.get("lease").map_or("-", String::as_str)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Usage(p.control.secrets().scrub(&format!(
            "slug {id:?} names {} crabbox sandboxes on {} (slugs are only unique per machine): \
             {names}; name the one to reclaim by its sandbox id or lease id",
            by_slug.len(),
            p.endpoint
        ))));
    }
    if let Some(s) = by_slug.first() {
        return Ok(Some(listed_box(s)));
    }
    // Paused or otherwise unlisted: a direct lookup by sandbox id.
    match find_by_id(p, id).await {
        Err(e) if matches!(e.root(), Error::NotOurs(_)) => Ok(None),
        other => other,
    }
}
