//! The event stream of one `process.Process/Start` call: Connect envelopes decoded
//! incrementally as the body's chunks arrive, the end-of-stream message told apart from a body
//! that merely stops, events of kinds this client does not know skipped (as the official SDK
//! does), and the exit code of a finished process ([`exit_code_of`]).

use bytes::Bytes;
use crabbox_core::secret::Scrubber;
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::envelope::EnvelopeDecoder;
use crabbox_e2b_wire::process::{self, ProcessEvent, StartResponse};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::control::error_chain;

/// The events of one `Start` stream, decoded as bytes arrive.
pub struct ProcessStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: EnvelopeDecoder,
    finished: bool,
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
            decoder: EnvelopeDecoder::new(),
            finished: false,
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
            if self.finished {
                return Ok(None);
            }
            let envelope = self.decoder.next_envelope().map_err(|e| {
                Error::Transport(format!("sandbox {}: command stream: {e}", self.sandbox_id))
            })?;
            if let Some(env) = envelope {
                if env.is_end_stream() {
                    self.finished = true;
                    let end = env.end_stream_message().map_err(|e| {
                        Error::Transport(format!(
                            "sandbox {}: unreadable end of command stream: {e}",
                            self.sandbox_id
                        ))
                    })?;
                    if let Some(err) = end.error {
                        return Err(Error::Transport(format!(
                            "sandbox {}: command failed to run: {err}",
                            self.sandbox_id
                        )));
                    }
                    return Ok(None);
                }
                if env.is_compressed() {
                    return Err(Error::Transport(format!(
                        "sandbox {}: compressed command stream messages are not supported",
                        self.sandbox_id
                    )));
                }
                if env.payload.is_empty() {
                    continue;
                }
                let msg: StartResponse = match serde_json::from_slice(&env.payload) {
                    Ok(msg) => msg,
                    // The SDK's codec ignores what it does not know; so do we.
                    Err(_) if is_unknown_event(&env.payload) => continue,
                    Err(e) => {
                        return Err(Error::Transport(format!(
                            "sandbox {}: unreadable command stream message: {e}",
                            self.sandbox_id
                        )))
                    }
                };
                match msg.event {
                    Some(event) => return Ok(Some(event)),
                    None => continue,
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
}
