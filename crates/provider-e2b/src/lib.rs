//! crabbox-provider-e2b
