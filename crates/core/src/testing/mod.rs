//! Test support: an in-memory provider for fast, deterministic tests of the engine (and of
//! anything built on it), in the way `object_store`'s `memory.rs` backs its own tests.
//!
//! [`MemoryProvider`] implements the box primitives over boxes held in memory:
//! - a box has its tags (lease, slug, keep), a file tree that `apply_archive` fills by really
//!   decoding the gzipped tar the engine sends, and every archive it received;
//! - commands are not run but *scripted* ([`Script`]): registered by their script text, they
//!   print, exit, wait for a signal, ignore SIGTERM, or lose their stream;
//! - every primitive call is logged in order ([`MemoryProvider::calls`]), and
//!   [`MemoryProvider::reached`] lets a test act the moment a primitive is called;
//! - faults are injected by construction: a call that fails ([`MemoryProvider::fail`]), never
//!   answers ([`MemoryProvider::hang`]), or a create whose answer is lost after the box was
//!   made ([`MemoryProvider::lose_create_answer`]).
//!
//! Not for production use: nothing here touches a real box.

mod provider;
mod reporter;
mod script;
mod session;
mod state;

pub use provider::{MemoryProvider, MEMORY};
pub use reporter::RecordingReporter;
pub use script::{Script, KILL_EXIT, TERM_EXIT};
pub use state::{Applied, MemBox, Node, Op, Process};

#[cfg(test)]
mod tests;
