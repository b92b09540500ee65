//! The event stream of one `process.Process/Start` call: Connect envelopes decoded
//! incrementally as the body's chunks arrive, the end-of-stream message told apart from a body
//! that merely stops, events of kinds this client does not know skipped (as the official SDK
//! does), and the exit code of a finished process ([`exit_code_of`]). The decoding itself is
//! [`EventDecoder`], with no I/O, so it can be tested (and fuzzed) on bytes alone.

use bytes::Bytes;
use crabbox_core::secret::Scrubber;
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::envelope::EnvelopeDecoder;
use crabbox_e2b_wire::process::{self, ProcessEvent, StartResponse};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::control::error_chain;

/// What the bytes of a `Start` stream buffered so far say next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// One event of the process.
    Event(ProcessEvent),
    /// The stream closed with a clean end-of-stream message; nothing follows.
    End,
    /// No whole message is buffered yet: push the next chunk.
    NeedMore,
}

/// The pure half of [`ProcessStream`]: Connect envelopes of a `Start` stream in, events out,
/// with no I/O (the network side only pushes chunks). Errors are said without the sandbox.
#[derive(Debug, Default)]
pub struct EventDecoder {
    envelopes: EnvelopeDecoder,
    finished: bool,
}

impl EventDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        self.envelopes.push(chunk);
    }

    /// Bytes buffered that do not yet form a whole envelope.
    pub fn buffered(&self) -> usize {
        self.envelopes.buffered()
    }

    /// The next event of what is buffered. After [`Decoded::End`] always `End`.
    pub fn next_decoded(&mut self) -> std::result::Result<Decoded, String> {
        loop {
            if self.finished {
                return Ok(Decoded::End);
            }
            let Some(env) = self
                .envelopes
                .next_envelope()
                .map_err(|e| format!("command stream: {e}"))?
            else {
                return Ok(Decoded::NeedMore);
            };
            if env.is_end_stream() {
                self.finished = true;
                let end = env
                    .end_stream_message()
                    .map_err(|e| format!("unreadable end of command stream: {e}"))?;
                if let Some(err) = end.error {
                    return Err(format!("command failed to run: {err}"));
                }
                return Ok(Decoded::End);
            }
            if env.is_compressed() {
                return Err("compressed command stream messages are not supported".into());
            }
            if env.payload.is_empty() {
                continue;
            }
            let msg: StartResponse = match serde_json::from_slice(&env.payload) {
                Ok(msg) => msg,
                // The SDK's codec ignores what it does not know; so do we.
                Err(_) if is_unknown_event(&env.payload) => continue,
                Err(e) => return Err(format!("unreadable command stream message: {e}")),
            };
            if let Some(event) = msg.event {
                return Ok(Decoded::Event(event));
            }
        }
    }
}

/// The events of one `Start` stream, decoded as bytes arrive.
pub struct ProcessStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: EventDecoder,
    sandbox_id: String,
    /// What envd says in its errors is scrubbed of these.
    secrets: Scrubber,
}

impl ProcessStream {
    /// The stream of events in `body`, the response body of a `Start` call to `sandbox_id`.
    pub(super) fn new(
        body: BoxStream<'static, reqwest::Result<Bytes>>,
        sandbox_id: String,
        secrets: Scrubber,
    ) -> Self {
        Self {
            body,
            decoder: EventDecoder::new(),
            sandbox_id,
            secrets,
        }
    }

    /// The next event; `Ok(None)` once the stream closed with a clean end-of-stream message.
    /// A body that stops without one, or an end-of-stream error, is a transport error.
    ///
    /// Cancel-safe: the only await point is the next network chunk.
    pub async fn next_event(&mut self) -> Result<Option<ProcessEvent>> {
        self.next_unscrubbed().await.map_err(|e| match e {
            Error::Transport(text) => Error::Transport(self.secrets.scrub(&text)),
            other => other,
        })
    }

    async fn next_unscrubbed(&mut self) -> Result<Option<ProcessEvent>> {
        loop {
            match self.decoder.next_decoded() {
                Ok(Decoded::Event(event)) => return Ok(Some(event)),
                Ok(Decoded::End) => return Ok(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    return Err(Error::Transport(format!(
                        "sandbox {}: {e}",
                        self.sandbox_id
                    )))
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.decoder.push(&chunk),
                Some(Err(e)) => {
                    return Err(Error::Transport(format!(
                        "sandbox {}: command stream broke: {}",
                        self.sandbox_id,
                        error_chain(&e)
                    )))
                }
                None => {
                    return Err(Error::Transport(format!(
                        "sandbox {}: command stream ended without an end-of-stream message \
                         ({} bytes left over); the command's outcome is unknown",
                        self.sandbox_id,
                        self.decoder.buffered()
                    )))
                }
            }
        }
    }
}

/// A stream message whose event is of a kind this client does not know (a newer envd's),
/// or a data event with no stream this client knows: skipped, like the official SDK's
/// codec (`ignore_unknown_fields`) does, rather than failing the run.
fn is_unknown_event(payload: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(msg)) = serde_json::from_slice(payload) else {
        return false;
    };
    let Some(serde_json::Value::Object(event)) = msg.get("event") else {
        return false;
    };
    let known = ["start", "data", "end", "keepalive"];
    if !event.keys().any(|k| known.contains(&k.as_str())) {
        return true;
    }
    match event.get("data") {
        Some(serde_json::Value::Object(data)) if event.len() == 1 => !data
            .keys()
            .any(|k| ["stdout", "stderr", "pty"].contains(&k.as_str())),
        _ => false,
    }
}

/// The exit code of a finished process: its own code, or 128+signal when it was killed.
pub fn exit_code_of(end: &crabbox_e2b_wire::process::EndEvent) -> i32 {
    let status = end.status.trim();
    if end.exited {
        return end.exit_code;
    }
    if let Some(code) = status
        .strip_prefix(process::EXIT_STATUS_PREFIX)
        .and_then(|c| c.trim().parse::<i32>().ok())
    {
        return code;
    }
    if end.exit_code > 0 {
        return end.exit_code;
    }
    let name = status
        .strip_prefix(process::SIGNAL_STATUS_PREFIX)
        .unwrap_or(status);
    let number = process::signal_number(name)
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(9);
    128 + number
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_e2b_wire::envelope;
    use crabbox_e2b_wire::process::EndEvent;

    fn end(code: i32, exited: bool, status: &str) -> EndEvent {
        EndEvent {
            exit_code: code,
            exited,
            status: status.into(),
            error: None,
        }
    }

    #[test]
    fn exit_codes_map_signals_to_128_plus() {
        assert_eq!(exit_code_of(&end(0, true, "exit status 0")), 0);
        assert_eq!(exit_code_of(&end(7, true, "exit status 7")), 7);
        assert_eq!(exit_code_of(&end(-1, false, "signal: killed")), 137);
        assert_eq!(exit_code_of(&end(-1, false, "signal: terminated")), 143);
        assert_eq!(exit_code_of(&end(-1, false, "signal: interrupt")), 130);
        assert_eq!(exit_code_of(&end(-1, false, "")), 137);
        assert_eq!(exit_code_of(&end(-1, false, "signal: signal 10")), 138);
        assert_eq!(
            exit_code_of(&end(0, false, "signal: terminated")),
            143,
            "an omitted exitCode of a killed process is not success"
        );
        assert_eq!(exit_code_of(&end(0, false, "exit status 4")), 4);
    }

    fn stream_of(messages: &[&[u8]]) -> ProcessStream {
        let mut body = Vec::new();
        for m in messages {
            body.extend_from_slice(&envelope::encode(0, m));
        }
        body.extend_from_slice(&envelope::encode(2, b"{}"));
        ProcessStream::new(
            futures::stream::iter(vec![Ok(Bytes::from(body))]).boxed(),
            "s".into(),
            Scrubber::default(),
        )
    }

    #[tokio::test]
    async fn unknown_event_kinds_are_skipped_like_the_sdk_does() {
        let mut s = stream_of(&[
            br#"{"event":{"start":{"pid":7}}}"#,
            br#"{"event":{"progress":{"percent":3}}}"#,
            br#"{"event":{"data":{"stdin":"aGkK"}}}"#,
            br#"{"event":{"keepalive":{}},"extra":1}"#,
            br#"{"event":{"data":{"stdout":"aGkK"}}}"#,
            br#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}}"#,
        ]);
        let mut seen = Vec::new();
        while let Some(e) = s.next_event().await.unwrap() {
            seen.push(e);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(matches!(seen[0], ProcessEvent::Start(ref st) if st.pid == 7));
        assert!(matches!(seen[1], ProcessEvent::Keepalive(_)));
        assert!(matches!(seen[3], ProcessEvent::End(ref e) if exit_code_of(e) == 3));
        // A known kind that does not parse is still an error.
        let mut bad = stream_of(&[br#"{"event":{"start":{"pid":"x"}}}"#]);
        assert!(bad.next_event().await.is_err());
    }

    #[test]
    fn the_decoder_reads_a_stream_the_same_whole_or_byte_by_byte() {
        let mut body = Vec::new();
        for m in [
            &br#"{"event":{"start":{"pid":7}}}"#[..],
            b"",
            br#"{"event":{"data":{"stdout":"aGkK"}}}"#,
            br#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#,
        ] {
            body.extend_from_slice(&envelope::encode(0, m));
        }
        body.extend_from_slice(&envelope::encode(2, b"{}"));
        let drain = |d: &mut EventDecoder, out: &mut Vec<Decoded>| loop {
            match d.next_decoded().unwrap() {
                Decoded::NeedMore => break,
                Decoded::End => {
                    out.push(Decoded::End);
                    break;
                }
                e => out.push(e),
            }
        };
        let mut whole = Vec::new();
        let mut d = EventDecoder::new();
        d.push(&body);
        drain(&mut d, &mut whole);
        assert_eq!(whole.len(), 4, "{whole:?}");
        assert_eq!(whole[3], Decoded::End);
        assert_eq!(
            d.next_decoded().unwrap(),
            Decoded::End,
            "the end stays the end"
        );

        let mut split = Vec::new();
        let mut d = EventDecoder::new();
        for b in &body {
            d.push(std::slice::from_ref(b));
            drain(&mut d, &mut split);
        }
        assert_eq!(split, whole);
    }

    #[test]
    fn the_decoder_reports_an_end_stream_error_and_compressed_messages() {
        let mut d = EventDecoder::new();
        d.push(&envelope::encode(
            2,
            br#"{"error":{"code":"invalid_argument","message":"no cwd"}}"#,
        ));
        let err = d.next_decoded().unwrap_err();
        assert!(
            err.contains("command failed to run") && err.contains("no cwd"),
            "{err}"
        );
        let mut d = EventDecoder::new();
        d.push(&envelope::encode(1, b"x"));
        assert!(d.next_decoded().unwrap_err().contains("compressed"));
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use crabbox_e2b_wire::envelope;
    use crabbox_e2b_wire::process::{DataEvent, EndEvent, KeepAlive, StartEvent};
    use proptest::prelude::*;

    /// Everything `d` yields until it needs more bytes, ends or fails (`None` for a failure).
    fn drain(d: &mut EventDecoder, out: &mut Vec<Decoded>) -> Option<()> {
        loop {
            match d.next_decoded() {
                Ok(Decoded::NeedMore) => return Some(()),
                Ok(Decoded::End) => {
                    out.push(Decoded::End);
                    assert_eq!(d.next_decoded(), Ok(Decoded::End), "the end stays the end");
                    return Some(());
                }
                Ok(e) => out.push(e),
                Err(_) => return None,
            }
        }
    }

    fn event() -> impl Strategy<Value = ProcessEvent> {
        let bytes = prop::collection::vec(any::<u8>(), 0..30);
        prop_oneof![
            any::<u32>().prop_map(|pid| ProcessEvent::Start(StartEvent { pid })),
            bytes
                .clone()
                .prop_map(|b| ProcessEvent::Data(DataEvent::Stdout(b))),
            bytes.prop_map(|b| ProcessEvent::Data(DataEvent::Stderr(b))),
            (any::<i32>(), any::<bool>(), "[ -~]{0,16}").prop_map(|(exit_code, exited, status)| {
                ProcessEvent::End(EndEvent {
                    exit_code,
                    exited,
                    status,
                    error: None,
                })
            }),
            Just(ProcessEvent::Keepalive(KeepAlive {})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_of_a_stream_yields_its_events(
            events in prop::collection::vec(event(), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut body = Vec::new();
            for e in &events {
                let msg = serde_json::to_vec(&StartResponse::new(e.clone())).unwrap();
                body.extend_from_slice(&envelope::encode(0, &msg));
            }
            body.extend_from_slice(&envelope::encode(envelope::FLAG_END_STREAM, b"{}"));
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            at.sort_unstable();
            let mut d = EventDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for a in at.into_iter().chain([body.len()]) {
                d.push(&body[start..a]);
                start = a;
                prop_assert!(drain(&mut d, &mut got).is_some());
                if got.last() == Some(&Decoded::End) {
                    prop_assert_eq!(start, body.len(), "the end is the last message");
                    break;
                }
            }
            let mut want: Vec<Decoded> = events.into_iter().map(Decoded::Event).collect();
            want.push(Decoded::End);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            chunk in 1usize..64,
            flags in 0u8..4,
        ) {
            let mut d = EventDecoder::new();
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                if drain(&mut d, &mut got).is_none() {
                    break;
                }
            }
            // The same bytes as one message's payload.
            let mut d = EventDecoder::new();
            d.push(&envelope::encode(flags, &bytes));
            let _ = drain(&mut d, &mut got);
            let _ = is_unknown_event(&bytes);
        }
    }
}
