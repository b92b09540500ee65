//! Configuration: built-in defaults < user file < `crabbox.yaml` < `.crabbox.yaml` <
//! environment < flags, merged with figment, with the origin of every value kept.
//!
//! The schema (every key, its environment variables, whether it is secret, its flag) is data
//! ([`schema`]): core's own settings plus one [`ConfigSection`] per provider, passed in by the
//! front end from its registry, so core names no provider. Provider sections are extracted by
//! the provider crates with [`LoadedConfig::section`].

mod schema;
mod values;
mod yaml;

pub use schema::{CliFlag, ConfigSection, Schema, Setting, CORE_SETTINGS};
pub use values::*;
use yaml::{check_keys, line_of_key, parse_yaml, yaml_dict};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The compiled-in lowest layer.
pub const DEFAULTS_YAML: &str = include_str!("../../../../config/defaults.yaml");

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
    /// As typed: `--e2b-template`.
    pub flag: String,
    pub value: Value,
}

impl FlagValue {
    pub fn new(key: &'static str, flag: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            key,
            flag: flag.into(),
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
    /// The providers' sections (from the front end's registry).
    pub sections: Vec<ConfigSection>,
}

impl LoadOptions {
    /// From the real process environment and current directory.
    pub fn from_process(flags: Vec<FlagValue>, sections: Vec<ConfigSection>) -> Result<Self> {
        let cwd = std::env::current_dir().map_err(Error::io("reading current directory", "."))?;
        Ok(Self {
            cwd,
            env: std::env::vars().collect(),
            flags,
            user_file: crate::paths::user_config_file(),
            sections,
        })
    }
}

/// The merged configuration, with origins.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    figment: Figment,
    origins: Vec<(String, Origin)>,
    schema: Schema,
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

        let schema = Schema::new(&opts.sections);
        let mut defaults = yaml_dict(DEFAULTS_YAML, Path::new("<built-in defaults>"))?;
        for section in &opts.sections {
            let path = PathBuf::from(format!("<built-in {} defaults>", section.name));
            defaults.insert(
                section.name.to_string(),
                Value::from(yaml_dict(section.defaults_yaml, &path)?),
            );
        }
        let mut layers = vec![(Origin::Default, defaults.clone())];
        let mut figment = Figment::new().merge(Layer {
            name: "default".into(),
            data: defaults,
        });
        let mut origins = vec![("default".to_string(), Origin::Default)];
        let mut warnings = Vec::new();
        for (path, origin) in &files {
            let text = read_config(path)?;
            let value = parse_yaml(&text, path)?;
            check_keys(&value, "", path, &text, &schema, &mut warnings)?;
            let name = origin.to_string();
            let data = yaml_dict(&text, path)?;
            layers.push((origin.clone(), data.clone()));
            figment = figment.merge(Layer {
                name: name.clone(),
                data,
            });
            origins.push((name, origin.clone()));
        }
        for setting in &schema.settings {
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
                flag: flag.flag.clone(),
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
            schema,
            layers,
            repo_root,
            files: files.into_iter().map(|(p, _)| p).collect(),
            warnings,
            core: CoreConfig {
                provider: String::new(),
                target: String::new(),
                ttl: Duration::ZERO,
                idle_timeout: Duration::ZERO,
                timeout: Duration::ZERO,
                workspace: String::new(),
                sync: SyncConfig {
                    exclude: vec![],
                    include: vec![],
                    delete: true,
                    timeout: Duration::ZERO,
                    allow_large: false,
                },
                env: EnvConfig { allow: vec![] },
                shard: ShardConfig { max_count: 0 },
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
        self.layer_values(key)
            .into_iter()
            .filter_map(|(origin, value)| {
                let List(items) = value.deserialize().ok()?;
                Some((origin, items))
            })
            .collect()
    }

    /// The setting `key` as each layer that sets it wrote it, lowest precedence first: for
    /// decisions that must know which layer asked for what (see [`Self::layer_lists`]).
    pub fn layer_values(&self, key: &str) -> Vec<(Origin, Value)> {
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
                Some((origin.clone(), value.clone()))
            })
            .collect()
    }

    /// The environment variables of every secret setting (`E2B_API_KEY`,
    /// `CRABBOX_E2B_API_KEY`, ...): crabbox's own credentials.
    ///
    pub fn secret_env_vars(&self) -> Vec<String> {
        self.schema
            .settings
            .iter()
            .filter(|s| s.secret)
            .flat_map(|s| s.env.iter().map(|v| v.to_string()))
            .collect()
    }

    /// Every schema setting with its value (secrets masked) and origin, for `config show`.
    pub fn describe(&self) -> Vec<ShownSetting> {
        self.schema
            .settings
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
        // A value quoted back (a 50 MB template, say) is cut to a readable length.
        let message = format!(
            "{}{}",
            if key.is_empty() {
                String::new()
            } else {
                format!("key `{key}`: ")
            },
            shorten_message(&e.kind.to_string())
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

/// Reads a config file: refused when too large or not UTF-8 (exit 2, naming it).
fn read_config(path: &Path) -> Result<String> {
    let config_error = |message: String| Error::Config {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(Error::io("reading config", path))?
        .len();
    if len > yaml::MAX_FILE {
        return Err(config_error(format!(
            "{len} bytes is too large for a config file (at most {} bytes)",
            yaml::MAX_FILE
        )));
    }
    let bytes = std::fs::read(path).map_err(Error::io("reading config", path))?;
    String::from_utf8(bytes).map_err(|e| {
        config_error(format!(
            "not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A message with a long quoted value cut short.
fn shorten_message(text: &str) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}... (cut; {} bytes in all)", text.len())
}

/// A flag's value for [`LoadOptions::flags`].
pub fn flag(key: &'static str, flag: &'static str, value: impl Serialize) -> FlagValue {
    FlagValue {
        key,
        flag: flag.to_string(),
        value: Value::serialize(value).unwrap_or_else(|_| Value::from("")),
    }
}

#[cfg(test)]
pub(crate) mod tests;
