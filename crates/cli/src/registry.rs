//! The providers this binary offers: one line each.

use crabbox_core::registry::Registry;

pub fn registry() -> Registry {
    Registry::new()
        .with(crabbox_provider_local::ENTRY)
        .with(crabbox_provider_e2b::ENTRY)
}
