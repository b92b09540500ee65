//! `crabbox workspaces ID [--json]` and `crabbox workspaces rm ID NAME`.

use crabbox_core::{Error, Result};

use crate::cli::{GlobalArgs, WorkspacesArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: WorkspacesArgs) -> Result<i32> {
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let usage = || {
        Error::Usage(
            "usage: crabbox workspaces ID [--json], or crabbox workspaces rm ID NAME".into(),
        )
    };
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    match words.as_slice() {
        ["rm", id, name] => {
            engine
                .remove_workspace(id, name, context::reporter().as_ref())
                .await?;
            eprintln!("crabbox: removed workspace {name} of {id}");
            Ok(0)
        }
        [id] if *id != "rm" => {
            let list = engine.workspaces(id).await?;
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
        _ => Err(usage()),
    }
}
