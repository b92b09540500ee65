//! Configuration: built-in defaults < user file < `crabbox.yaml` < `.crabbox.yaml` <
//! environment < flags, merged with figment, with the origin of every value kept.
//!
//! The schema (every key, its environment variables, whether it is secret) lives here as
//! data so that `config show`, unknown-key warnings and env precedence all agree. Provider
//! sections are extracted by the provider crates with [`LoadedConfig::section`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::sync::SyncOptions;

/// The compiled-in lowest layer.
pub const DEFAULTS_YAML: &str = include_str!("../../../config/defaults.yaml");

/// One known setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted YAML path, as users write it (`e2b.apiUrl`).
    pub key: &'static str,
    /// Environment variables, highest precedence first; the first non-empty one wins.
    pub env: &'static [&'static str],
    /// Never printed, never read from files.
    pub secret: bool,
    /// Comma-separated list when it comes from the environment.
    pub list: bool,
}

const fn s(key: &'static str, env: &'static [&'static str]) -> Setting {
    Setting {
        key,
        env,
        secret: false,
        list: false,
    }
}

/// Every setting crabbox knows.
pub const SCHEMA: &[Setting] = &[
    s("provider", &["CRABBOX_PROVIDER"]),
    s("target", &["CRABBOX_TARGET"]),
    s("ttl", &["CRABBOX_TTL"]),
    s("idleTimeout", &["CRABBOX_IDLE_TIMEOUT"]),
    Setting {
        key: "sync.exclude",
        env: &["CRABBOX_SYNC_EXCLUDE"],
        secret: false,
        list: true,
    },
    Setting {
        key: "sync.include",
        env: &["CRABBOX_SYNC_INCLUDE"],
        secret: false,
        list: true,
    },
    s("sync.delete", &["CRABBOX_SYNC_DELETE"]),
    s("sync.timeout", &["CRABBOX_SYNC_TIMEOUT"]),
    s("sync.allowLarge", &["CRABBOX_SYNC_ALLOW_LARGE"]),
    Setting {
        key: "env.allow",
        env: &["CRABBOX_ENV_ALLOW"],
        secret: false,
        list: true,
    },
    Setting {
        key: "e2b.apiKey",
        env: &["CRABBOX_E2B_API_KEY", "E2B_API_KEY"],
        secret: true,
        list: false,
    },
    s("e2b.apiUrl", &["CRABBOX_E2B_API_URL", "E2B_API_URL"]),
    s("e2b.domain", &["CRABBOX_E2B_DOMAIN", "E2B_DOMAIN"]),
    s(
        "e2b.sandboxUrl",
        &["CRABBOX_E2B_SANDBOX_URL", "E2B_SANDBOX_URL"],
    ),
    s("e2b.template", &["CRABBOX_E2B_TEMPLATE"]),
    s("e2b.workdir", &["CRABBOX_E2B_WORKDIR"]),
    s("e2b.user", &["CRABBOX_E2B_USER"]),
    s("e2b.maxTtl", &["CRABBOX_E2B_MAX_TTL"]),
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Default,
    /// The user's own file (or `CRABBOX_CONFIG`): trusted like the environment.
    UserFile {
        path: PathBuf,
    },
    /// `crabbox.yaml` / `.crabbox.yaml` at the repository root: comes with the clone.
    RepoFile {
        path: PathBuf,
    },
    Env {
        var: String,
    },
    Flag {
        flag: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::UserFile { path } => write!(f, "user config {}", path.display()),
            Origin::RepoFile { path } => write!(f, "repository config {}", path.display()),
            Origin::Env { var } => write!(f, "environment {var}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// A flag value to lay over everything else.
#[derive(Debug, Clone)]
pub struct FlagValue {
    pub key: &'static str,
    pub flag: &'static str,
    pub value: Value,
}

impl FlagValue {
    pub fn new(key: &'static str, flag: &'static str, value: impl Into<Value>) -> Self {
        Self {
            key,
            flag,
            value: value.into(),
        }
    }
}

/// Inputs to [`LoadedConfig::load`]; the environment is passed in so tests need not touch
/// the process's own.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where to look for the repository (usually the current directory).
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub flags: Vec<FlagValue>,
    /// The user config file; `None` for none.
    pub user_file: Option<PathBuf>,
}

impl LoadOptions {
    /// From the real process environment and current directory.
    pub fn from_process(flags: Vec<FlagValue>) -> Result<Self> {
        let cwd = std::env::current_dir().map_err(Error::io("reading current directory", "."))?;
        Ok(Self {
            cwd,
            env: std::env::vars().collect(),
            flags,
            user_file: crate::paths::user_config_file(),
        })
    }
}

/// The merged configuration, with origins.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    figment: Figment,
    origins: Vec<(String, Origin)>,
    /// Each layer's own data, lowest first: figment keeps only the merged result, and some
    /// decisions (see [`crate::env_policy`]) need to know which layer asked for what.
    layers: Vec<(Origin, Dict)>,
    /// The repository root (git top level, else the current directory).
    pub repo_root: PathBuf,
    /// The files that were read, lowest first.
    pub files: Vec<PathBuf>,
    /// Unknown keys and the like, for the front end to print.
    pub warnings: Vec<String>,
    pub core: CoreConfig,
}

/// The provider-independent settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoreConfig {
    pub provider: String,
    pub target: String,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    pub sync: SyncConfig,
    pub env: EnvConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConfig {
    #[serde(deserialize_with = "de_list")]
    pub exclude: Vec<String>,
    #[serde(deserialize_with = "de_list")]
    pub include: Vec<String>,
    #[serde(deserialize_with = "de_bool")]
    pub delete: bool,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de_bool")]
    pub allow_large: bool,
}

impl SyncConfig {
    pub fn options(&self) -> SyncOptions {
        SyncOptions {
            exclude: self.exclude.clone(),
            include: self.include.clone(),
            allow_large: self.allow_large,
            limits: Default::default(),
        }
    }
}

/// `env.allow`: which caller variables the remote command asks for. What is actually
/// forwarded is decided by [`crate::env_policy::forwarded_env`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvConfig {
    #[serde(deserialize_with = "de_list")]
    pub allow: Vec<String>,
}

/// Parses `90m`, `1h30m`, `45s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. 90m, 1h, 45s)"))
}

pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Serde helper for duration settings: a number of seconds or text such as `90m`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn de_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "expected a boolean, found {other:?}"
            ))),
        },
    }
}

fn de_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(l) => l,
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// A provider for one value with its own origin name.
struct Layer {
    name: String,
    data: Dict,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

fn nested(key: &str, value: Value) -> Dict {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut dict = Dict::new();
    dict.insert(last.to_string(), value);
    for p in parts.into_iter().rev() {
        let mut outer = Dict::new();
        outer.insert(p.to_string(), Value::from(dict));
        dict = outer;
    }
    dict
}

impl LoadedConfig {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let repo_root = crate::sync::git_root(&opts.cwd).unwrap_or_else(|| opts.cwd.clone());
        let mut files: Vec<(PathBuf, Origin)> = Vec::new();
        if let Some(explicit) = opts.env.get("CRABBOX_CONFIG").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(explicit);
            if !path.is_file() {
                return Err(Error::Config {
                    path,
                    line: None,
                    message: "CRABBOX_CONFIG names a file that does not exist".into(),
                });
            }
            files.push((path.clone(), Origin::UserFile { path }));
        } else {
            if let Some(user) = opts.user_file.as_ref().filter(|p| p.is_file()) {
                files.push((user.clone(), Origin::UserFile { path: user.clone() }));
            }
            for name in ["crabbox.yaml", ".crabbox.yaml"] {
                let path = repo_root.join(name);
                if path.is_file() {
                    files.push((path.clone(), Origin::RepoFile { path }));
                }
            }
        }

        let defaults = yaml_dict(DEFAULTS_YAML, Path::new("<built-in defaults>"))?;
        let mut layers = vec![(Origin::Default, defaults.clone())];
        let mut figment = Figment::new().merge(Layer {
            name: "default".into(),
            data: defaults,
        });
        let mut origins = vec![("default".to_string(), Origin::Default)];
        let mut warnings = Vec::new();
        for (path, origin) in &files {
            let text = std::fs::read_to_string(path).map_err(Error::io("reading config", path))?;
            let value = parse_yaml(&text, path)?;
            check_keys(&value, "", path, &text, &mut warnings)?;
            let name = origin.to_string();
            let data = yaml_dict(&text, path)?;
            layers.push((origin.clone(), data.clone()));
            figment = figment.merge(Layer {
                name: name.clone(),
                data,
            });
            origins.push((name, origin.clone()));
        }
        for setting in SCHEMA {
            let found = setting.env.iter().find_map(|var| {
                opts.env
                    .get(*var)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*var, v))
            });
            if let Some((var, raw)) = found {
                let value = if setting.list {
                    Value::from(
                        raw.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect::<Vec<_>>(),
                    )
                } else {
                    Value::from(raw.clone())
                };
                let name = format!("environment {var}");
                let origin = Origin::Env {
                    var: var.to_string(),
                };
                let data = nested(setting.key, value);
                layers.push((origin.clone(), data.clone()));
                figment = figment.merge(Layer {
                    name: name.clone(),
                    data,
                });
                origins.push((name, origin));
            }
        }
        for flag in &opts.flags {
            let name = format!("flag {}", flag.flag);
            let origin = Origin::Flag {
                flag: flag.flag.to_string(),
            };
            let data = nested(flag.key, flag.value.clone());
            layers.push((origin.clone(), data.clone()));
            figment = figment.merge(Layer {
                name: name.clone(),
                data,
            });
            origins.push((name, origin));
        }
        let mut loaded = LoadedConfig {
            figment,
            origins,
            layers,
            repo_root,
            files: files.into_iter().map(|(p, _)| p).collect(),
            warnings,
            core: CoreConfig {
                provider: String::new(),
                target: String::new(),
                ttl: Duration::ZERO,
                idle_timeout: Duration::ZERO,
                sync: SyncConfig {
                    exclude: vec![],
                    include: vec![],
                    delete: true,
                    timeout: Duration::ZERO,
                    allow_large: false,
                },
                env: EnvConfig { allow: vec![] },
            },
        };
        loaded.core = loaded.extract_root()?;
        Ok(loaded)
    }

    fn extract_root(&self) -> Result<CoreConfig> {
        self.figment.extract().map_err(|e| self.config_error(e))
    }

    /// Extracts one provider's section (`e2b`, `local`) into its own type.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.figment
            .extract_inner(name)
            .map_err(|e| self.config_error(e))
    }

    /// Where the value of `key` came from, if it is set at all.
    pub fn origin(&self, key: &str) -> Option<Origin> {
        let meta = self.figment.find_metadata(key)?;
        self.origins
            .iter()
            .find(|(n, _)| *n == meta.name)
            .map(|(_, o)| o.clone())
    }

    /// The raw value of `key`.
    pub fn value(&self, key: &str) -> Option<Value> {
        self.figment.find_value(key).ok()
    }

    /// The list setting `key` as each layer that sets it wrote it, lowest precedence first.
    ///
    /// The merged value (`self.core`) says which entries are in force; this says who asked
    /// for each: a later layer's list replaces an earlier one, so [`Self::origin`] names only
    /// the last writer. A value that is neither a list nor comma-separated text is skipped
    /// (if it is in force, loading has already refused it).
    pub fn layer_lists(&self, key: &str) -> Vec<(Origin, Vec<String>)> {
        #[derive(Deserialize)]
        struct List(#[serde(deserialize_with = "de_list")] Vec<String>);
        self.layers
            .iter()
            .filter_map(|(origin, data)| {
                let (first, rest) = key.split_once('.').unwrap_or((key, ""));
                let top = data.get(first)?;
                let value = if rest.is_empty() {
                    top
                } else {
                    top.find_ref(rest)?
                };
                let List(items) = value.deserialize().ok()?;
                Some((origin.clone(), items))
            })
            .collect()
    }

    /// The environment variables of every secret setting (`E2B_API_KEY`,
    /// `CRABBOX_E2B_API_KEY`, ...): crabbox's own credentials.
    ///
    /// Every schema lookup outside this module goes through a `LoadedConfig` method like this
    /// one, so the schema can become per-load without its users changing.
    pub fn secret_env_vars(&self) -> Vec<String> {
        SCHEMA
            .iter()
            .filter(|s| s.secret)
            .flat_map(|s| s.env.iter().map(|v| v.to_string()))
            .collect()
    }

    /// Every schema setting with its value (secrets masked) and origin, for `config show`.
    pub fn describe(&self) -> Vec<ShownSetting> {
        SCHEMA
            .iter()
            .map(|s| {
                let value = self.value(s.key);
                let shown = match (&value, s.secret) {
                    (None, _) => serde_json::Value::Null,
                    (Some(_), true) => serde_json::Value::String("****".into()),
                    (Some(v), false) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                };
                ShownSetting {
                    key: s.key,
                    value: shown,
                    origin: value.as_ref().and_then(|_| self.origin(s.key)),
                }
            })
            .collect()
    }

    fn config_error(&self, e: figment::Error) -> Error {
        let key = e.path.join(".");
        let origin = e
            .metadata
            .as_ref()
            .and_then(|m| self.origins.iter().find(|(n, _)| *n == m.name))
            .map(|(_, o)| o.clone());
        let message = format!(
            "{}{}",
            if key.is_empty() {
                String::new()
            } else {
                format!("key `{key}`: ")
            },
            e.kind
        );
        match origin {
            Some(Origin::UserFile { path }) | Some(Origin::RepoFile { path }) => {
                let line = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| line_of_key(&t, &e.path));
                Error::Config {
                    path,
                    line,
                    message,
                }
            }
            Some(other) => Error::Usage(format!("{other}: {message}")),
            None => Error::Usage(format!("configuration: {message}")),
        }
    }
}

/// One line of `config show`.
#[derive(Debug, Clone, Serialize)]
pub struct ShownSetting {
    pub key: &'static str,
    pub value: serde_json::Value,
    pub origin: Option<Origin>,
}

fn parse_yaml(text: &str, path: &Path) -> Result<serde_yaml::Value> {
    if text.trim().is_empty() {
        return Ok(serde_yaml::Value::Mapping(Default::default()));
    }
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        message: format!("invalid YAML: {e}"),
    })?;
    match value {
        serde_yaml::Value::Mapping(_) => Ok(value),
        serde_yaml::Value::Null => Ok(serde_yaml::Value::Mapping(Default::default())),
        _ => Err(Error::Config {
            path: path.to_path_buf(),
            line: Some(1),
            message: "the top level must be a mapping of keys (provider:, e2b:, sync: ...)".into(),
        }),
    }
}

fn yaml_dict(text: &str, path: &Path) -> Result<Dict> {
    let v = parse_yaml(text, path)?;
    let json = serde_json::to_value(v).map_err(|e| Error::Config {
        path: path.into(),
        line: None,
        message: e.to_string(),
    })?;
    serde_json::from_value(json).map_err(|e| Error::Config {
        path: path.into(),
        line: None,
        message: e.to_string(),
    })
}

fn is_known_prefix(key: &str) -> bool {
    SCHEMA
        .iter()
        .any(|s| s.key == key || s.key.starts_with(&format!("{key}.")))
        || ["local", "e2b", "sync", "env"].contains(&key)
}

fn check_keys(
    value: &serde_yaml::Value,
    prefix: &str,
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let serde_yaml::Value::Mapping(map) = value else {
        return Ok(());
    };
    for (k, v) in map {
        let Some(k) = k.as_str() else { continue };
        let key = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        let segs: Vec<String> = key.split('.').map(String::from).collect();
        let line = line_of_key(text, &segs);
        if SCHEMA.iter().any(|s| s.secret && s.key == key) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "`{key}` must not be stored in a config file; set it in the environment ({})",
                    SCHEMA
                        .iter()
                        .find(|s| s.key == key)
                        .map(|s| s.env.join(" or "))
                        .unwrap_or_default()
                ),
            });
        }
        if !is_known_prefix(&key) {
            warnings.push(format!(
                "{}{}: unknown key `{key}` (ignored)",
                path.display(),
                line.map(|l| format!(":{l}")).unwrap_or_default()
            ));
            continue;
        }
        if SCHEMA.iter().all(|s| s.key != key) {
            check_keys(v, &key, path, text, warnings)?;
        }
    }
    Ok(())
}

/// The 1-based line where the innermost segment of `path` is defined, following indentation.
fn line_of_key(text: &str, path: &[String]) -> Option<usize> {
    let mut depth = 0;
    let mut min_indent = 0usize;
    let mut parent_indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some(p) = parent_indent {
            if indent <= p {
                return None;
            }
        }
        if indent < min_indent {
            continue;
        }
        let want = &path[depth];
        let key_part = trimmed
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .trim_matches('\'');
        if key_part == want
            && trimmed[key_part.len()..]
                .trim_start_matches(['"', '\''])
                .starts_with(':')
        {
            if depth + 1 == path.len() {
                return Some(i + 1);
            }
            depth += 1;
            parent_indent = Some(indent);
            min_indent = indent + 1;
        }
    }
    None
}

/// A flag's value for [`LoadOptions::flags`].
pub fn flag(key: &'static str, flag: &'static str, value: impl Serialize) -> FlagValue {
    FlagValue {
        key,
        flag,
        value: Value::serialize(value).unwrap_or_else(|_| Value::from("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env {
        dir: tempfile::TempDir,
        opts: LoadOptions,
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let opts = LoadOptions {
            cwd: repo,
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: vec![],
            user_file: Some(dir.path().join("user.yaml")),
        };
        Env { dir, opts }
    }

    impl Env {
        fn user(&self, text: &str) -> &Self {
            std::fs::write(self.dir.path().join("user.yaml"), text).unwrap();
            self
        }
        fn repo(&self, name: &str, text: &str) -> &Self {
            std::fs::write(self.opts.cwd.join(name), text).unwrap();
            self
        }
        fn load(&self) -> Result<LoadedConfig> {
            LoadedConfig::load(&self.opts)
        }
    }

    fn string(c: &LoadedConfig, key: &str) -> String {
        c.value(key)
            .and_then(|v| v.into_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_apply_with_no_files() {
        let c = env(&[]).load().unwrap();
        assert_eq!(c.core.provider, "local");
        assert_eq!(c.core.ttl, Duration::from_secs(90 * 60));
        assert_eq!(c.core.env.allow, ["CI", "NODE_OPTIONS"]);
        assert_eq!(c.origin("provider"), Some(Origin::Default));
    }

    #[test]
    fn layers_override_in_order() {
        let e = env(&[]);
        e.user("ttl: 10m\ne2b:\n  template: from-user\n  workdir: u\n  user: u\n");
        e.repo(
            "crabbox.yaml",
            "e2b:\n  template: from-plain\n  workdir: p\n",
        );
        e.repo(".crabbox.yaml", "e2b:\n  template: from-dot\n");
        let c = e.load().unwrap();
        assert_eq!(string(&c, "e2b.template"), "from-dot");
        assert_eq!(string(&c, "e2b.workdir"), "p");
        assert_eq!(string(&c, "e2b.user"), "u");
        assert_eq!(c.core.ttl, Duration::from_secs(600));
        assert!(
            matches!(c.origin("e2b.template"), Some(Origin::RepoFile { path }) if path.ends_with(".crabbox.yaml"))
        );
        assert!(matches!(
            c.origin("e2b.user"),
            Some(Origin::UserFile { .. })
        ));

        let mut e = env(&[("CRABBOX_E2B_TEMPLATE", "from-env"), ("CRABBOX_TTL", "20m")]);
        e.repo(".crabbox.yaml", "e2b:\n  template: from-dot\n");
        assert_eq!(string(&e.load().unwrap(), "e2b.template"), "from-env");
        e.opts
            .flags
            .push(flag("e2b.template", "--e2b-template", "from-flag"));
        e.opts.flags.push(flag("ttl", "--ttl", "5m"));
        let c = e.load().unwrap();
        assert_eq!(string(&c, "e2b.template"), "from-flag");
        assert_eq!(c.core.ttl, Duration::from_secs(300));
        assert_eq!(
            c.origin("e2b.template"),
            Some(Origin::Flag {
                flag: "--e2b-template".into()
            })
        );
    }

    #[test]
    fn crabbox_prefixed_env_beats_vendor_env() {
        let c = env(&[
            ("E2B_API_KEY", "vendor"),
            ("CRABBOX_E2B_API_KEY", "ours"),
            ("E2B_DOMAIN", "d.example"),
        ])
        .load()
        .unwrap();
        assert_eq!(string(&c, "e2b.apiKey"), "ours");
        assert_eq!(
            c.origin("e2b.apiKey"),
            Some(Origin::Env {
                var: "CRABBOX_E2B_API_KEY".into()
            })
        );
        assert_eq!(string(&c, "e2b.domain"), "d.example");
        let c = env(&[("E2B_API_KEY", "vendor"), ("CRABBOX_E2B_API_KEY", "")])
            .load()
            .unwrap();
        assert_eq!(
            string(&c, "e2b.apiKey"),
            "vendor",
            "empty prefixed variable must not win"
        );
    }

    #[test]
    fn crabbox_config_replaces_the_search() {
        let e = env(&[]);
        e.repo(".crabbox.yaml", "provider: e2b\n");
        let other = e.dir.path().join("explicit.yaml");
        std::fs::write(&other, "target: macos\n").unwrap();
        let mut e2 = env(&[("CRABBOX_CONFIG", other.to_str().unwrap())]);
        e2.opts.cwd = e.opts.cwd.clone();
        let c = e2.load().unwrap();
        assert_eq!(c.core.provider, "local", "repo file must not be read");
        assert_eq!(c.core.target, "macos");
    }

    #[test]
    fn yaml_syntax_error_names_file_and_line() {
        let e = env(&[]);
        e.repo(
            ".crabbox.yaml",
            "provider: e2b\ne2b:\n  template: [unclosed\n",
        );
        let err = e.load().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains(".crabbox.yaml:"), "{msg}");
        assert!(matches!(err, Error::Config { line: Some(_), .. }), "{msg}");
    }

    #[test]
    fn type_error_names_file_line_and_key() {
        let e = env(&[]);
        e.repo(
            ".crabbox.yaml",
            "provider: local\n\nsync:\n  delete: true\n  timeout: [1, 2]\n",
        );
        let err = e.load().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(&err, Error::Config { line: Some(5), .. }), "{msg}");
        assert!(msg.contains("sync.timeout"), "{msg}");
        assert!(msg.contains(".crabbox.yaml:5"), "{msg}");
    }

    #[test]
    fn unknown_key_warns_naming_it() {
        let e = env(&[]);
        e.repo(
            ".crabbox.yaml",
            "provider: local\ne2b:\n  tempalte: base\nfrobnicate: 1\n",
        );
        let c = e.load().unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("e2b.tempalte") && c.warnings[0].contains(":3"),
            "{:?}",
            c.warnings
        );
        assert!(c.warnings[1].contains("frobnicate"));
    }

    #[test]
    fn api_key_in_a_file_is_refused() {
        let e = env(&[]);
        e.user("e2b:\n  apiKey: e2b_secret\n");
        let err = e.load().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(!err.to_string().contains("e2b_secret"));
        assert!(err.to_string().contains("E2B_API_KEY"));
    }

    #[test]
    fn describe_masks_secrets_and_names_origins() {
        let c = env(&[("E2B_API_KEY", "e2b_topsecret")]).load().unwrap();
        let shown = c.describe();
        let key = shown.iter().find(|s| s.key == "e2b.apiKey").unwrap();
        assert_eq!(key.value, serde_json::json!("****"));
        assert_eq!(
            key.origin,
            Some(Origin::Env {
                var: "E2B_API_KEY".into()
            })
        );
        assert!(!serde_json::to_string(&shown).unwrap().contains("topsecret"));
    }

    #[test]
    fn env_lists_and_durations_parse() {
        let c = env(&[
            ("CRABBOX_ENV_ALLOW", "CI, FOO"),
            ("CRABBOX_SYNC_ALLOW_LARGE", "1"),
            ("CRABBOX_TTL", "120"),
        ])
        .load()
        .unwrap();
        assert_eq!(c.core.env.allow, ["CI", "FOO"]);
        assert!(c.core.sync.allow_large);
        assert_eq!(c.core.ttl, Duration::from_secs(120));
        let err = env(&[("CRABBOX_TTL", "soon")]).load().unwrap_err();
        assert!(err.to_string().contains("CRABBOX_TTL"), "{err}");
    }

    #[test]
    fn a_later_list_replaces_an_earlier_one_but_each_layer_keeps_its_own() {
        let e = env(&[]);
        e.user("env:\n  allow: [FROM_USER, BOTH]\n");
        e.repo("crabbox.yaml", "provider: local\n");
        e.repo(".crabbox.yaml", "env:\n  allow: BOTH, FROM_REPO\n");
        let c = e.load().unwrap();
        assert_eq!(
            c.core.env.allow,
            ["BOTH", "FROM_REPO"],
            "merge replaces lists"
        );
        let layers = c.layer_lists("env.allow");
        let user = e.dir.path().join("user.yaml");
        let dot = e.opts.cwd.join(".crabbox.yaml");
        assert_eq!(
            layers,
            [
                (Origin::Default, vec!["CI".into(), "NODE_OPTIONS".into()]),
                (
                    Origin::UserFile { path: user },
                    vec!["FROM_USER".into(), "BOTH".into()]
                ),
                (
                    Origin::RepoFile { path: dot },
                    vec!["BOTH".into(), "FROM_REPO".into()]
                ),
            ],
            "crabbox.yaml sets no env.allow and is not listed"
        );

        let mut e = env(&[("CRABBOX_ENV_ALLOW", "FROM_ENV")]);
        e.repo(".crabbox.yaml", "env:\n  allow: [FROM_REPO]\n");
        e.opts
            .flags
            .push(flag("env.allow", "--test-flag", ["FROM_FLAG"]));
        let c = e.load().unwrap();
        assert_eq!(c.core.env.allow, ["FROM_FLAG"]);
        let layers = c.layer_lists("env.allow");
        let origins: Vec<_> = layers.iter().map(|(o, _)| o.clone()).collect();
        assert!(matches!(origins[1], Origin::RepoFile { .. }), "{origins:?}");
        assert_eq!(
            layers[2],
            (
                Origin::Env {
                    var: "CRABBOX_ENV_ALLOW".into()
                },
                vec!["FROM_ENV".into()]
            )
        );
        assert_eq!(
            layers[3],
            (
                Origin::Flag {
                    flag: "--test-flag".into()
                },
                vec!["FROM_FLAG".into()]
            )
        );
        assert_eq!(layers.len(), 4);
        assert!(c.layer_lists("no.such.key").is_empty());
    }

    #[test]
    fn secret_env_vars_are_the_secret_settings_variables() {
        let c = env(&[]).load().unwrap();
        let vars = c.secret_env_vars();
        assert!(vars.contains(&"E2B_API_KEY".to_string()), "{vars:?}");
        assert!(
            vars.contains(&"CRABBOX_E2B_API_KEY".to_string()),
            "{vars:?}"
        );
        assert!(!vars.contains(&"E2B_API_URL".to_string()), "{vars:?}");
        assert!(!vars.contains(&"CRABBOX_ENV_ALLOW".to_string()), "{vars:?}");
    }
}
