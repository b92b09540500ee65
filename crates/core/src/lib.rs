//! crabbox-core
