//! crabbox-e2b-wire
