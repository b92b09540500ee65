//! Reading config files: YAML parsing with file and line in errors, the unknown-key and
//! secret-in-a-file checks, and finding the line of a key.

use std::path::Path;

use figment::value::Dict;

use super::schema::Schema;
use crate::error::{Error, Result};

pub(super) fn parse_yaml(text: &str, path: &Path) -> Result<serde_yaml::Value> {
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

pub(super) fn yaml_dict(text: &str, path: &Path) -> Result<Dict> {
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

pub(super) fn check_keys(
    value: &serde_yaml::Value,
    prefix: &str,
    path: &Path,
    text: &str,
    schema: &Schema,
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
        if schema.get(&key).is_some_and(|s| s.secret) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "`{key}` must not be stored in a config file; set it in the environment ({})",
                    schema
                        .get(&key)
                        .map(|s| s.env.join(" or "))
                        .unwrap_or_default()
                ),
            });
        }
        if !schema.is_known_prefix(&key) {
            warnings.push(format!(
                "{}{}: unknown key `{key}` (ignored)",
                path.display(),
                line.map(|l| format!(":{l}")).unwrap_or_default()
            ));
            continue;
        }
        if schema.get(&key).is_none() {
            // A section (`e2b:`, `sync:`) holds settings: a bare value there is a mistake,
            // not an empty section.
            if !matches!(v, serde_yaml::Value::Mapping(_) | serde_yaml::Value::Null) {
                let inner: Vec<&str> = schema
                    .settings
                    .iter()
                    .filter(|s| s.key.starts_with(&format!("{key}.")))
                    .map(|s| s.key)
                    .take(3)
                    .collect();
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    line,
                    message: format!(
                        "`{key}` must be a mapping of its settings (such as {}), not a single \
                         value",
                        inner.join(", ")
                    ),
                });
            }
            check_keys(v, &key, path, text, schema, warnings)?;
        } else if let serde_yaml::Value::Sequence(items) = v {
            if items.len() > MAX_LIST {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    line,
                    message: format!(
                        "`{key}` lists {} entries; at most {MAX_LIST} are accepted",
                        items.len()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Most entries a list setting (`sync.exclude`) may have.
const MAX_LIST: usize = 10_000;

/// Largest config file read: configs are a few lines; anything bigger is a mistake or hostile.
pub(super) const MAX_FILE: u64 = 1 << 20;

/// The 1-based line where the innermost segment of `path` is defined, following indentation.
pub(super) fn line_of_key(text: &str, path: &[String]) -> Option<usize> {
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
        let want = path.get(depth)?;
        // The text before the first `:`, if there is one: the key, perhaps quoted.
        let Some((head, _)) = trimmed.split_once(':') else {
            continue;
        };
        let key_part = head.trim().trim_matches('"').trim_matches('\'');
        if key_part == want {
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
