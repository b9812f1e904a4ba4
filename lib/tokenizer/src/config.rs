//! The bos/eos/pad token names beside a tokenizer: `tokenizer_config.json` first, then
//! `special_tokens_map.json` (OpenSeek keeps them in the latter). A token may be written as a string
//! or as `{"content": "..."}`; each of bos/eos/pad is taken from the first file that names it.

use std::path::{Path, PathBuf};

use openseek_common::Failure;
use serde_json::Value;

pub const CONFIG_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpecialNames {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    /// The config files that exist and were read, in the order above.
    pub files: Vec<PathBuf>,
}

fn token_name(value: &Value, file: &Path, key: &str) -> Result<Option<String>, Failure> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(map) => match map.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Failure::data(format!(
                "{}: `{key}` is an object without a string `content`; write the token as a string or {{\"content\": \"...\"}}",
                file.display()
            ))),
        },
        other => Err(Failure::data(format!(
            "{}: `{key}` must be a token string or {{\"content\": \"...\"}}, found {other}",
            file.display()
        ))),
    }
}

/// Read the config files present in `dir` (none present is fine: all names are then None).
pub fn read_special_names(dir: &Path) -> Result<SpecialNames, Failure> {
    let mut names = SpecialNames::default();
    for name in CONFIG_FILES {
        let file = dir.join(name);
        if !file.is_file() {
            continue;
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| Failure::io_at(&file, "cannot read", &e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Failure::data(format!("{}: not valid JSON: {e}", file.display())))?;
        let Value::Object(map) = &json else {
            return Err(Failure::data(format!(
                "{}: expected a JSON object",
                file.display()
            )));
        };
        for (key, slot) in [
            ("bos_token", &mut names.bos),
            ("eos_token", &mut names.eos),
            ("pad_token", &mut names.pad),
        ] {
            if slot.is_none() {
                if let Some(v) = map.get(key) {
                    *slot = token_name(v, &file, key)?;
                }
            }
        }
        names.files.push(file);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_file_wins_and_objects_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "pad_token": null}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"bos_token": "<x>", "eos_token": "</s>", "pad_token": "<pad>"}"#,
        )
        .unwrap();
        let n = read_special_names(dir.path()).unwrap();
        assert_eq!(n.bos.as_deref(), Some("<s>"));
        assert_eq!(n.eos.as_deref(), Some("</s>"));
        assert_eq!(
            n.pad.as_deref(),
            Some("<pad>"),
            "null in the first file leaves it to the second"
        );
        assert_eq!(n.files.len(), 2);
    }

    #[test]
    fn bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("special_tokens_map.json"), "{ nope").unwrap();
        let e = read_special_names(dir.path()).unwrap_err();
        assert_eq!(e.code, openseek_common::ExitCode::DataErr);
        assert!(
            e.message.contains("special_tokens_map.json") && e.message.contains("not valid JSON"),
            "{}",
            e.message
        );
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"eos_token": 3}"#,
        )
        .unwrap();
        let e = read_special_names(dir.path()).unwrap_err();
        assert!(e.message.contains("eos_token"), "{}", e.message);
    }
}
