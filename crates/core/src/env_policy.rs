//! Which of the caller's environment variables reach the remote command.
//!
//! The remote command runs code from the repository (its test script, its build), and a box
//! has internet access, so any variable handed to it can be printed or sent away by whoever
//! wrote that repository. `env.allow` decides which variables are handed over, and it can be
//! set by a repository's own `crabbox.yaml`/`.crabbox.yaml`, which arrives with a clone. This
//! module owns the decision, so that a cloned repository cannot ask for the user's secrets:
//!
//! 1. **Which names are asked for** is the merged `env.allow` (built-in default
//!    `[CI, NODE_OPTIONS]`; a later layer's list *replaces* an earlier one, as figment merges
//!    lists: a repository list replaces the user file's, `CRABBOX_ENV_ALLOW` replaces both)
//!    plus every `run --allow-env NAME`, which adds to the list rather than replacing it.
//!    Only variables that are set in the caller's environment are considered.
//! 2. **crabbox's own credentials are never forwarded**, whoever asks: the variables of every
//!    secret setting in the config schema ([`LoadedConfig::secret_env_vars`], e.g. a provider's
//!    API key variables).
//! 3. **A variable whose name marks it secret** ([`is_secret_name`]: `*_KEY`, `*_TOKEN`,
//!    `*_SECRET`, `*PASSWORD*`) is forwarded only if a layer the user controls asks for it: the
//!    built-in defaults, the user's config file (or `CRABBOX_CONFIG`), `CRABBOX_ENV_ALLOW`, a
//!    flag, or `--allow-env`. If only repository files list it, it is refused. Every layer's own
//!    list counts here, not just the one in force: a name the user's file lists is the user's
//!    request even when a repository list (that also lists it) replaced the user's list.
//!
//! Refusals are reported by name and reason only, never with the value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{LoadedConfig, Origin};

/// What to hand the remote command, and what was held back.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ForwardedEnv {
    /// Variables to set in the remote command's environment.
    pub vars: BTreeMap<String, String>,
    /// Variables that were asked for and are set, but are not forwarded.
    pub refused: Vec<RefusedVar>,
}

/// Names only: the values are the caller's and may be secret.
impl std::fmt::Debug for ForwardedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardedEnv")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("refused", &self.refused)
            .finish()
    }
}

/// A variable that was asked for and not forwarded. Holds no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedVar {
    pub name: String,
    pub reason: RefusalReason,
}

/// Why a variable was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// It holds one of crabbox's own credentials (a secret setting's variable).
    CrabboxCredential,
    /// Its name marks it secret and no layer the user controls asks for it; `repo_files` are
    /// the repository config files that do.
    SecretNameFromRepository { repo_files: Vec<PathBuf> },
}

impl std::fmt::Display for RefusedVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not forwarding {} to the box: ", self.name)?;
        match &self.reason {
            RefusalReason::CrabboxCredential => write!(f, "it is crabbox's own credential"),
            RefusalReason::SecretNameFromRepository { repo_files } => {
                write!(f, "its name marks it secret and ")?;
                match repo_files.as_slice() {
                    [] => write!(f, "none of your settings allows it")?,
                    [one] => write!(f, "only repository config {} allows it", one.display())?,
                    many => write!(
                        f,
                        "only repository configs {} allow it",
                        many.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    )?,
                }
                write!(
                    f,
                    "; allow it in your own config, CRABBOX_ENV_ALLOW or --allow-env"
                )
            }
        }
    }
}

/// Whether a variable's name marks it as holding a secret: its last `_`-separated word is
/// `KEY`, `TOKEN` or `SECRET` (`API_KEY`, `GITHUB_TOKEN`, and the bare words themselves, but
/// not `MONKEY`), or it contains `PASSWORD` anywhere. Case-insensitive.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let last_word = upper.rsplit('_').next().unwrap_or_default();
    matches!(last_word, "KEY" | "TOKEN" | "SECRET") || upper.contains("PASSWORD")
}

/// Decides which of `caller_env` reaches the remote command: the names `cfg`'s `env.allow`
/// and `extra_allow` (`run --allow-env`) ask for, minus crabbox's own credentials, minus
/// secret-named variables only repository config files ask for. See the module docs.
pub fn forwarded_env(
    cfg: &LoadedConfig,
    caller_env: &BTreeMap<String, String>,
    extra_allow: &[String],
) -> ForwardedEnv {
    let own_credentials: BTreeSet<String> = cfg.secret_env_vars().into_iter().collect();
    let layers = cfg.layer_lists("env.allow");
    let mut out = ForwardedEnv::default();
    let mut seen = BTreeSet::new();
    for name in cfg.core.env.allow.iter().chain(extra_allow) {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let Some(value) = caller_env.get(name) else {
            continue;
        };
        let reason = if own_credentials.contains(name) {
            Some(RefusalReason::CrabboxCredential)
        } else if is_secret_name(name) {
            let askers = layers
                .iter()
                .filter(|(_, list)| list.contains(name))
                .map(|(origin, _)| origin);
            let mut repo_files = Vec::new();
            let mut user_asks = extra_allow.contains(name);
            for origin in askers {
                match origin {
                    Origin::RepoFile { path } => repo_files.push(path.clone()),
                    Origin::Default
                    | Origin::UserFile { .. }
                    | Origin::Env { .. }
                    | Origin::Flag { .. } => user_asks = true,
                }
            }
            (!user_asks).then_some(RefusalReason::SecretNameFromRepository { repo_files })
        } else {
            None
        };
        match reason {
            Some(reason) => out.refused.push(RefusedVar {
                name: name.clone(),
                reason,
            }),
            None => {
                out.vars.insert(name.clone(), value.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;

    #[test]
    fn secret_names() {
        for secret in [
            "API_KEY",
            "GITHUB_TOKEN",
            "db_password",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "CLIENT_SECRET",
            "PASSWORD",
            "MYSQL_ROOT_PASSWORD_FILE",
            "KEY",
            "TOKEN",
            "SECRET",
            "_KEY",
            "npm_token",
            "Some_Api_Key",
        ] {
            assert!(is_secret_name(secret), "{secret} should be secret");
        }
        for plain in [
            "MONKEY",
            "CI",
            "NODE_OPTIONS",
            "PATH",
            "KEYBOARD_LAYOUT",
            "TOKENIZER",
            "SECRETARY",
            "KEY_FILE",
            "API_KEYS",
            "TURKEY",
            "",
        ] {
            assert!(!is_secret_name(plain), "{plain} should not be secret");
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        opts: LoadOptions,
    }

    fn setup(env: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let opts = LoadOptions {
            cwd: repo,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: vec![],
            user_file: Some(dir.path().join("user.yaml")),
            sections: vec![crate::config::tests::ACME],
        };
        Setup { dir, opts }
    }

    impl Setup {
        fn user(self, text: &str) -> Self {
            std::fs::write(self.dir.path().join("user.yaml"), text).unwrap();
            self
        }
        fn repo(self, name: &str, text: &str) -> Self {
            std::fs::write(self.opts.cwd.join(name), text).unwrap();
            self
        }
        fn repo_path(&self, name: &str) -> PathBuf {
            self.opts.cwd.join(name)
        }
        fn forward(&self, caller: &[(&str, &str)], extra: &[&str]) -> ForwardedEnv {
            let cfg = LoadedConfig::load(&self.opts).unwrap();
            let caller = caller
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            forwarded_env(&cfg, &caller, &extra)
        }
    }

    const CALLER: &[(&str, &str)] = &[
        ("CI", "true"),
        ("NODE_OPTIONS", "--max-old-space-size=4096"),
        ("ACME_API_KEY", "acme_value_one"),
        ("CRABBOX_ACME_API_KEY", "acme_value_two"),
        ("GITHUB_TOKEN", "ghp_value"),
        ("LEAKME", "x"),
        ("FOO", "foo"),
    ];

    fn names(f: &ForwardedEnv) -> Vec<&str> {
        f.vars.keys().map(String::as_str).collect()
    }

    fn refused(f: &ForwardedEnv) -> Vec<&str> {
        f.refused.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn defaults_forward_ci_and_node_options_only() {
        let f = setup(&[]).forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI", "NODE_OPTIONS"]);
        assert_eq!(f.vars["CI"], "true");
        assert!(f.refused.is_empty());
    }

    #[test]
    fn unset_and_unlisted_variables_are_not_forwarded_nor_reported() {
        let f = setup(&[])
            .user("env:\n  allow: [CI, NOT_SET_ANYWHERE, NOT_SET_TOKEN]\n")
            .forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI"]);
        assert!(f.refused.is_empty(), "{f:?}");
    }

    #[test]
    fn crabbox_credentials_are_never_forwarded_whoever_asks() {
        let s = setup(&[("CRABBOX_ENV_ALLOW", "ACME_API_KEY,CI")])
            .user("env:\n  allow: [CRABBOX_ACME_API_KEY, ACME_API_KEY]\n");
        let f = s.forward(CALLER, &["CRABBOX_ACME_API_KEY", "ACME_API_KEY"]);
        assert_eq!(names(&f), ["CI"]);
        assert_eq!(refused(&f), ["ACME_API_KEY", "CRABBOX_ACME_API_KEY"]);
        for r in &f.refused {
            assert_eq!(r.reason, RefusalReason::CrabboxCredential);
        }
        assert_eq!(
            f.refused[0].to_string(),
            "not forwarding ACME_API_KEY to the box: it is crabbox's own credential"
        );
    }

    #[test]
    fn repository_list_replaces_the_users_and_secret_names_from_it_are_refused() {
        let s = setup(&[]).user("env:\n  allow: [FOO]\n").repo(
            ".crabbox.yaml",
            "env:\n  allow: [ACME_API_KEY, GITHUB_TOKEN, CI]\n",
        );
        let f = s.forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI"], "FOO was replaced by the repository list");
        assert_eq!(refused(&f), ["ACME_API_KEY", "GITHUB_TOKEN"]);
        let dot = s.repo_path(".crabbox.yaml");
        assert_eq!(
            f.refused[1].reason,
            RefusalReason::SecretNameFromRepository {
                repo_files: vec![dot.clone()]
            }
        );
        assert_eq!(
            f.refused[1].to_string(),
            format!(
                "not forwarding GITHUB_TOKEN to the box: its name marks it secret and only \
                 repository config {} allows it; allow it in your own config, \
                 CRABBOX_ENV_ALLOW or --allow-env",
                dot.display()
            )
        );
    }

    #[test]
    fn both_repository_files_are_named() {
        let s = setup(&[])
            .repo("crabbox.yaml", "env:\n  allow: [GITHUB_TOKEN]\n")
            .repo(".crabbox.yaml", "env:\n  allow: [GITHUB_TOKEN, CI]\n");
        let f = s.forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI"]);
        let msg = f.refused[0].to_string();
        assert!(
            msg.contains("only repository configs ")
                && msg.contains(&s.repo_path("crabbox.yaml").display().to_string())
                && msg.contains(&s.repo_path(".crabbox.yaml").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn non_secret_names_from_a_repository_are_forwarded() {
        let f = setup(&[])
            .repo(".crabbox.yaml", "env:\n  allow: [FOO, CI]\n")
            .forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI", "FOO"]);
        assert!(f.refused.is_empty());
    }

    #[test]
    fn a_secret_name_the_user_file_also_lists_is_the_users_request() {
        let f = setup(&[])
            .user("env:\n  allow: [GITHUB_TOKEN]\n")
            .repo(".crabbox.yaml", "env:\n  allow: [GITHUB_TOKEN, CI]\n")
            .forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI", "GITHUB_TOKEN"]);
        assert_eq!(f.vars["GITHUB_TOKEN"], "ghp_value");
        assert!(f.refused.is_empty());
    }

    #[test]
    fn a_secret_name_only_the_user_file_lists_is_forwarded_without_repo_config() {
        let f = setup(&[])
            .user("env:\n  allow: [GITHUB_TOKEN, CI]\n")
            .forward(CALLER, &[]);
        assert_eq!(names(&f), ["CI", "GITHUB_TOKEN"]);
    }

    #[test]
    fn crabbox_config_file_is_the_users() {
        let s = setup(&[]);
        let explicit = s.dir.path().join("explicit.yaml");
        std::fs::write(&explicit, "env:\n  allow: [GITHUB_TOKEN]\n").unwrap();
        let mut s = s;
        s.opts
            .env
            .insert("CRABBOX_CONFIG".into(), explicit.display().to_string());
        let f = s.forward(CALLER, &[]);
        assert_eq!(names(&f), ["GITHUB_TOKEN"]);
    }

    #[test]
    fn environment_allow_list_is_the_users_and_replaces_the_repositorys() {
        let f = setup(&[("CRABBOX_ENV_ALLOW", "GITHUB_TOKEN")])
            .repo(".crabbox.yaml", "env:\n  allow: [FOO, CI]\n")
            .forward(CALLER, &[]);
        assert_eq!(names(&f), ["GITHUB_TOKEN"]);
    }

    #[test]
    fn allow_env_flag_adds_and_is_the_users() {
        let f = setup(&[])
            .repo(
                ".crabbox.yaml",
                "env:\n  allow: [ACME_API_KEY, GITHUB_TOKEN, CI]\n",
            )
            .forward(CALLER, &["GITHUB_TOKEN", "FOO", "ACME_API_KEY"]);
        assert_eq!(names(&f), ["CI", "FOO", "GITHUB_TOKEN"]);
        assert_eq!(refused(&f), ["ACME_API_KEY"]);
        assert_eq!(f.refused[0].reason, RefusalReason::CrabboxCredential);
    }

    #[test]
    fn duplicates_are_reported_once() {
        let f = setup(&[])
            .repo(
                ".crabbox.yaml",
                "env:\n  allow: [GITHUB_TOKEN, GITHUB_TOKEN]\n",
            )
            .forward(CALLER, &[]);
        assert_eq!(refused(&f), ["GITHUB_TOKEN"]);
    }

    #[test]
    fn refusals_and_debug_never_show_values() {
        let f = setup(&[])
            .repo(
                ".crabbox.yaml",
                "env:\n  allow: [ACME_API_KEY, CRABBOX_ACME_API_KEY, GITHUB_TOKEN, CI]\n",
            )
            .forward(CALLER, &[]);
        assert_eq!(f.refused.len(), 3);
        let shown = format!(
            "{f:?} {}",
            f.refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        for name in ["ACME_API_KEY", "CRABBOX_ACME_API_KEY", "GITHUB_TOKEN"] {
            let value = CALLER.iter().find(|(k, _)| *k == name).unwrap().1;
            // The message names the variable only, so a failure prints no value either.
            assert!(!shown.contains(value), "the value of {name} was shown");
        }
    }
}
