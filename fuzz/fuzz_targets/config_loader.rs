//! The config loader over an arbitrary config file.
//!
//! The first byte picks where the text goes (`.crabbox.yaml`, `crabbox.yaml` or the user's
//! file) and whether the `e2b` section is in the schema; the rest is the file. Checks: loading
//! returns a config or a clean error, never panics; so do what front ends do next with a
//! loaded config (`config show`, the per-layer lists, the `e2b` section and its endpoints).

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use crabbox_core::config::{LoadOptions, LoadedConfig};
use crabbox_provider_e2b::settings::{self, E2bSettings};
use libfuzzer_sys::fuzz_target;

/// One scratch directory for the whole run (a repo dir inside it, not in a git work tree).
fn scratch() -> &'static (tempfile::TempDir, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        // The loader asks git for the repository root; outside a work tree that is the
        // current directory either way. Without git on PATH the answer comes without a
        // process per input, which makes fuzzing some fifty times faster.
        std::env::set_var("PATH", "/nonexistent");
        let dir = tempfile::tempdir().expect("a temp dir");
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).expect("the repo dir");
        (dir, repo)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let (dir, repo) = scratch();
    let user = dir.path().join("user.yaml");
    let file = match selector % 3 {
        0 => repo.join(".crabbox.yaml"),
        1 => repo.join("crabbox.yaml"),
        _ => user.clone(),
    };
    for f in [
        repo.join(".crabbox.yaml"),
        repo.join("crabbox.yaml"),
        user.clone(),
    ] {
        let _ = std::fs::remove_file(f);
    }
    std::fs::write(&file, text).expect("writing the config");
    let e2b = selector & 0x80 != 0;
    let opts = LoadOptions {
        cwd: repo.clone(),
        env: BTreeMap::new(),
        flags: vec![],
        user_file: Some(user),
        sections: if e2b {
            vec![crabbox_provider_e2b::SECTION]
        } else {
            vec![]
        },
    };
    match LoadedConfig::load(&opts) {
        Ok(cfg) => {
            let _ = cfg.describe();
            for key in ["env.allow", "sync.exclude", "sync.include"] {
                let _ = cfg.layer_lists(key);
            }
            let _ = cfg.secret_env_vars();
            let _ = cfg.core.sync.options();
            if e2b {
                if let Ok(s) = cfg.section::<E2bSettings>("e2b") {
                    let _ = settings::refuse_repo_redirect(&cfg, &s);
                    let _ = settings::endpoints(&cfg, &s);
                }
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.exit_code());
        }
    }
});
