//! e2b-emulator
