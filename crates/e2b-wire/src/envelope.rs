//! The Connect streaming envelope: 1 flag byte, a 4-byte big-endian payload
//! length, then the payload.
//!
//! [`encode`] frames one message; [`EnvelopeDecoder`] takes byte chunks exactly as
//! they arrive from a network stream (split anywhere, several envelopes per chunk)
//! and yields whole envelopes.

use crate::connect::{ConnectError, EndStreamMessage};
use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

/// Flag bit: the payload is compressed (never used by envd's JSON streams).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag bit: this is the end-of-stream message, a JSON [`EndStreamMessage`].
pub const FLAG_END_STREAM: u8 = 0x02;
/// Size of the envelope header: flag byte plus 4-byte length.
pub const HEADER_LEN: usize = 5;
/// Default largest payload the decoder accepts (envd messages are small).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

impl Envelope {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Parses the payload of an end-of-stream envelope.
    pub fn end_stream_message(&self) -> Result<EndStreamMessage, serde_json::Error> {
        if self.payload.is_empty() {
            return Ok(EndStreamMessage::default());
        }
        serde_json::from_slice(&self.payload)
    }
}

/// Why a byte stream is not a valid sequence of envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside an envelope ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Frames `payload` with `flags`.
pub fn encode(flags: u8, payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).expect("envelope payload exceeds 4 GiB");
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&[flags]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.freeze()
}

/// Frames one JSON message (flags 0).
pub fn encode_message<T: Serialize>(message: &T) -> Result<Bytes, serde_json::Error> {
    Ok(encode(0, &serde_json::to_vec(message)?))
}

/// Frames the end-of-stream message: `{}` or `{"error": {...}}`.
pub fn encode_end_stream(error: Option<&ConnectError>) -> Bytes {
    let message = EndStreamMessage {
        error: error.cloned(),
        metadata: None,
    };
    let payload = serde_json::to_vec(&message).expect("end-stream message serializes");
    encode(FLAG_END_STREAM, &payload)
}

/// Incremental envelope decoder over arbitrary byte chunks.
#[derive(Debug)]
pub struct EnvelopeDecoder {
    buffer: BytesMut,
    max_payload: usize,
}

impl Default for EnvelopeDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeDecoder {
    pub fn new() -> Self {
        Self::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    pub fn with_max_payload(max_payload: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max_payload,
        }
    }

    /// Appends bytes received from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// Takes the next complete envelope, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, EnvelopeError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buffer[0];
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if len > self.max_payload {
            return Err(EnvelopeError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if self.buffer.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buffer.advance(HEADER_LEN);
        let payload = self.buffer.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Pushes `chunk` and drains every envelope it completes.
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Vec<Envelope>, EnvelopeError> {
        self.push(chunk);
        let mut out = Vec::new();
        while let Some(envelope) = self.next_envelope()? {
            out.push(envelope);
        }
        Ok(out)
    }

    /// Bytes buffered that do not yet form a whole envelope.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Call when the stream has ended: fails if a partial envelope is left over.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(EnvelopeError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::Code;

    fn sample_stream() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&encode(0, br#"{"event":{"start":{"pid":7}}}"#));
        bytes.extend_from_slice(&encode(0, b""));
        bytes.extend_from_slice(&encode(0, br#"{"event":{"data":{"stdout":"aGkK"}}}"#));
        bytes.extend_from_slice(&encode_end_stream(None));
        bytes
    }

    #[test]
    fn encode_writes_flag_then_big_endian_length() {
        let framed = encode(FLAG_END_STREAM, b"{}");
        assert_eq!(&framed[..], &[0x02, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn decodes_every_split_of_a_stream_identically() {
        let stream = sample_stream();
        let whole = EnvelopeDecoder::new().decode(&stream).unwrap();
        assert_eq!(whole.len(), 4);
        assert!(whole[3].is_end_stream());
        assert!(whole[1].payload.is_empty());

        for split in 0..=stream.len() {
            let mut decoder = EnvelopeDecoder::new();
            let mut got = decoder.decode(&stream[..split]).unwrap();
            got.extend(decoder.decode(&stream[split..]).unwrap());
            assert_eq!(got, whole, "split at {split}");
            decoder.finish().unwrap();
        }
    }

    #[test]
    fn decodes_byte_by_byte() {
        let stream = sample_stream();
        let mut decoder = EnvelopeDecoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            got.extend(decoder.decode(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(got.len(), 4);
        assert_eq!(&got[0].payload[..], br#"{"event":{"start":{"pid":7}}}"#);
    }

    #[test]
    fn reports_truncated_stream() {
        let stream = sample_stream();
        let mut decoder = EnvelopeDecoder::new();
        decoder.decode(&stream[..stream.len() - 1]).unwrap();
        assert!(matches!(
            decoder.finish(),
            Err(EnvelopeError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_oversized_payload() {
        let mut decoder = EnvelopeDecoder::with_max_payload(4);
        let err = decoder.decode(&encode(0, b"too long")).unwrap_err();
        assert_eq!(err, EnvelopeError::TooLarge { len: 8, max: 4 });
    }

    #[test]
    fn end_stream_carries_error() {
        let err = crate::ConnectError::new(Code::InvalidArgument, "cwd '/nope' does not exist");
        let framed = encode_end_stream(Some(&err));
        let envelope = EnvelopeDecoder::new().decode(&framed).unwrap().remove(0);
        assert!(envelope.is_end_stream());
        assert_eq!(envelope.end_stream_message().unwrap().error, Some(err));
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    /// Cuts `bytes` at `cuts` (positions taken modulo its length, in any order).
    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for a in at.into_iter().chain([bytes.len()]) {
            out.push(&bytes[start..a]);
            start = a;
        }
        out
    }

    fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        prop::collection::vec((0u8..4, prop::collection::vec(any::<u8>(), 0..200)), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_of_a_valid_stream_decodes_to_its_messages(
            msgs in messages(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let stream: Vec<u8> = msgs.iter().flat_map(|(f, p)| encode(*f, p).to_vec()).collect();
            let mut decoder = EnvelopeDecoder::with_max_payload(200);
            let mut got = Vec::new();
            for piece in pieces(&stream, &cuts) {
                got.extend(decoder.decode(piece).unwrap());
            }
            decoder.finish().unwrap();
            let want: Vec<Envelope> = msgs
                .into_iter()
                .map(|(flags, p)| Envelope { flags, payload: Bytes::from(p) })
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_decode_like_the_whole_and_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            max in prop_oneof![Just(0usize), Just(16), Just(DEFAULT_MAX_PAYLOAD)],
        ) {
            let whole = EnvelopeDecoder::with_max_payload(max).decode(&bytes);
            let mut decoder = EnvelopeDecoder::with_max_payload(max);
            let mut got = Vec::new();
            let mut err = None;
            for piece in pieces(&bytes, &cuts) {
                match decoder.decode(piece) {
                    Ok(e) => got.extend(e),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
                prop_assert!(decoder.buffered() < HEADER_LEN + max);
            }
            match whole {
                Ok(all) => prop_assert_eq!((got, err), (all, None)),
                Err(e) => prop_assert_eq!(err, Some(e)),
            }
        }

        #[test]
        fn a_huge_declared_length_is_refused_at_once(
            len in (DEFAULT_MAX_PAYLOAD as u64 + 1)..=u64::from(u32::MAX),
            flags in any::<u8>(),
        ) {
            let mut header = vec![flags];
            header.extend_from_slice(&(len as u32).to_be_bytes());
            let mut decoder = EnvelopeDecoder::new();
            let err = decoder.decode(&header).unwrap_err();
            prop_assert_eq!(err, EnvelopeError::TooLarge { len: len as usize, max: DEFAULT_MAX_PAYLOAD });
            prop_assert_eq!(decoder.buffered(), HEADER_LEN, "nothing is reserved for it");
        }
    }
}
