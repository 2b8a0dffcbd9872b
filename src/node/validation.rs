//! Declarative validation: the data published to a room matching a `validation.rooms` pattern
//! must match that rule's JSON Schema, or the publish is refused with `invalid_data` naming
//! the failing path, before anything reaches the broker.
//!
//! Owns the rules with their patterns parsed and schemas compiled once. Reading and compiling
//! the schema files is `config`'s; which publishes are checked is the node's.

use serde_json::value::RawValue;

use crate::auth::Glob;
use crate::config::{CompiledRule, ConfigError, ValidationConfig};
use crate::protocol::{CommandError, ErrorCode};

/// Longest `message` of an `invalid_data` error, in bytes: a schema's own words (a long
/// `pattern`, an `enum`) are cut here.
const MAX_MESSAGE_BYTES: usize = 512;

/// The `validation.rooms` rules, compiled.
pub struct RoomSchemas {
    rules: Vec<(Glob, jsonschema::Validator)>,
}

impl RoomSchemas {
    /// Compile every rule's schema; the error names the key and the file.
    pub fn new(config: &ValidationConfig) -> Result<RoomSchemas, ConfigError> {
        let rules = config
            .compile()?
            .into_iter()
            .map(|CompiledRule { pattern, validator }| (Glob::new(&pattern), validator))
            .collect();
        Ok(RoomSchemas { rules })
    }

    /// `Ok` when no rule matches `room` or its data matches the first matching rule's
    /// schema; otherwise `invalid_data` naming the first failing location (a JSON pointer
    /// into `data`, `""` for the whole value).
    pub fn check(&self, room: &str, data: &RawValue) -> Result<(), CommandError> {
        let Some((_, validator)) = self.rules.iter().find(|(glob, _)| glob.matches(room)) else {
            return Ok(());
        };
        // The frame was JSON when it was decoded, so this fails only on numbers serde_json
        // cannot hold; refuse them rather than pass unchecked data.
        let value: serde_json::Value = serde_json::from_str(data.get()).map_err(|err| {
            CommandError::new(ErrorCode::InvalidData, format!("data at \"\": {err}"))
        })?;
        match validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(error) => {
                // `masked`: the message names the rule broken, not the (client's) value.
                let mut message = format!(
                    "data at \"{}\": {}",
                    error.instance_path().as_str(),
                    error.masked()
                );
                truncate(&mut message, MAX_MESSAGE_BYTES);
                Err(CommandError::new(ErrorCode::InvalidData, message))
            }
        }
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas(schema: &str) -> RoomSchemas {
        let validator = jsonschema::validator_for(&serde_json::from_str(schema).expect("schema"))
            .expect("compiles");
        RoomSchemas {
            rules: vec![(Glob::new("chat:*"), validator)],
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("raw")
    }

    const CHAT: &str = r#"{"type":"object","required":["text"],
        "properties":{"text":{"type":"string","maxLength":5},
                      "tags":{"type":"array","items":{"type":"string"}}}}"#;

    #[test]
    fn matching_data_passes_and_other_rooms_are_not_checked() {
        let s = schemas(CHAT);
        assert!(s.check("chat:a", &raw(r#"{"text":"hi"}"#)).is_ok());
        assert!(s.check("news:a", &raw("42")).is_ok());
    }

    #[test]
    fn failing_data_names_the_path_and_not_the_value() {
        let s = schemas(CHAT);
        let err = s
            .check("chat:a", &raw(r#"{"text":"hi","tags":["a",17]}"#))
            .expect_err("refused");
        assert_eq!(err.code, ErrorCode::InvalidData);
        assert!(err.message.contains("\"/tags/1\""), "{}", err.message);
        assert!(!err.message.contains("17"), "{}", err.message);
        let err = s.check("chat:a", &raw("42")).expect_err("refused");
        assert!(err.message.starts_with("data at \"\":"), "{}", err.message);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let mut text = "é".repeat(400);
        truncate(&mut text, 513);
        assert!(text.len() <= 513 + '…'.len_utf8());
        assert!(text.ends_with('…'));
    }
}
