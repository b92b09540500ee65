//! What one tool call sets up before it asks the engine anything: the repository it works
//! in, the config layers for it (as the CLI loads them), the engine over the configured
//! provider, a reporter that turns what happens into progress, and the credentials to mask
//! in whatever goes back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crabbox_core::config::{flag, FlagValue, LoadedConfig};
use crabbox_core::engine::Engine;
use crabbox_core::events::Reporter;
use crabbox_core::frontend::{self, Invocation};
use crabbox_core::secret::Secret;
use rmcp::service::RequestContext;
use rmcp::RoleServer;

use crate::failure::{Structured, ToolError};
use crate::inflight::Counted;
use crate::progress::{CallReporter, Forwarder};
use crate::server::CrabboxServer;

/// How long a call waits for cancelled runs to finish stopping before it goes ahead anyway.
const STOPPING_WAIT: Duration = Duration::from_secs(60);

/// Where a call works: every tool takes these.
#[derive(Debug, Default, Clone)]
pub(crate) struct Place {
    /// The repository (or a directory in it); the server's directory when `None`.
    pub root: Option<String>,
    /// The provider, over the config's `provider` setting.
    pub provider: Option<String>,
}

/// One tool call's setup.
pub(crate) struct Call<'a> {
    pub cfg: LoadedConfig,
    pub engine: Engine,
    pub env: std::collections::BTreeMap<String, String>,
    pub reporter: Arc<CallReporter>,
    pub secrets: Vec<Secret>,
    forwarder: Option<Forwarder>,
    _counted: Counted<'a>,
}

impl CrabboxServer {
    /// Sets up a call of `place` with `extra` flags: after any cancelled run has stopped, the
    /// config for its root and the engine.
    pub(crate) async fn call(
        &self,
        place: &Place,
        extra: Vec<FlagValue>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Call<'_>, ToolError> {
        let counted = self.inner.inflight.call();
        tokio::select! {
            _ = self.inner.inflight.wait_stopped(STOPPING_WAIT) => {}
            // A run cancelled while it waits is one of those it waits for: itself.
            _ = ctx.ct.cancelled() => {}
        }
        let opts = self.options();
        let cwd = root(&opts.cwd, place.root.as_deref())?;
        let mut flags = opts.flags.clone();
        if let Some(p) = &place.provider {
            flags.push(flag("provider", "provider (tool argument)", p.clone()));
        }
        flags.extend(extra);
        let inv = Invocation {
            cwd,
            env: opts.env.clone(),
            flags,
        };
        let (reporter, forwarder) = crate::progress::start(ctx);
        let cfg = frontend::load_config(&opts.registry, &inv).map_err(ToolError::from)?;
        let secrets = frontend::credentials(&cfg, &inv.env);
        reporter.mask(secrets.clone());
        for w in &cfg.warnings {
            reporter.status(&format!("warning: {w}"));
        }
        let engine = frontend::engine(&opts.registry, &cfg, &inv.env, reporter.clone())
            .map_err(|e| ToolError::from_crabbox(&e, &secrets))?;
        Ok(Call {
            cfg,
            engine,
            env: inv.env,
            reporter,
            secrets,
            forwarder: Some(forwarder),
            _counted: counted,
        })
    }
}

impl Call<'_> {
    /// `value` as the call's structured result, or `e` as its failure; after every progress
    /// notification of the call is out.
    pub async fn finish<T>(
        mut self,
        result: crabbox_core::Result<T>,
    ) -> Result<Structured<T>, ToolError> {
        if let Some(f) = self.forwarder.take() {
            f.finish().await;
        }
        match result {
            Ok(value) => Ok(Structured {
                value,
                secrets: self.secrets,
            }),
            Err(e) => Err(ToolError::from_crabbox(&e, &self.secrets)),
        }
    }

    /// Ends the call with `e` after every progress notification is out.
    pub async fn fail(mut self, e: ToolError) -> ToolError {
        if let Some(f) = self.forwarder.take() {
            f.finish().await;
        }
        e
    }
}

/// The directory a call works in: `root` (relative to the server's directory) or the server's
/// directory; it must exist.
fn root(server_cwd: &std::path::Path, root: Option<&str>) -> Result<PathBuf, ToolError> {
    let Some(root) = root else {
        return Ok(server_cwd.to_path_buf());
    };
    let path = server_cwd.join(root);
    if !path.is_dir() {
        return Err(ToolError::invalid(format!(
            "root {root:?}: {} is not a directory",
            path.display()
        )));
    }
    Ok(path)
}
