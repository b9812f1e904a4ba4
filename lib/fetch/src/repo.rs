//! Repositories and their URLs: repo ids, types, revisions, percent-encoding as huggingface_hub
//! does it (`quote(revision, safe="")`, `quote(path)`), origins for the auth rule, and the
//! cache folder name (`models--org--name`).

use openseek_common::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    pub fn parse(s: &str) -> Result<Self, Failure> {
        match s {
            "model" => Ok(RepoType::Model),
            "dataset" => Ok(RepoType::Dataset),
            other => Err(Failure::usage(format!("repo type `{other}` is not supported; use \"model\" or \"dataset\""))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        }
    }
    /// The plural used in API paths and cache folder names.
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub kind: RepoType,
}

impl RepoRef {
    /// Validate a repo id (`name` or `org/name`, letters, digits, `-_.`, no `--` or `..`).
    pub fn new(id: &str, kind: RepoType) -> Result<Self, Failure> {
        let parts: Vec<&str> = id.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) || id.contains("--") || id.contains("..") {
            return Err(Failure::usage(format!(
                "`{id}` is not a valid repo id: expected `org/name` (letters, digits, `-`, `_`, `.`; no `--` or `..`)"
            )));
        }
        Ok(RepoRef { id: id.to_string(), kind })
    }

    /// `models--org--name` / `datasets--org--name`.
    pub fn folder_name(&self) -> String {
        let mut parts = vec![self.kind.plural()];
        parts.extend(self.id.split('/'));
        parts.join("--")
    }

    /// `{endpoint}/[datasets/]{id}/resolve/{revision}/{path}`.
    pub fn resolve_url(&self, endpoint: &str, revision: &str, path: &str) -> String {
        let prefix = match self.kind {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        };
        format!("{endpoint}/{prefix}{}/resolve/{}/{}", self.id, quote(revision, ""), quote(path, "/"))
    }

    /// `{endpoint}/api/{models|datasets}/{id}/tree/{revision}?recursive=true`.
    pub fn tree_url(&self, endpoint: &str, revision: &str) -> String {
        format!("{endpoint}/api/{}/{}/tree/{}?recursive=true&expand=false", self.kind.plural(), self.id, quote(revision, ""))
    }

    /// `{endpoint}/api/{models|datasets}/{id}/revision/{revision}` (gives the commit sha).
    pub fn revision_url(&self, endpoint: &str, revision: &str) -> String {
        format!("{endpoint}/api/{}/{}/revision/{}", self.kind.plural(), self.id, quote(revision, ""))
    }

    pub fn display(&self) -> String {
        format!("{} {}", self.kind.as_str(), self.id)
    }
}

/// A full 40-hex git commit id.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Percent-encode like Python's `urllib.parse.quote(s, safe)`: letters, digits, `_.-~` and the
/// `safe` characters stay, every other byte of the UTF-8 becomes `%XX`.
pub fn quote(s: &str, safe: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) || (b.is_ascii() && safe.as_bytes().contains(&b)) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (the mock hub's side of `quote`).
pub fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://host[:port]` of an absolute URL, lower-cased, default ports removed; `None` for a
/// relative URL.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority).to_ascii_lowercase();
    let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => authority,
    };
    Some(format!("{scheme}://{authority}"))
}

/// Resolve `location` (absolute, or relative: `/path` or `path`) against `base`.
pub fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let Some(base_origin) = origin(base) else { return location.to_string() };
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{base_origin}{location}");
    }
    let path_start = base_origin.len();
    let base_path = base[path_start..].split(['?', '#']).next().unwrap_or("");
    let dir = match base_path.rfind('/') {
        Some(i) => &base_path[..=i],
        None => "/",
    };
    format!("{base_origin}{dir}{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_match_huggingface_hub() {
        let r = RepoRef::new("BAAI/OpenSeek-Pretrain-100B", RepoType::Dataset).unwrap();
        assert_eq!(r.folder_name(), "datasets--BAAI--OpenSeek-Pretrain-100B");
        assert_eq!(
            r.resolve_url("https://hf.co", "refs/pr/1", "a b/c#d.bin"),
            "https://hf.co/datasets/BAAI/OpenSeek-Pretrain-100B/resolve/refs%2Fpr%2F1/a%20b/c%23d.bin"
        );
        let m = RepoRef::new("gpt2", RepoType::Model).unwrap();
        assert_eq!(m.folder_name(), "models--gpt2");
        assert_eq!(m.tree_url("http://x", "main"), "http://x/api/models/gpt2/tree/main?recursive=true&expand=false");
        for bad in ["a/b/c", "a--b/c", "../x", "a/", "", "a b/c"] {
            assert!(RepoRef::new(bad, RepoType::Model).is_err(), "{bad}");
        }
    }

    #[test]
    fn quote_roundtrip_and_origin() {
        assert_eq!(quote("é/x y", "/"), "%C3%A9/x%20y");
        assert_eq!(unquote("%C3%A9/x%20y%2"), "é/x y%2");
        assert_eq!(origin("HTTPS://Hub.example:443/a?b").as_deref(), Some("https://hub.example"));
        assert_eq!(origin("http://127.0.0.1:8080").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin("/relative"), None);
        assert_eq!(join_url("http://h:1/a/b?c", "/x/y"), "http://h:1/x/y");
        assert_eq!(join_url("http://h:1/a/b?c", "z"), "http://h:1/a/z");
        assert_eq!(join_url("http://h:1/a", "https://cdn/q"), "https://cdn/q");
        assert!(is_commit_hash(&"a".repeat(40)) && !is_commit_hash("main"));
    }
}
