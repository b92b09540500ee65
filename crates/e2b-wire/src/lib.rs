//! What crabbox and the local E2B emulator say to each other on the wire.
//!
//! This crate owns the byte-level and JSON-level shapes of the E2B protocol, and
//! nothing else: no I/O, no HTTP client, no server.
//!
//! - [`control`]: the control plane's REST/JSON bodies (create, get, list, kill, ...).
//! - [`envelope`]: the Connect protocol's streaming envelope (flag byte, 4-byte
//!   big-endian length, payload) and an incremental decoder for network chunks.
//! - [`process`] and [`filesystem`]: the envd RPC messages of `process.Process` and
//!   `filesystem.Filesystem` in their proto3-JSON form.
//! - [`connect`]: Connect error codes, their HTTP statuses, and the content types.
//! - [`headers`]: the header names both planes use, and envd's `Authorization: Basic`
//!   user selection ([`headers::encode_user`] / [`headers::decode_user`]).
//! - [`process::SIGNALS`]: the one signal table (number, Go's name as envd reports it,
//!   `process.Signal` value).
//!
//! We hand-write this small JSON codec instead of depending on the `connectrpc`
//! crate: the build has no protoc/buf code generation step, envd is only spoken to
//! with the JSON codec, and the handful of messages fits in a few hundred lines.

pub mod connect;
pub mod control;
pub mod envelope;
pub mod filesystem;
pub mod headers;
pub mod process;
pub mod proto_json;

pub use connect::{Code, ConnectError, EndStreamMessage};
pub use envelope::{Envelope, EnvelopeDecoder, EnvelopeError};
