//! A local emulator of E2B: the control plane and envd on one loopback address.
//!
//! This crate owns everything the emulator does: the REST control plane
//! ([`control`]), envd's HTTP file routes and Connect RPC services ([`envd`]),
//! the sandboxes' lifecycle ([`sandbox`]), the Linux-namespace isolation that
//! gives every sandbox a private `/home`, `/root` and `/tmp` ([`isolation`]), and
//! the processes run inside ([`process`]). [`server`] builds the routers of
//! [`control`] and [`envd`], which share only [`state::AppState`]. [`preflight()`]
//! runs the host check of start-up on its own, and [`available_or_skip`] is the rule
//! tests that start an emulator follow when it fails (skip, or panic under CI).
//! Wire shapes, header names, the signal table and the `Authorization` user encoding
//! come from `crabbox-e2b-wire`; nothing here is shared with the crabbox client.
//!
//! Requests carrying `E2b-Sandbox-Id` are envd requests routed to that sandbox,
//! exactly as E2B's proxy does, so one address serves both planes and the
//! official SDKs work with `E2B_API_URL` and `E2B_SANDBOX_URL` both set to it.
//!
//! Tests program faults into a running emulator ([`faults`]): overload answers, stalls,
//! connections reset before or after a request reached its handler, streams cut short and
//! sandboxes killed under a request, matched by plane, method and path.
//!
//! Lifecycle: pause freezes a sandbox's processes (SIGSTOP) and connect thaws them, so
//! files and processes are kept, as with E2B's memory pause; `autoPause` pauses at the
//! timeout and `autoResume` wakes on any request. [`snapshots`] copies a sandbox's files for
//! snapshots and forks (not its memory: a sandbox started from one runs no process, unlike
//! E2B). [`ports`] forwards `<port>-<sandboxID>.<domain>` traffic into the sandbox's own
//! network namespace (loopback only: sandboxes have no internet, unlike E2B).
//!
//! Egress rules ([`network`]) are recorded and reported; a sandbox's network namespace has
//! only a loopback, so no sandbox reaches the internet whatever its rules say.
//!
//! Invariant: the emulator only ever listens on loopback.

pub mod config;
pub mod control;
pub mod envd;
pub mod error;
pub mod faults;
pub mod isolation;
pub mod network;
pub mod ports;
pub mod preflight;
pub mod process;
pub mod sandbox;
pub mod sandbox_fs;
pub mod server;
pub mod snapshots;
pub mod state;

pub use config::EmulatorConfig;
pub use preflight::{available_or_skip, preflight, REQUIRE_EMULATOR_ENV};
pub use server::{Emulator, EmulatorHandle};
