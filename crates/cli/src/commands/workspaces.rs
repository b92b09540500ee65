//! `crabbox workspaces ID [--json]` and `crabbox workspaces rm ID NAME`.

use crabbox_core::{Error, Result};

use crate::cli::{GlobalArgs, WorkspacesArgs, WorkspacesCommand};
use crate::context;

pub async fn run(g: &GlobalArgs, a: WorkspacesArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    if let Some(WorkspacesCommand::Rm { id, name }) = a.command {
        engine
            .remove_workspace(&id, &name, context::reporter().as_ref())
            .await?;
        eprintln!("crabbox: removed workspace {name} of {id}");
        return Ok(0);
    }
    let id = a.id.ok_or_else(|| {
        Error::Usage("name the lease: crabbox workspaces ID (or workspaces rm ID NAME)".into())
    })?;
    let list = engine.workspaces(&id).await?;
    if a.json {
        super::print_json(&list);
        return Ok(0);
    }
    for w in &list.workspaces {
        println!(
            "{} {} last-sync={}",
            w.name,
            w.workdir,
            w.last_sync.as_deref().unwrap_or("never")
        );
    }
    Ok(0)
}
