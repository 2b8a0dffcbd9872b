//! The `[[validation.rooms]]` rules (a JSON Schema per room pattern) and the `[hooks]` section
//! (the backend's connect, join and publish hooks).
//!
//! Owns the keys, their defaults, the checks that name them, and reading and compiling the
//! schema files (once, at start). Matching rooms and checking data is `node::validation`'s.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Rooms whose published data must match a JSON Schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// First matching rule wins.
    pub rooms: Vec<ValidationRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationRule {
    /// A room glob (`*`, `?`), as `history.rooms`.
    pub pattern: String,
    /// A JSON Schema file (drafts 4, 6, 7, 2019-09, 2020-12); a relative path is from the
    /// node's working directory. Remote `$ref`s are not fetched.
    pub schema_file: PathBuf,
}

/// A schema compiled from its file, with the pattern of its rule.
pub struct CompiledRule {
    pub pattern: String,
    pub validator: jsonschema::Validator,
}

impl ValidationConfig {
    /// Read and compile every rule's schema; the error names the key and the file.
    pub fn compile(&self) -> Result<Vec<CompiledRule>, ConfigError> {
        self.rooms
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                if rule.pattern.is_empty() {
                    return Err(ConfigError::key(
                        &format!("validation.rooms[{i}].pattern"),
                        "must not be empty",
                    ));
                }
                let validator = compile_schema(&rule.schema_file).map_err(|problem| {
                    ConfigError::key(
                        &format!("validation.rooms[{i}].schema_file"),
                        format!("`{}` {problem}", rule.schema_file.display()),
                    )
                })?;
                Ok(CompiledRule {
                    pattern: rule.pattern.clone(),
                    validator,
                })
            })
            .collect()
    }
}

fn compile_schema(path: &Path) -> Result<jsonschema::Validator, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("cannot be read: {err}"))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| format!("is not JSON: {err}"))?;
    jsonschema::validator_for(&schema).map_err(|err| format!("is not a valid JSON Schema: {err}"))
}
