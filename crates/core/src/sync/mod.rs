//! What gets synced to a box and how it travels.
//!
//! `manifest` chooses the files (git-tracked plus untracked-not-ignored, minus excludes);
//! `archive` turns a manifest into a streamed tar (gzip, zstd or stored) and unpacks one
//! safely on the box side; `pack` cuts what one sync sends into chunks that travel side by side;
//! `record` is what the last completed sync put on a box, kept on the box; `plan` compares
//! the manifest with a scan of the box and says what one sync sends, removes and deletes.

mod archive;
mod listing_cache;
mod manifest;
mod pack;
mod plan;
mod record;

#[cfg(test)]
mod prop_tests;

pub use archive::{
    entry_mtime_ns, extract_archive, extract_archive_with, write_archive, write_archive_with,
    ArchiveStats, Codec,
};
pub use manifest::git_root as manifest_git_root;
pub(crate) use manifest::git_root;
pub use manifest::{EntryKind, SyncEntry, SyncLimits, SyncManifest, SyncOptions};
pub use pack::{split, ChunkSpec};
pub use plan::{
    is_safe_relative, same_mtime, KeptEntry, PlanOptions, RemoteEntry, RemoteKind, RemoteTree,
    SyncOp, SyncPlan,
};
pub use record::{ancestors, parent, SyncRecord};

/// The permission bits a sync carries: everything but setuid and setgid, which a repository's
/// files must not hand to whoever runs them on a box (the sticky bit is no privilege).
pub const SYNCED_MODE_BITS: u32 = 0o1777;
