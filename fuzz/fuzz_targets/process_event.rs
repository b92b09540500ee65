//! envd's process messages in proto3 JSON, and the `Start` stream's event decoding.
//!
//! Checks: no panic; a message that parses writes back to JSON that parses to the same
//! message; the stream decoder (`EventDecoder`) reads the bytes as a framed stream and as the
//! payload of one envelope without panicking, and stays ended once it ended.

#![no_main]

use crabbox_e2b_wire::connect::{ConnectError, EndStreamMessage};
use crabbox_e2b_wire::envelope;
use crabbox_e2b_wire::process::{
    ConnectRequest, ListResponse, ProcessEvent, SendInputRequest, SendSignalRequest, StartRequest,
    StartResponse,
};
use crabbox_e2b_wire::proto_json;
use crabbox_provider_e2b::envd::{exit_code_of, Decoded, EventDecoder};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses `data` as `T`; if it parses, its JSON must parse back to the same value.
fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_vec(&value).expect("a parsed message serializes");
    let again: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{value:?} wrote {} which does not parse: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(again, value, "{}", String::from_utf8_lossy(&json));
    Some(value)
}

/// Every event `d` yields until it needs more, ends or fails.
fn drain(d: &mut EventDecoder) {
    for _ in 0..10_000 {
        match d.next_decoded() {
            Ok(Decoded::Event(ProcessEvent::End(end))) => {
                let _ = exit_code_of(&end);
            }
            Ok(Decoded::Event(_)) => {}
            Ok(Decoded::NeedMore) | Err(_) => return,
            Ok(Decoded::End) => {
                assert_eq!(d.next_decoded(), Ok(Decoded::End), "the end stays the end");
                return;
            }
        }
    }
    panic!("the decoder yields events forever");
}

fuzz_target!(|data: &[u8]| {
    if let Some(msg) = round_trip::<StartResponse>(data) {
        if let Some(ProcessEvent::End(end)) = &msg.event {
            let _ = exit_code_of(end);
        }
    }
    round_trip::<StartRequest>(data);
    round_trip::<ConnectRequest>(data);
    round_trip::<SendSignalRequest>(data);
    round_trip::<SendInputRequest>(data);
    round_trip::<ListResponse>(data);
    round_trip::<ConnectError>(data);
    let _ = serde_json::from_slice::<EndStreamMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = proto_json::decode_base64(text) {
            let encoded = proto_json::encode_base64(&bytes);
            assert_eq!(
                proto_json::decode_base64(&encoded).as_deref(),
                Ok(&bytes[..])
            );
        }
    }

    // The bytes as one message of a stream, as that stream's end, and as a stream.
    for flags in [0, envelope::FLAG_END_STREAM] {
        let mut d = EventDecoder::new();
        d.push(&envelope::encode(flags, data));
        drain(&mut d);
    }
    let mut d = EventDecoder::new();
    for chunk in data.chunks(97) {
        d.push(chunk);
        drain(&mut d);
    }
});
