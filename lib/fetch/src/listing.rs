//! What is in a repo: the commit a revision points at (`/api/{type}s/{id}/revision/{rev}`) and
//! the recursive file listing (`/tree/{commit}`), followed page by page through `Link:
//! <…>; rel="next"`. Mirrors that hand back links to the origin host (huggingface.co) are
//! rewritten to the configured endpoint, so pagination never leaves the mirror.

use openseek_common::Failure;
use serde::{Deserialize, Serialize};

use crate::http::Client;
use crate::repo::{is_commit_hash, join_url, origin, RepoRef};

/// One file of the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    /// Git blob id (sha1 of `blob {size}\0{content}` for a regular file, of the pointer for LFS).
    pub oid: String,
    /// sha256 of the content for an LFS file.
    pub lfs_sha256: Option<String>,
}

/// The `next` URL of a `Link` header (RFC 8288, as GitHub and the Hub write it).
pub fn next_link(header: &str) -> Option<String> {
    for part in header.split(',') {
        let part = part.trim();
        let Some(end) = part.find('>') else { continue };
        if !part.starts_with('<') {
            continue;
        }
        let url = &part[1..end];
        let params = &part[end + 1..];
        if params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        }) {
            return Some(url.to_string());
        }
    }
    None
}

/// Point a pagination link at `endpoint`: a relative link is joined to the page it came from;
/// an absolute link on another origin (the Hub behind a mirror) keeps its `/api/...` path and
/// query but gets the endpoint's origin and path prefix.
pub fn rewrite_link(link: &str, page_url: &str, endpoint: &str) -> String {
    let absolute = join_url(page_url, link);
    if origin(&absolute) == origin(endpoint) {
        return absolute;
    }
    let after_origin = &absolute[origin(&absolute).map(|o| o.len()).unwrap_or(0)..];
    // Keep from `/api/` on; an endpoint with a path prefix (`https://mirror/hf`) gets it back.
    match after_origin.find("/api/") {
        Some(i) => format!("{endpoint}{}", &after_origin[i..]),
        None => format!("{endpoint}{after_origin}"),
    }
}

/// The commit `revision` points at (itself when it is a full commit hash).
pub fn resolve_commit(client: &Client, endpoint: &str, repo: &RepoRef, revision: &str) -> Result<String, Failure> {
    if is_commit_hash(revision) {
        return Ok(revision.to_ascii_lowercase());
    }
    let url = repo.revision_url(endpoint, revision);
    let what = format!("{}: revision {revision}", repo.display());
    let (info, _) = client.get_json(&url, &what).map_err(|e| e.context(&what))?;
    match info.get("sha").and_then(|s| s.as_str()) {
        Some(sha) if is_commit_hash(sha) => Ok(sha.to_string()),
        _ => Err(Failure::data(format!("{what}: {url} answered without a commit sha"))),
    }
}

/// Every file of the repo at `revision` (normally a commit), in listing order.
pub fn list_tree(client: &Client, endpoint: &str, repo: &RepoRef, revision: &str) -> Result<Vec<RemoteFile>, Failure> {
    let what = format!("{}: listing files at {revision}", repo.display());
    let mut url = repo.tree_url(endpoint, revision);
    let mut files = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        if pages > 100_000 {
            return Err(Failure::data(format!("{what}: pagination does not end (last page {url})")));
        }
        let (page, link) = client.get_json(&url, &what).map_err(|e| e.context(&what))?;
        let entries = page
            .as_array()
            .ok_or_else(|| Failure::data(format!("{what}: {url} did not answer a JSON list")))?;
        for entry in entries {
            if entry.get("type").and_then(|t| t.as_str()) != Some("file") {
                continue;
            }
            let field = |k: &str| entry.get(k);
            let path = field("path").and_then(|p| p.as_str());
            let size = field("size").and_then(|s| s.as_u64());
            let (Some(path), Some(size)) = (path, size) else {
                return Err(Failure::data(format!("{what}: entry without path or size in {url}: {entry}")));
            };
            let oid = field("oid").and_then(|o| o.as_str()).unwrap_or("").to_string();
            let lfs_sha256 = field("lfs").and_then(|l| l.get("oid").or_else(|| l.get("sha256"))).and_then(|o| o.as_str()).map(str::to_string);
            files.push(RemoteFile { path: path.to_string(), size, oid, lfs_sha256 });
        }
        match link.as_deref().and_then(next_link) {
            Some(next) => url = rewrite_link(&next, &url, endpoint),
            None => break,
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_parsing() {
        let h = r#"<https://huggingface.co/api/models/a/b/tree/main?recursive=true&cursor=ZXk>; rel="next", <x>; rel="prev""#;
        assert_eq!(next_link(h).as_deref(), Some("https://huggingface.co/api/models/a/b/tree/main?recursive=true&cursor=ZXk"));
        assert_eq!(next_link(r#"<x>; rel="prev""#), None);
    }

    #[test]
    fn origin_links_are_rewritten_to_the_endpoint() {
        let page = "http://127.0.0.1:9/api/models/a/b/tree/main?recursive=true";
        let ep = "http://127.0.0.1:9";
        let link = "https://huggingface.co/api/models/a/b/tree/main?recursive=true&cursor=2";
        assert_eq!(rewrite_link(link, page, ep), "http://127.0.0.1:9/api/models/a/b/tree/main?recursive=true&cursor=2");
        assert_eq!(
            rewrite_link(link, "https://m.example/hf/api/x", "https://m.example/hf"),
            "https://m.example/hf/api/models/a/b/tree/main?recursive=true&cursor=2"
        );
        assert_eq!(rewrite_link("/api/x?cursor=3", page, ep), "http://127.0.0.1:9/api/x?cursor=3");
        let same = "http://127.0.0.1:9/api/x?cursor=4";
        assert_eq!(rewrite_link(same, page, ep), same);
    }
}
