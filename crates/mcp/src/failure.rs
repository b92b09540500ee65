//! How a tool call ends, as MCP says it: a structured result with every credential masked, a
//! protocol error for input the server cannot act on (a wrong `root`, an unknown provider, an
//! `id` that is not ours), or a failed tool result (`isError`) for a call that was fine but
//! did not work out (the box's service failed, the tree could not be synced, a timeout).

use crabbox_core::error::Error;
use crabbox_core::hint::Hint;
use crabbox_core::secret::{scrub, Secret};
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use rmcp::ErrorData;
use serde::Serialize;
use serde_json::{json, Value};

/// A tool's result: serialised, then every string in it masked of the call's credentials.
pub(crate) struct Structured<T> {
    pub value: T,
    pub secrets: Vec<Secret>,
}

impl<T: Serialize> IntoCallToolResult for Structured<T> {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let mut value = serde_json::to_value(&self.value)
            .map_err(|e| ErrorData::internal_error(format!("serialising the result: {e}"), None))?;
        scrub_value(&mut value, &self.secrets);
        Ok(CallToolResult::structured(value).into())
    }
}

/// Every string in `value` (keys too) with `secrets` masked.
pub(crate) fn scrub_value(value: &mut Value, secrets: &[Secret]) {
    if secrets.is_empty() {
        return;
    }
    match value {
        Value::String(s) => *s = scrub(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secrets)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                scrub_value(&mut v, secrets);
                map.insert(scrub(&k, secrets), v);
            }
        }
        _ => {}
    }
}

/// Why a tool call did not return its result.
#[derive(Debug)]
pub(crate) enum ToolError {
    /// The request cannot be acted on as it stands (JSON-RPC `invalid params`).
    Invalid(ErrorData),
    /// The call was understood and failed (`isError: true`, the reason as text).
    Failed(CallToolResult),
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        match self {
            ToolError::Invalid(e) => Err(e),
            ToolError::Failed(r) => Ok(r.into()),
        }
    }
}

impl ToolError {
    /// Input the server cannot act on.
    pub fn invalid(message: impl Into<String>) -> Self {
        ToolError::Invalid(ErrorData::invalid_params(message.into(), None))
    }

    /// A failed call, said in `text` (masked of `secrets`).
    pub fn failed(text: &str, secrets: &[Secret]) -> Self {
        ToolError::Failed(CallToolResult::error(vec![ContentBlock::text(scrub(
            text, secrets,
        ))]))
    }

    /// A crabbox error: bad input (usage, config, a lease that is not ours) as a protocol
    /// error, carrying its kind, exit code and hints as data; anything else as a failed
    /// result whose text says what happened and what to do.
    pub fn from_crabbox(e: &Error, secrets: &[Secret]) -> Self {
        let message = scrub(&e.to_string(), secrets);
        let hints: Vec<String> = e
            .hints()
            .into_iter()
            .map(|h| scrub(&hint(h), secrets))
            .collect();
        match e.root() {
            Error::Usage(_) | Error::Config { .. } | Error::NotFound(_) | Error::NotOurs(_) => {
                let data = json!({
                    "kind": kind(e.root()),
                    "exitCode": e.exit_code(),
                    "hints": hints,
                });
                ToolError::Invalid(ErrorData::invalid_params(message, Some(data)))
            }
            _ => {
                let mut text = format!("{} (crabbox exit code {})", message, e.exit_code());
                for h in &hints {
                    text.push_str(&format!("\nhint: {h}"));
                }
                ToolError::Failed(CallToolResult::error(vec![ContentBlock::text(text)]))
            }
        }
    }
}

impl From<Error> for ToolError {
    fn from(e: Error) -> Self {
        ToolError::from_crabbox(&e, &[])
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Usage(_) => "usage",
        Error::Config { .. } => "config",
        Error::NotFound(_) => "notFound",
        Error::NotOurs(_) => "notOurs",
        Error::WaitTimeout(_) => "waitTimeout",
        Error::Sync(_) => "sync",
        Error::Transport(_) => "transport",
        Error::Io { .. } => "io",
        Error::Interrupted => "interrupted",
        Error::Hinted { error, .. } => kind(error),
    }
}

/// A hint in this front end's terms: the tool to call and with what.
pub(crate) fn hint(hint: &Hint) -> String {
    match hint {
        Hint::Stop { provider, lease_id } => format!(
            "release it with the `stop` tool: {}",
            json!({"id": lease_id, "provider": provider})
        ),
        Hint::Reclaim { provider, id } => format!(
            "if its box still exists, release it with the `stop` tool: {}",
            json!({"id": id, "provider": provider, "reclaim": true})
        ),
        Hint::Rerun {
            provider,
            lease_id,
            command,
        } => {
            let command = if command.shell {
                json!(command.argv.join(" "))
            } else {
                json!(command.argv)
            };
            format!(
                "run it again on the kept box with the `run` tool: {}",
                json!({"id": lease_id, "provider": provider, "command": command})
            )
        }
        Hint::RunOn { provider, id } => format!(
            "run commands on it with the `run` tool: {}",
            json!({"id": id, "provider": provider, "command": "<command>"})
        ),
        Hint::List { provider } => format!(
            "the `list` tool shows the boxes: {}",
            json!({"provider": provider})
        ),
        Hint::Warmup { provider } => format!(
            "the `warmup` tool leases one: {}",
            json!({"provider": provider})
        ),
        Hint::PickLease { leases, .. } => format!(
            "pass `id`, one of: {}",
            leases
                .iter()
                .map(|(id, slug)| format!("{id} ({slug})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Hint::StaleClaim { path } => {
            format!("if the claim is stale, remove {}", path.display())
        }
        Hint::DetachedRun { provider, run_id } => format!(
            "its output: the `logs` tool: {}",
            json!({"run": run_id, "provider": provider, "follow": true})
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_that_is_not_ours_is_a_protocol_error_with_its_hint() {
        let e =
            Error::NotFound("no local lease \"cbx_000000000000\"".into()).with_hint(Hint::List {
                provider: "local".into(),
            });
        let ToolError::Invalid(data) = ToolError::from_crabbox(&e, &[]) else {
            panic!("not a protocol error");
        };
        assert_eq!(data.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert!(data.message.contains("cbx_000000000000"));
        let d = data.data.unwrap();
        assert_eq!(d["kind"], "notFound");
        assert_eq!(d["exitCode"], 4);
        assert!(d["hints"][0].as_str().unwrap().contains("`list` tool"));
    }

    #[test]
    fn a_transport_failure_is_a_failed_result_masked_of_credentials() {
        let key = Secret::new("e2b_0123456789abcdef0123");
        let e = Error::Transport("E2B said: bad key e2b_0123456789abcdef0123".into());
        let ToolError::Failed(r) = ToolError::from_crabbox(&e, std::slice::from_ref(&key)) else {
            panic!("not a failed result");
        };
        assert_eq!(r.is_error, Some(true));
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("0123456789abcdef0123"), "{text}");
        assert!(text.contains("exit code 1"), "{text}");
    }

    #[test]
    fn structured_results_are_masked_in_values_and_keys() {
        let key = Secret::new("e2b_0123456789abcdef0123");
        let r = Structured {
            value: json!({"out": ["x e2b_0123456789abcdef0123 y"], "e2b_0123456789abcdef0123": 1}),
            secrets: vec![key],
        }
        .into_call_tool_result()
        .unwrap();
        let CallToolResponse::Complete(r) = r else {
            panic!("not a complete result");
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("0123456789abcdef0123"), "{text}");
    }
}
