//! The tool registry. Each tool is one file: its arguments (a `Deserialize` + `JsonSchema`
//! struct, unknown fields refused), and one `#[tool]` function on [`CrabboxServer`] in a
//! `#[tool_router(router = <tool>_router)]` impl that sets up the call, asks the engine, and
//! returns a structured result. Adding a tool is that file and one line in [`router`].

mod boxes;
mod download;
mod list;
mod logs;
mod pause;
mod run;
mod shard;
mod snapshot;
mod status;
mod stop;
mod url;
mod wait;
mod warmup;

use std::sync::Arc;

use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::JsonObject;
use rmcp::ErrorData;

use crate::server::CrabboxServer;

/// A tool's arguments, parsed into `P`. Arguments that do not fit `P` (a wrong type, a
/// missing or unknown field) are a protocol error (`invalid params`) naming the tool and the
/// problem, and the server goes on serving. (rmcp's own `Parameters` answers them with a failed
/// tool result instead; the tool macro takes any extractor named `Parameters` for the input
/// schema.)
pub(crate) struct Parameters<P>(pub P);

impl<P: schemars::JsonSchema> schemars::JsonSchema for Parameters<P> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        P::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        P::json_schema(generator)
    }
}

impl<S, P: serde::de::DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<P> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let arguments = context.arguments.take().unwrap_or_default();
        serde_json::from_value(serde_json::Value::Object(arguments))
            .map(Parameters)
            .map_err(|e| {
                ErrorData::invalid_params(format!("{}: bad arguments: {e}", context.name()), None)
            })
    }
}

/// Every tool the server offers.
pub(crate) fn router() -> ToolRouter<CrabboxServer> {
    CrabboxServer::warmup_router()
        + CrabboxServer::run_router()
        + CrabboxServer::status_router()
        + CrabboxServer::list_router()
        + CrabboxServer::stop_router()
        + CrabboxServer::pause_router()
        + CrabboxServer::snapshot_router()
        + CrabboxServer::url_router()
        + CrabboxServer::download_router()
        + CrabboxServer::logs_router()
        + CrabboxServer::wait_router()
        + CrabboxServer::shard_router()
        + CrabboxServer::boxes_router()
}

/// The output schema of a tool whose structured result is a `T`.
pub(crate) fn schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    rmcp::handler::server::tool::schema_for_output::<T>()
}

/// The `root` and `provider` arguments of a tool's argument struct, as a [`Place`].
macro_rules! place {
    ($args:expr) => {
        crate::call::Place {
            root: $args.root.clone(),
            provider: $args.provider.clone(),
        }
    };
}
pub(crate) use place;
