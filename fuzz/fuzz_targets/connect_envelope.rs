//! The Connect envelope decoder over arbitrary bytes cut into arbitrary chunks.
//!
//! Checks: no panic; the chunks decode to exactly what the whole stream decodes to (the same
//! envelopes, then the same error or the same leftover); whatever decoded re-encodes to the
//! bytes it came from; after draining, less than one largest envelope stays buffered (a huge
//! declared length is refused, not waited for).

#![no_main]

use arbitrary::Arbitrary;
use crabbox_e2b_wire::envelope::{
    self, Envelope, EnvelopeDecoder, EnvelopeError, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Picks the payload limit.
    limit: u8,
    /// Chunk lengths, in turn (0 is an empty chunk); the rest is the last chunk.
    cuts: Vec<u8>,
    stream: Vec<u8>,
}

/// Drains `d`: the envelopes it yields, then the error that stopped it, if any.
fn drain(d: &mut EnvelopeDecoder, out: &mut Vec<Envelope>) -> Option<EnvelopeError> {
    loop {
        match d.next_envelope() {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|input: Input| {
    let max = match input.limit % 4 {
        0 => DEFAULT_MAX_PAYLOAD,
        1 => 0,
        2 => 7,
        _ => 300,
    };
    let stream = &input.stream[..];

    let mut whole = EnvelopeDecoder::with_max_payload(max);
    whole.push(stream);
    let mut expected = Vec::new();
    let expected_err = drain(&mut whole, &mut expected);

    let mut chunked = EnvelopeDecoder::with_max_payload(max);
    let mut got = Vec::new();
    let mut got_err = None;
    let mut rest = stream;
    // Each cut in turn, then the rest in one chunk.
    let lens = input
        .cuts
        .iter()
        .map(|c| usize::from(*c))
        .chain([usize::MAX]);
    for n in lens {
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        chunked.push(chunk);
        got_err = drain(&mut chunked, &mut got);
        if got_err.is_some() {
            break;
        }
        assert!(
            chunked.buffered() < HEADER_LEN + max,
            "a whole envelope is left buffered ({} bytes, limit {max})",
            chunked.buffered()
        );
    }

    assert_eq!(got, expected, "chunks decode like the whole stream");
    assert_eq!(got_err, expected_err, "chunks fail like the whole stream");
    if got_err.is_none() {
        assert_eq!(chunked.buffered(), whole.buffered());
        assert_eq!(chunked.finish().is_ok(), chunked.buffered() == 0);
    }

    let mut reencoded = Vec::new();
    for e in &got {
        assert!(e.payload.len() <= max);
        reencoded.extend_from_slice(&envelope::encode(e.flags, &e.payload));
        if e.is_end_stream() {
            let _ = e.end_stream_message();
        }
    }
    assert_eq!(&stream[..reencoded.len()], &reencoded[..]);
});
