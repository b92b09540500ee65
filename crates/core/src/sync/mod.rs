//! What gets synced to a box and how it travels.
//!
//! `manifest` chooses the files (git-tracked plus untracked-not-ignored, minus excludes);
//! `archive` turns a manifest into a streamed tar+gzip and unpacks one safely on the box side;
//! `state` remembers what was last synced to a lease so a warm sync sends only what changed;
//! `plan` turns the two into what one sync sends and deletes.

mod archive;
mod manifest;
mod plan;
mod state;

pub use archive::{extract_archive, write_archive, ArchiveStats};
pub use manifest::git_root as manifest_git_root;
pub(crate) use manifest::git_root;
pub use manifest::{EntryKind, SyncEntry, SyncLimits, SyncManifest, SyncOptions};
pub use plan::{is_safe_relative, SyncPlan};
pub use state::{SyncDelta, SyncState};
