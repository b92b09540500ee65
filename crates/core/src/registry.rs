//! The provider registry: a provider's name to how it is built. Core names no provider; the
//! front end's crate registers each one (one line per provider).

use crate::config::{ConfigSection, LoadedConfig};
use crate::error::{Error, Result};
use crate::provider::{Provider, ProviderContext};

/// How to build one provider.
#[derive(Clone, Copy)]
pub struct ProviderEntry {
    /// `local`, `e2b`: the value of the `provider` setting that selects it.
    pub name: &'static str,
    /// Its config section (settings, environment variables, flags, defaults).
    pub section: ConfigSection,
    /// Builds it from the loaded configuration (its own section, `cfg.section(name)`).
    pub build: fn(&LoadedConfig, &ProviderContext) -> Result<Box<dyn Provider>>,
}

impl std::fmt::Debug for ProviderEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderEntry")
            .field("name", &self.name)
            .finish()
    }
}

/// The providers a front end offers.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<ProviderEntry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a provider; a later entry of the same name replaces an earlier one.
    pub fn with(mut self, entry: ProviderEntry) -> Self {
        self.entries.retain(|e| e.name != entry.name);
        self.entries.push(entry);
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// Every provider's config section, for loading the config.
    pub fn sections(&self) -> Vec<ConfigSection> {
        self.entries.iter().map(|e| e.section).collect()
    }

    pub fn get(&self, name: &str) -> Option<&ProviderEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Builds the provider the `provider` setting names.
    pub fn build(&self, cfg: &LoadedConfig, ctx: &ProviderContext) -> Result<Box<dyn Provider>> {
        let name = cfg.core.provider.as_str();
        let entry = self.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "unknown provider {name:?} (from {}); use one of: {}",
                cfg.origin("provider")
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "the defaults".into()),
                self.names().join(", ")
            ))
        })?;
        self.refuse_other_providers_flags(cfg, name)?;
        (entry.build)(cfg, ctx)
    }

    /// A flag of another provider's section (`--e2b-allow-out` with provider `local`) has
    /// nothing to act on: refused by name rather than ignored. Its files' and environment's
    /// values are left alone (a user config may set up several providers).
    fn refuse_other_providers_flags(&self, cfg: &LoadedConfig, selected: &str) -> Result<()> {
        for entry in self.entries.iter().filter(|e| e.name != selected) {
            for setting in entry.section.settings {
                if let Some(crate::config::Origin::Flag { flag }) = cfg.origin(setting.key) {
                    return Err(Error::Usage(format!(
                        "{flag} is a setting of provider {}; provider {selected} has no use \
                         for it (select it with --provider {} or drop the flag)",
                        entry.name, entry.name
                    )));
                }
            }
        }
        Ok(())
    }
}
