//! crabbox-provider-local
