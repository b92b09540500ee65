//! `doctor`: checks that a run could work here, before any box exists, each with the fix when
//! it fails: the config layers (which files were found, that they parse, which layer sets
//! what), git and the repository, the provider's placement rules (workdir and user), and
//! whatever the provider checks itself through [`Provider::doctor`] (a key present, its
//! endpoints answering, its template existing). Secrets are never shown, only where they
//! came from.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{LoadOptions, LoadedConfig, Origin};
use crate::error::Result;
use crate::provider::Provider;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    /// Works, but worth knowing (a setting that cannot be verified from here).
    Warn,
    Fail,
    /// Not run, because something it needs failed.
    Skip,
}

/// One check and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Short and stable: `config`, `git`, `repository`, `workdir`, `e2b.apiKey`...
    pub name: String,
    pub status: CheckStatus,
    /// What was found (never a secret's value).
    pub detail: String,
    /// What to do when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DoctorReport {
    /// The provider checked (`None` when the config did not load).
    pub provider: Option<String>,
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// No check failed (warnings and skips are fine).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }
}

/// Runs every check: loads the config from `opts`, builds the provider with `build` (a
/// failure is a failed check, not an error), then asks it for its own checks.
pub async fn diagnose(
    opts: &LoadOptions,
    build: impl FnOnce(&LoadedConfig) -> Result<Box<dyn Provider>>,
) -> DoctorReport {
    let mut checks = Vec::new();
    checks.extend(git_checks(&opts.cwd));
    let cfg = match LoadedConfig::load(opts) {
        Ok(cfg) => cfg,
        Err(e) => {
            checks.push(Check::fail(
                "config",
                format!("the config does not load: {e}"),
                "fix the file and line named above (see config/crabbox.example.yaml for every \
                 key), or move it aside to fall back to the defaults",
            ));
            checks.push(Check::skip(
                "provider",
                "not checked: the config did not load",
            ));
            return DoctorReport {
                provider: None,
                checks,
            };
        }
    };
    checks.extend(config_checks(&cfg, opts.user_file.as_deref()));
    let provider_name = Some(cfg.core.provider.clone());
    let provider = match build(&cfg) {
        Ok(p) => p,
        Err(e) => {
            checks.push(Check::fail(
                "provider",
                format!(
                    "provider {} cannot be set up: {e}",
                    provider_name.as_deref().unwrap_or("?")
                ),
                "do what the message says (`crabbox config show` says where each value \
                 comes from)",
            ));
            return DoctorReport {
                provider: provider_name,
                checks,
            };
        }
    };
    checks.push(Check::pass(
        "provider",
        format!("{} (endpoint {})", provider.name(), provider.endpoint()),
    ));
    // The workdir alone: a provider's other preflight rules (E2B's egress rules) are its own
    // checks, each with its own fix.
    checks.push(match provider.workdir("cbx_000000000000") {
        Ok(dir) => Check::pass("workdir", format!("files go to {dir} on the box")),
        Err(e) => Check::fail(
            "workdir",
            e.to_string(),
            "change the workdir or user setting the message names",
        ),
    });
    checks.extend(provider.doctor().await);
    DoctorReport {
        provider: Some(provider.name().to_string()),
        checks,
    }
}

/// git is installed and the directory is in a work tree (outside one the directory is
/// synced by a walk, which works but is not what the reference tool accepts).
pub fn git_checks(cwd: &Path) -> Vec<Check> {
    let version = std::process::Command::new("git").arg("--version").output();
    let git = match version {
        Ok(out) if out.status.success() => Check::pass(
            "git",
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ),
        _ => {
            return vec![Check::fail(
                "git",
                "git is not installed or not on PATH",
                "install git (apt-get install git, brew install git); crabbox lists a \
                 repository's files with it",
            )]
        }
    };
    let repo = match crate::sync::git_root(cwd) {
        Some(root) => Check::pass("repository", format!("git work tree {}", root.display())),
        None => Check::warn(
            "repository",
            format!("{} is not in a git work tree", cwd.display()),
            "run crabbox from a git repository (git init) so that only tracked and \
             unignored files are synced; outside one the directory is walked honouring \
             .gitignore and .crabboxignore",
        ),
    };
    vec![git, repo]
}

/// Which config files were found and which layer sets which keys.
pub fn config_checks(cfg: &LoadedConfig, user_file: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut searched: Vec<PathBuf> = user_file.map(Path::to_path_buf).into_iter().collect();
    searched.extend(["crabbox.yaml", ".crabbox.yaml"].map(|n| cfg.repo_root.join(n)));
    let missing: Vec<String> = searched
        .iter()
        .filter(|p| !cfg.files.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    let found = if cfg.files.is_empty() {
        "no config file found".to_string()
    } else {
        format!(
            "read {}",
            cfg.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let absent = if missing.is_empty() {
        String::new()
    } else {
        format!("; not present: {}", missing.join(", "))
    };
    checks.push(Check::pass("config", format!("{found}{absent}")));
    // Which layer sets what (defaults left out).
    let mut by_layer: Vec<(String, Vec<String>)> = Vec::new();
    for shown in cfg.describe() {
        let Some(origin) = shown.origin else { continue };
        if origin == Origin::Default {
            continue;
        }
        let (layer, key) = match &origin {
            Origin::Env { var } => (
                "the environment".to_string(),
                format!("{} ({var})", shown.key),
            ),
            Origin::Flag { flag } => ("flags".to_string(), format!("{} ({flag})", shown.key)),
            file => (file.to_string(), shown.key.to_string()),
        };
        match by_layer.iter_mut().find(|(l, _)| *l == layer) {
            Some((_, keys)) => keys.push(key),
            None => by_layer.push((layer, vec![key])),
        }
    }
    for (layer, keys) in by_layer {
        checks.push(Check::pass(
            "config layer",
            format!("{layer} sets {}", keys.join(", ")),
        ));
    }
    for w in &cfg.warnings {
        checks.push(Check::warn(
            "config",
            w.clone(),
            "remove or correct the key (see config/crabbox.example.yaml)",
        ));
    }
    checks
}
