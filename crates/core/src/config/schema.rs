//! The schema: every setting crabbox knows, as data, so that `config show`, unknown-key
//! warnings, environment precedence, secrecy and provider flags all agree. Core lists only
//! its own settings; each provider contributes a [`ConfigSection`].

/// One known setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted YAML path, as users write it (`sync.exclude`, `e2b.apiUrl`).
    pub key: &'static str,
    /// Environment variables, highest precedence first; the first non-empty one wins.
    pub env: &'static [&'static str],
    /// Never printed, never read from files, never forwarded to a box.
    pub secret: bool,
    /// Comma-separated list when it comes from the environment.
    pub list: bool,
    /// A command-line flag that sets it, for settings a provider contributes.
    pub flag: Option<CliFlag>,
}

/// A flag every command accepts that sets one setting.
#[derive(Debug, Clone, Copy)]
pub struct CliFlag {
    /// Long name without dashes (`e2b-template`).
    pub long: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
}

impl Setting {
    /// A plain setting with these environment variables.
    pub const fn new(key: &'static str, env: &'static [&'static str]) -> Setting {
        Setting {
            key,
            env,
            secret: false,
            list: false,
            flag: None,
        }
    }

    /// Never printed, never read from files, never forwarded to a box.
    pub const fn secret(mut self) -> Setting {
        self.secret = true;
        self
    }

    /// A comma-separated list in the environment.
    pub const fn list(mut self) -> Setting {
        self.list = true;
        self
    }

    /// Also set by `--<long> <value_name>`.
    pub const fn flag(
        mut self,
        long: &'static str,
        value_name: &'static str,
        help: &'static str,
    ) -> Setting {
        self.flag = Some(CliFlag {
            long,
            value_name,
            help,
        });
        self
    }
}

/// The settings one provider owns: the YAML section named after it.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSection {
    /// The section's key (`e2b`), also the provider's name.
    pub name: &'static str,
    /// Its settings, keys including the section name (`e2b.template`).
    pub settings: &'static [Setting],
    /// The section's built-in defaults, as YAML of the section's body.
    pub defaults_yaml: &'static str,
}

/// The settings core owns.
pub const CORE_SETTINGS: &[Setting] = &[
    Setting::new("provider", &["CRABBOX_PROVIDER"]),
    Setting::new("target", &["CRABBOX_TARGET"]),
    Setting::new("ttl", &["CRABBOX_TTL"]),
    Setting::new("idleTimeout", &["CRABBOX_IDLE_TIMEOUT"]),
    Setting::new("timeout", &["CRABBOX_TIMEOUT"]),
    Setting::new("workspace", &["CRABBOX_WORKSPACE"]),
    Setting::new("sync.exclude", &["CRABBOX_SYNC_EXCLUDE"]).list(),
    Setting::new("sync.include", &["CRABBOX_SYNC_INCLUDE"]).list(),
    Setting::new("sync.delete", &["CRABBOX_SYNC_DELETE"]),
    Setting::new("sync.timeout", &["CRABBOX_SYNC_TIMEOUT"]),
    Setting::new("sync.allowLarge", &["CRABBOX_SYNC_ALLOW_LARGE"]),
    Setting::new("env.allow", &["CRABBOX_ENV_ALLOW"]).list(),
    Setting::new("shard.maxCount", &["CRABBOX_SHARD_MAX_COUNT"]),
];

/// Top-level sections core owns.
pub const CORE_SECTIONS: &[&str] = &["sync", "env", "shard"];

/// Every setting of one load: core's, then each section's.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub settings: Vec<Setting>,
    /// Top-level keys that hold settings below them.
    pub sections: Vec<&'static str>,
}

impl Schema {
    pub fn new(sections: &[ConfigSection]) -> Schema {
        let mut settings = CORE_SETTINGS.to_vec();
        let mut names = CORE_SECTIONS.to_vec();
        for s in sections {
            settings.extend_from_slice(s.settings);
            names.push(s.name);
        }
        Schema {
            settings,
            sections: names,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// `key` is a setting or lies on the way to one.
    pub fn is_known_prefix(&self, key: &str) -> bool {
        self.sections.contains(&key)
            || self
                .settings
                .iter()
                .any(|s| s.key == key || s.key.starts_with(&format!("{key}.")))
    }
}
