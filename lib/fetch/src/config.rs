//! Settings from the environment, with huggingface_hub's names and precedence: `HF_ENDPOINT`,
//! `HF_HOME` / `HF_HUB_CACHE`, the token (`HF_TOKEN`, then the file at `HF_TOKEN_PATH` or
//! `$HF_HOME/token`) and `HF_HUB_OFFLINE`.

use std::path::PathBuf;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL of the Hub or mirror, without a trailing slash.
    pub endpoint: String,
    /// Bearer token, sent only to the endpoint's own origin.
    pub token: Option<String>,
    /// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub hub_cache: PathBuf,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set: serve from the cache, never touch the network.
    pub offline: bool,
}

/// huggingface_hub's truthy values, compared case-insensitively.
pub fn is_true(value: Option<&str>) -> bool {
    value.map(|v| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")).unwrap_or(false)
}

/// Strip newlines and surrounding blanks; an empty token is no token.
fn clean_token(token: &str) -> Option<String> {
    let t = token.replace(['\r', '\n'], "");
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn expand_user(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => PathBuf::from(format!("{home}{rest}")),
        _ => PathBuf::from(path),
    }
}

impl HubConfig {
    /// Read the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Read settings through `var` (the environment, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        let home = var("HOME");
        let endpoint = non_empty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let hf_home = match non_empty("HF_HOME") {
            Some(h) => expand_user(&h, home.as_deref()),
            None => {
                let xdg = non_empty("XDG_CACHE_HOME")
                    .map(|x| expand_user(&x, home.as_deref()))
                    .unwrap_or_else(|| expand_user("~/.cache", home.as_deref()));
                xdg.join("huggingface")
            }
        };
        let hub_cache = non_empty("HF_HUB_CACHE")
            .or_else(|| non_empty("HUGGINGFACE_HUB_CACHE"))
            .map(|c| expand_user(&c, home.as_deref()))
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_path = non_empty("HF_TOKEN_PATH")
            .map(|p| expand_user(&p, home.as_deref()))
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .and_then(|t| clean_token(&t))
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN").and_then(|t| clean_token(&t)))
            .or_else(|| std::fs::read_to_string(&token_path).ok().and_then(|t| clean_token(&t)));
        let offline = is_true(non_empty("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE")).as_deref());
        HubConfig { endpoint, token, hub_cache, offline }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let c = cfg(&[("HOME", "/home/u")]);
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert_eq!(c.hub_cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!c.offline);
        let c = cfg(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x"), ("HF_ENDPOINT", "http://m:1/")]);
        assert_eq!(c.hub_cache, PathBuf::from("/x/huggingface/hub"));
        assert_eq!(c.endpoint, "http://m:1");
        let c = cfg(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "~/c"), ("HOME", "/h")]);
        assert_eq!(c.hub_cache, PathBuf::from("/h/c"));
    }

    #[test]
    fn token_order_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("token"), "file-token\n").unwrap();
        let c = cfg(&[("HF_HOME", home)]);
        assert_eq!(c.token.as_deref(), Some("file-token"));
        let c = cfg(&[("HF_HOME", home), ("HUGGING_FACE_HUB_TOKEN", "legacy")]);
        assert_eq!(c.token.as_deref(), Some("legacy"));
        let c = cfg(&[("HF_HOME", home), ("HF_TOKEN", " env \n"), ("HUGGING_FACE_HUB_TOKEN", "legacy")]);
        assert_eq!(c.token.as_deref(), Some("env"));
        std::fs::write(dir.path().join("other"), "other-token").unwrap();
        let other = dir.path().join("other");
        let c = cfg(&[("HF_HOME", home), ("HF_TOKEN_PATH", other.to_str().unwrap())]);
        assert_eq!(c.token.as_deref(), Some("other-token"));
        let c = cfg(&[("HF_HOME", "/nonexistent")]);
        assert_eq!(c.token, None);
    }

    #[test]
    fn offline_values() {
        for v in ["1", "on", "YES", "True"] {
            assert!(cfg(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        for v in ["0", "off", "", "no"] {
            assert!(!cfg(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        assert!(cfg(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
    }
}
