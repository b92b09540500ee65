//! `download`: fetch a file or directory from a lease's box.

use crabbox_core::engine::{ArtifactReport, Download};
use crabbox_core::events::Reporter;
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DownloadArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id (`cbx_...`), slug, or the provider's id of the box.
    id: String,
    /// What to fetch: relative to the box's workdir unless absolute (`..` refused).
    remote: String,
    /// Where to put it on this machine: relative to the repository root unless absolute; a
    /// file goes into it when it is a directory.
    local: String,
}

#[tool_router(router = download_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Fetch a file or a whole directory from a lease's box to this machine.
    #[tool(name = "download", output_schema = schema::<ArtifactReport>())]
    async fn download(
        &self,
        Parameters(a): Parameters<DownloadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<ArtifactReport>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let d = Download {
            remote: a.remote,
            local: call.cfg.repo_root.join(a.local),
        };
        let reporter: &dyn Reporter = call.reporter.as_ref();
        let result = call.engine.download(&a.id, d, reporter).await;
        call.finish(result).await
    }
}
