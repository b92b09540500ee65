//! What every handler shares: the emulator's settings and its sandboxes.
//!
//! Its own module so that dependencies point one way: [`crate::server`] builds the
//! routers of [`crate::control`] and [`crate::envd`], and those only need this state.

use crate::config::EmulatorConfig;
use crate::faults::Faults;
use crate::sandbox::Registry;
use std::sync::Arc;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<EmulatorConfig>,
    pub registry: Arc<Registry>,
    /// Faults tests programmed ([`crate::faults`]).
    pub faults: Faults,
}
