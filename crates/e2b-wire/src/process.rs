//! `process.Process` messages in proto3-JSON form.
//!
//! Oneofs are flattened into their parent object as proto3 JSON requires, so a
//! process event is `{"event": {"data": {"stdout": "aGkK"}}}`.

use crate::proto_enum;
use crate::proto_json::{self, is_default};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fully qualified service name; RPC paths are `/process.Process/<Method>`.
pub const SERVICE: &str = "process.Process";

/// What to run: `cmd` with `args`, `envs` on top of the user's defaults, in `cwd`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Terminal size of a PTY session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    #[serde(
        default,
        with = "proto_json::uint32",
        skip_serializing_if = "is_default"
    )]
    pub cols: u32,
    #[serde(
        default,
        with = "proto_json::uint32",
        skip_serializing_if = "is_default"
    )]
    pub rows: u32,
}

/// PTY request: present means "run under a pseudo-terminal".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// `Start` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Explicit `optional`: written even when `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// Picks a process by pid or by tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessSelector {
    Pid(#[serde(with = "proto_json::uint32")] u32),
    Tag(String),
}

/// `Connect` request body: re-attach to a running process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// First event of every stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEvent {
    #[serde(
        default,
        with = "proto_json::uint32",
        skip_serializing_if = "is_default"
    )]
    pub pid: u32,
}

/// One chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataEvent {
    Stdout(#[serde(with = "proto_json::base64_bytes")] Vec<u8>),
    Stderr(#[serde(with = "proto_json::base64_bytes")] Vec<u8>),
    Pty(#[serde(with = "proto_json::base64_bytes")] Vec<u8>),
}

/// Last event of a stream: how the process ended.
///
/// Exit 0 leaves `exitCode` out; a killed process has `exitCode: -1`,
/// `exited: false` and a status such as `"signal: killed"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(
        default,
        alias = "exit_code",
        with = "proto_json::int32",
        skip_serializing_if = "is_default"
    )]
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub exited: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sent during silence so proxies and clients know the stream is alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {}

/// The `event` oneof of `ProcessEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvent {
    Start(StartEvent),
    Data(DataEvent),
    End(EndEvent),
    Keepalive(KeepAlive),
}

/// One message of a `Start` or `Connect` stream: `{"event": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ProcessEvent>,
}

/// `Connect` streams carry the same messages as `Start`.
pub type ConnectResponse = StartResponse;

impl StartResponse {
    pub fn new(event: ProcessEvent) -> Self {
        Self { event: Some(event) }
    }
}

proto_enum! {
    /// `process.Signal`.
    pub enum Signal {
        Unspecified = (0, "SIGNAL_UNSPECIFIED"),
        Sigterm = (15, "SIGNAL_SIGTERM"),
        Sigkill = (9, "SIGNAL_SIGKILL"),
    }
}

impl Signal {
    /// The POSIX signal number this protocol signal delivers; `None` for `Unspecified`.
    pub fn posix_number(self) -> Option<i32> {
        SIGNALS
            .iter()
            .find(|s| s.proto == Some(self))
            .map(|s| s.number)
    }

    /// The protocol signal that delivers POSIX signal `number`, if the protocol has one.
    pub fn from_posix_number(number: i32) -> Option<Signal> {
        SIGNALS
            .iter()
            .find(|s| s.number == number)
            .and_then(|s| s.proto)
    }
}

/// One signal as envd reports and sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName {
    /// The Linux signal number.
    pub number: i32,
    /// Go's name for it (envd is written in Go), as in an end event's status `signal: killed`.
    pub name: &'static str,
    /// The `process.Signal` value that sends it with `SendSignal`, if there is one.
    pub proto: Option<Signal>,
}

/// The signals with a name in envd's end-event status (Go's names for 1..=15 on Linux);
/// any other signal `n` is spelled `signal n`.
pub const SIGNALS: [SignalName; 15] = {
    const fn sig(number: i32, name: &'static str, proto: Option<Signal>) -> SignalName {
        SignalName {
            number,
            name,
            proto,
        }
    }
    [
        sig(1, "hangup", None),
        sig(2, "interrupt", None),
        sig(3, "quit", None),
        sig(4, "illegal instruction", None),
        sig(5, "trace/breakpoint trap", None),
        sig(6, "aborted", None),
        sig(7, "bus error", None),
        sig(8, "floating point exception", None),
        sig(9, "killed", Some(Signal::Sigkill)),
        sig(10, "user defined signal 1", None),
        sig(11, "segmentation fault", None),
        sig(12, "user defined signal 2", None),
        sig(13, "broken pipe", None),
        sig(14, "alarm clock", None),
        sig(15, "terminated", Some(Signal::Sigterm)),
    ]
};

/// Prefix of an end event's status for a process that exited: `exit status 7`.
pub const EXIT_STATUS_PREFIX: &str = "exit status ";
/// Prefix of an end event's status for a process a signal killed: `signal: killed`.
pub const SIGNAL_STATUS_PREFIX: &str = "signal: ";

/// Go's name for signal `number`, as envd writes it after [`SIGNAL_STATUS_PREFIX`]:
/// `killed` for 9, `signal 42` for a signal without a name in [`SIGNALS`].
pub fn signal_name(number: i32) -> String {
    match SIGNALS.iter().find(|s| s.number == number) {
        Some(s) => s.name.to_string(),
        None => format!("signal {number}"),
    }
}

/// The signal number a name written by [`signal_name`] stands for (`killed` -> 9,
/// `signal 42` -> 42); `None` for a name it does not write.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Some(s) = SIGNALS.iter().find(|s| s.name == name) {
        return Some(s.number);
    }
    name.strip_prefix("signal ")
        .and_then(|n| n.trim().parse::<i32>().ok())
}

/// `SendSignal` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub signal: Signal,
}

/// The `input` oneof of `ProcessInput`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessInput {
    Stdin(#[serde(with = "proto_json::base64_bytes")] Vec<u8>),
    Pty(#[serde(with = "proto_json::base64_bytes")] Vec<u8>),
}

/// `SendInput` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
}

/// `CloseStdin` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStdinRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// `Update` request body (PTY resize).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// `List` request body (no fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {}

/// One running process in a `List` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ProcessConfig>,
    #[serde(
        default,
        with = "proto_json::uint32",
        skip_serializing_if = "is_default"
    )]
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `List` response body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessInfo>,
}

/// Response of `SendSignal`, `SendInput`, `CloseStdin` and `Update`: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_request_matches_sdk_shape() {
        let body = json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"],
                        "envs": {"A": "1"}, "cwd": "/home/user"},
            "stdin": false,
            "unknownField": 3
        });
        let req: StartRequest = serde_json::from_value(body).unwrap();
        let process = req.process.as_ref().unwrap();
        assert_eq!(process.cmd, "/bin/bash");
        assert_eq!(process.args, ["-l", "-c", "echo hi"]);
        assert_eq!(process.cwd.as_deref(), Some("/home/user"));
        assert_eq!(req.stdin, Some(false));
        let out = serde_json::to_value(&req).unwrap();
        assert_eq!(
            out["stdin"],
            json!(false),
            "explicit optional false is kept"
        );
    }

    #[test]
    fn events_serialize_as_flattened_oneofs() {
        let start = StartResponse::new(ProcessEvent::Start(StartEvent { pid: 42 }));
        assert_eq!(
            serde_json::to_value(&start).unwrap(),
            json!({"event": {"start": {"pid": 42}}})
        );
        let data = StartResponse::new(ProcessEvent::Data(DataEvent::Stdout(b"hi\n".to_vec())));
        assert_eq!(
            serde_json::to_value(&data).unwrap(),
            json!({"event": {"data": {"stdout": "aGkK"}}})
        );
        let keepalive = StartResponse::new(ProcessEvent::Keepalive(KeepAlive {}));
        assert_eq!(
            serde_json::to_value(&keepalive).unwrap(),
            json!({"event": {"keepalive": {}}})
        );
    }

    #[test]
    fn end_event_omits_zero_values() {
        let ok = EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".into(),
            error: None,
        };
        assert_eq!(
            serde_json::to_value(ProcessEvent::End(ok)).unwrap(),
            json!({"end": {"exited": true, "status": "exit status 0"}})
        );
        let killed: EndEvent =
            serde_json::from_value(json!({"exit_code": "-1", "status": "signal: killed"})).unwrap();
        assert_eq!(killed.exit_code, -1);
        assert!(!killed.exited);
    }

    #[test]
    fn signal_reads_names_and_numbers() {
        let by_name: SendSignalRequest =
            serde_json::from_value(json!({"process": {"pid": 5}, "signal": "SIGNAL_SIGKILL"}))
                .unwrap();
        assert_eq!(by_name.signal, Signal::Sigkill);
        assert_eq!(by_name.process, Some(ProcessSelector::Pid(5)));
        let by_number: SendSignalRequest =
            serde_json::from_value(json!({"process": {"pid": "5"}, "signal": 15})).unwrap();
        assert_eq!(by_number.signal, Signal::Sigterm);
        assert_eq!(
            serde_json::to_value(&by_number).unwrap(),
            json!({"process": {"pid": 5}, "signal": "SIGNAL_SIGTERM"})
        );
    }

    #[test]
    fn every_signal_round_trips_by_number_name_and_protocol_value() {
        for s in SIGNALS {
            assert_eq!(signal_name(s.number), s.name);
            assert_eq!(signal_number(s.name), Some(s.number), "{}", s.name);
            assert_eq!(Signal::from_posix_number(s.number), s.proto, "{}", s.name);
            if let Some(proto) = s.proto {
                assert_eq!(proto.posix_number(), Some(s.number), "{}", s.name);
                assert_eq!(Signal::from_name(proto.as_str()), Some(proto));
            }
        }
        let numbers: Vec<i32> = SIGNALS.iter().map(|s| s.number).collect();
        assert_eq!(
            numbers,
            (1..=15).collect::<Vec<_>>(),
            "one entry per number"
        );
        let mut names: Vec<&str> = SIGNALS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SIGNALS.len(), "names are unique");
    }

    #[test]
    fn signals_outside_the_table_are_spelled_by_number() {
        assert_eq!(signal_name(42), "signal 42");
        assert_eq!(signal_number("signal 42"), Some(42));
        assert_eq!(signal_number("no such signal"), None);
        assert_eq!(Signal::Unspecified.posix_number(), None);
        assert_eq!(Signal::Sigkill.posix_number(), Some(9));
        assert_eq!(Signal::Sigterm.posix_number(), Some(15));
        assert_eq!(Signal::from_posix_number(2), None);
    }

    #[test]
    fn input_bytes_are_padded_base64() {
        let req = SendInputRequest {
            process: Some(ProcessSelector::Pid(1)),
            input: Some(ProcessInput::Stdin(b"a".to_vec())),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"process": {"pid": 1}, "input": {"stdin": "YQ=="}})
        );
        let unpadded: SendInputRequest =
            serde_json::from_value(json!({"input": {"pty": "YQ"}})).unwrap();
        assert_eq!(unpadded.input, Some(ProcessInput::Pty(b"a".to_vec())));
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON built from the names process events use, so parsing gets past the first key.
    fn json() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec![
            "event",
            "start",
            "data",
            "end",
            "keepalive",
            "pid",
            "stdout",
            "stderr",
            "pty",
            "exitCode",
            "exit_code",
            "exited",
            "status",
            "error",
            "other",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
            "[A-Za-z0-9+/=_-]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..3).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    fn event() -> impl Strategy<Value = ProcessEvent> {
        let bytes = prop::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            any::<u32>().prop_map(|pid| ProcessEvent::Start(StartEvent { pid })),
            bytes
                .clone()
                .prop_map(|b| ProcessEvent::Data(DataEvent::Stdout(b))),
            bytes
                .clone()
                .prop_map(|b| ProcessEvent::Data(DataEvent::Stderr(b))),
            bytes.prop_map(|b| ProcessEvent::Data(DataEvent::Pty(b))),
            (
                any::<i32>(),
                any::<bool>(),
                ".{0,12}",
                proptest::option::of(".{0,12}")
            )
                .prop_map(|(exit_code, exited, status, error)| ProcessEvent::End(
                    EndEvent {
                        exit_code,
                        exited,
                        status,
                        error,
                    }
                )),
            Just(ProcessEvent::Keepalive(KeepAlive {})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = serde_json::from_slice::<StartResponse>(&bytes);
            let _ = serde_json::from_slice::<StartRequest>(&bytes);
            let _ = serde_json::from_slice::<SendSignalRequest>(&bytes);
        }

        #[test]
        fn a_message_that_parses_writes_back_to_itself(value in json()) {
            let text = value.to_string();
            if let Ok(msg) = serde_json::from_str::<StartResponse>(&text) {
                let again: StartResponse =
                    serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
                prop_assert_eq!(again, msg, "{}", text);
            }
        }

        #[test]
        fn every_event_round_trips(event in event()) {
            let msg = StartResponse::new(event);
            let json = serde_json::to_vec(&msg).unwrap();
            prop_assert_eq!(serde_json::from_slice::<StartResponse>(&json).unwrap(), msg);
        }
    }
}
