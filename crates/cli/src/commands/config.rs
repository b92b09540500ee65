//! `crabbox config show|files`.

use crabbox_core::Result;

use crate::cli::{ConfigCommand, GlobalArgs};
use crate::context;

pub fn run(g: &GlobalArgs, c: ConfigCommand) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    match c {
        ConfigCommand::Show { json } => {
            let shown = cfg.describe();
            if json {
                super::print_json(&serde_json::json!({
                    "files": cfg.files,
                    "repoRoot": cfg.repo_root,
                    "settings": shown,
                }));
            } else {
                for s in shown {
                    let value = match &s.value {
                        serde_json::Value::String(v) => v.clone(),
                        serde_json::Value::Null => "(unset)".into(),
                        other => other.to_string(),
                    };
                    let origin = s
                        .origin
                        .map(|o| o.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!("{:<16} = {:<32} # {origin}", s.key, value);
                }
            }
        }
        ConfigCommand::Files => {
            for f in &cfg.files {
                println!("{}", f.display());
            }
        }
    }
    Ok(0)
}
