//! crabbox-core: the domain of crabbox, free of CLI and provider code.
//!
//! - [`engine`]: the lease lifecycle (warmup, run, status, stop, list), written once for every
//!   provider, with its request and outcome types.
//! - [`provider`]: the box primitives every backend implements.
//! - [`events`] and [`hint`]: how the library reports progress and what to do next.
//! - [`registry`]: provider names to how each is built.
//! - [`frontend`]: what every front end does first: config layers for a directory, the engine.
//! - [`config`]: layered configuration (defaults, files, environment, flags) with origins.
//! - [`env_policy`]: which of the caller's environment variables reach the remote command.
//! - [`lease`] and [`claims`]: lease ids, slugs, and this machine's claim files.
//! - [`sync`]: the sync manifest, the streamed archive, and warm-sync state.
//! - [`command`]: how argv becomes the remote shell command.
//! - [`doctor`]: the checks `crabbox doctor` runs, the provider's own among them.
//! - [`conformance`]: behaviour tests written once against the engine, run by every provider.
//! - [`testing`]: test support: an in-memory provider with scripted commands and injected faults.

pub mod claims;
pub mod command;
pub mod config;
pub mod conformance;
pub mod doctor;
pub mod engine;
pub mod env_policy;
pub mod error;
pub mod events;
pub mod frontend;
pub mod hint;
pub mod lease;
pub mod paths;
pub mod plan;
pub mod provider;
pub mod registry;
pub mod secret;
pub mod sync;
pub mod testing;
pub mod usage;
pub mod workspace;

pub use error::{Error, Result};
pub use sync::manifest_git_root as git_root;
