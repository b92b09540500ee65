//! `crabbox snapshot ID [--name N]`, `crabbox snapshot list`, `crabbox snapshot delete ID`.

use crabbox_core::Result;

use crate::cli::{GlobalArgs, SnapshotArgs, SnapshotCommand};
use crate::context;

pub async fn run(g: &GlobalArgs, a: SnapshotArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    match a.command {
        Some(SnapshotCommand::List(l)) => {
            let all = engine.snapshots().await?;
            if l.json {
                super::print_json(&all);
            } else if all.is_empty() {
                eprintln!("crabbox: no {} snapshots", engine.name());
            } else {
                for s in all {
                    println!("{} {}", s.id, s.names.join(","));
                }
            }
        }
        Some(SnapshotCommand::Delete { id }) => {
            let gone = engine.delete_snapshot(&id).await?;
            eprintln!("crabbox: deleted snapshot {}", gone.id);
        }
        None => {
            let id = a.id.expect("clap requires an id without a subcommand");
            let out = engine.snapshot(&id, a.name.as_deref()).await?;
            if a.json {
                super::print_json(&out);
            } else {
                eprintln!(
                    "crabbox: snapshot of {} ({}) taken; start a box from it with: crabbox \
                     warmup --provider {} --from-snapshot {}",
                    out.lease_id,
                    out.slug,
                    engine.name(),
                    out.snapshot.id
                );
                println!("{}", out.snapshot.id);
            }
        }
    }
    Ok(0)
}
