//! crabbox-core: the domain of crabbox, free of CLI and provider code.
//!
//! - [`provider`]: the `Provider` trait every backend implements, and its request/outcome types.
//! - [`config`]: layered configuration (defaults, files, environment, flags) with origins.
//! - [`env_policy`]: which of the caller's environment variables reach the remote command.
//! - [`lease`] and [`claims`]: lease ids, slugs, and this machine's claim files.
//! - [`sync`]: the sync manifest, the streamed archive, and warm-sync state.
//! - [`command`]: how argv becomes the remote shell command.
//! - [`conformance`]: behaviour tests written once against `&dyn Provider`, run by every provider.

pub mod claims;
pub mod command;
pub mod config;
pub mod conformance;
pub mod env_policy;
pub mod error;
pub mod lease;
pub mod paths;
pub mod provider;
pub mod sync;

pub use error::{Error, Result};
pub use sync::manifest_git_root as git_root;
