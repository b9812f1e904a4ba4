//! Where files land, in huggingface_hub's two layouts.
//! Cache: `<hub>/{models|datasets}--org--name/blobs/<etag>`, `snapshots/<commit>/<path>` as a
//! relative symlink to the blob, `refs/<revision>` holding the commit, `trees/<commit>.json`
//! (the listing, which huggingface_hub reads offline to tell a complete snapshot), and
//! `<hub>/.locks/<repo folder>/<etag>.lock`.
//! Local dir: `<dir>/<path>` as a real file, `<dir>/.cache/huggingface/download/<path>.metadata`
//! (`commit\netag\ntimestamp\n`), the `.incomplete` temporary and the `.lock` beside it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::output::create_dir;
use openseek_common::Failure;
use sha1::{Digest, Sha1};

use crate::listing::RemoteFile;
use crate::repo::RepoRef;

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by os-fetch (Hugging Face cache layout).\n\
# For information about cache directory tags, see: https://bford.info/cachedir/\n";

#[derive(Debug, Clone)]
pub enum Layout {
    Cache { hub: PathBuf, repo_dir: PathBuf, folder: String },
    LocalDir { dir: PathBuf },
}

/// Where one file is written, renamed to, and shown.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The temporary being filled (resumable).
    pub incomplete: PathBuf,
    /// Where the verified temporary is renamed: the blob, or the file in the local dir.
    pub complete: PathBuf,
    /// What a user opens: the snapshot symlink, or the local file.
    pub visible: PathBuf,
    pub lock: PathBuf,
}

/// Write `content` to `path` through a temporary and a rename.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), Failure> {
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    fs::write(&tmp, content).map_err(|e| Failure::io_at(&tmp, "cannot write", &e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Failure::io_at(path, "cannot rename into place", &e)
    })
}

/// Repo paths are `/`-separated and relative; refuse anything that could escape the target.
pub fn check_repo_path(path: &str) -> Result<(), Failure> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Failure::data(format!("refusing repo path `{path}`: it is not a plain relative path")));
    }
    Ok(())
}

/// URL-safe base64 (with padding) of the sha1 of `name`, huggingface_hub's `_short_hash`.
pub fn short_hash(name: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let digest = Sha1::digest(name.as_bytes());
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Layout {
    pub fn cache(hub: &Path, repo: &RepoRef) -> Self {
        let folder = repo.folder_name();
        Layout::Cache { hub: hub.to_path_buf(), repo_dir: hub.join(&folder), folder }
    }

    pub fn local_dir(dir: &Path) -> Self {
        Layout::LocalDir { dir: dir.to_path_buf() }
    }

    /// The directory a user points tools at: the snapshot, or the local dir.
    pub fn root(&self, commit: &str) -> PathBuf {
        match self {
            Layout::Cache { repo_dir, .. } => repo_dir.join("snapshots").join(commit),
            Layout::LocalDir { dir } => dir.clone(),
        }
    }

    /// Directory whose free space bounds the download.
    pub fn data_dir(&self) -> PathBuf {
        match self {
            Layout::Cache { repo_dir, .. } => repo_dir.join("blobs"),
            Layout::LocalDir { dir } => dir.clone(),
        }
    }

    fn hf_dir(dir: &Path) -> PathBuf {
        dir.join(".cache").join("huggingface")
    }

    fn metadata_path(dir: &Path, path: &str) -> PathBuf {
        Self::hf_dir(dir).join("download").join(format!("{path}.metadata"))
    }

    pub fn placement(&self, commit: &str, path: &str, etag: &str) -> Placement {
        match self {
            Layout::Cache { hub, repo_dir, folder } => {
                let blob = repo_dir.join("blobs").join(etag);
                Placement {
                    incomplete: repo_dir.join("blobs").join(format!("{etag}.incomplete")),
                    complete: blob,
                    visible: repo_dir.join("snapshots").join(commit).join(path),
                    lock: hub.join(".locks").join(folder).join(format!("{etag}.lock")),
                }
            }
            Layout::LocalDir { dir } => {
                let meta = Self::metadata_path(dir, path);
                let meta_name = meta.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let parent = meta.parent().map(Path::to_path_buf).unwrap_or_default();
                Placement {
                    incomplete: parent.join(format!("{}.{etag}.incomplete", short_hash(&meta_name))),
                    complete: dir.join(path),
                    visible: dir.join(path),
                    lock: Self::hf_dir(dir).join("download").join(format!("{path}.lock")),
                }
            }
        }
    }

    /// Set up the layout for `commit`: refs, the tree listing, CACHEDIR.TAG, `.gitignore`.
    pub fn prepare(&self, revision: &str, commit: &str, listing: Option<&[RemoteFile]>) -> Result<(), Failure> {
        let tree_folder = match self {
            Layout::Cache { hub, repo_dir, .. } => {
                create_dir(&repo_dir.join("blobs"))?;
                create_dir(&repo_dir.join("snapshots").join(commit))?;
                if !hub.join("CACHEDIR.TAG").exists() {
                    let _ = fs::write(hub.join("CACHEDIR.TAG"), CACHEDIR_TAG);
                }
                if revision != commit {
                    let ref_path = repo_dir.join("refs").join(revision);
                    if fs::read_to_string(&ref_path).ok().as_deref() != Some(commit) {
                        write_atomic(&ref_path, commit.as_bytes())?;
                    }
                }
                repo_dir.clone()
            }
            Layout::LocalDir { dir } => {
                let hf = Self::hf_dir(dir);
                create_dir(&hf.join("download"))?;
                if !hf.join(".gitignore").exists() {
                    let _ = fs::write(hf.join(".gitignore"), "*");
                }
                if !hf.join("CACHEDIR.TAG").exists() {
                    let _ = fs::write(hf.join("CACHEDIR.TAG"), CACHEDIR_TAG);
                }
                hf
            }
        };
        if let Some(files) = listing {
            let mut map = serde_json::Map::new();
            let mut sorted: Vec<&RemoteFile> = files.iter().collect();
            sorted.sort_by(|a, b| a.path.cmp(&b.path));
            for f in sorted {
                let mut info = serde_json::json!({"size": f.size, "blob_id": f.oid});
                if let Some(sha) = &f.lfs_sha256 {
                    info["lfs_sha256"] = sha.clone().into();
                    info["lfs_size"] = f.size.into();
                }
                map.insert(f.path.clone(), info);
            }
            let doc = serde_json::json!({"format_version": 1, "files": map});
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            write_atomic(&tree_folder.join("trees").join(format!("{commit}.json")), text.as_bytes())?;
        }
        Ok(())
    }

    /// The commit a revision points at in the cache (`refs/<revision>`), for offline use.
    pub fn cached_commit(&self, revision: &str) -> Option<String> {
        if crate::repo::is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        match self {
            Layout::Cache { repo_dir, .. } => fs::read_to_string(repo_dir.join("refs").join(revision)).ok().map(|s| s.trim().to_string()),
            Layout::LocalDir { .. } => None,
        }
    }

    /// The cached listing for `commit` (`trees/<commit>.json`), if any.
    pub fn cached_tree(&self, commit: &str) -> Option<Vec<RemoteFile>> {
        let folder = match self {
            Layout::Cache { repo_dir, .. } => repo_dir.clone(),
            Layout::LocalDir { dir } => Self::hf_dir(dir),
        };
        let text = fs::read_to_string(folder.join("trees").join(format!("{commit}.json"))).ok()?;
        let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
        if doc.get("format_version")?.as_u64()? != 1 {
            return None;
        }
        let files = doc.get("files")?.as_object()?;
        Some(
            files
                .iter()
                .map(|(path, info)| RemoteFile {
                    path: path.clone(),
                    size: info.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
                    oid: info.get("blob_id").and_then(|s| s.as_str()).unwrap_or("").to_string(),
                    lfs_sha256: info.get("lfs_sha256").and_then(|s| s.as_str()).map(str::to_string),
                })
                .collect(),
        )
    }

    /// Local-dir metadata `(commit, etag)` if present and not older than the file.
    pub fn local_metadata(&self, path: &str) -> Option<(String, String)> {
        let Layout::LocalDir { dir } = self else { return None };
        let text = fs::read_to_string(Self::metadata_path(dir, path)).ok()?;
        let mut lines = text.lines();
        let commit = lines.next()?.trim().to_string();
        let etag = lines.next()?.trim().to_string();
        let timestamp: f64 = lines.next()?.trim().parse().ok()?;
        let mtime = fs::metadata(dir.join(path)).ok()?.modified().ok()?;
        let mtime = mtime.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
        (mtime - 1.0 <= timestamp).then_some((commit, etag))
    }

    /// Is the file already in place for `etag`? Cache: the snapshot pointer or the blob exists.
    /// Local dir: the file exists with metadata naming this etag.
    pub fn is_present(&self, commit: &str, path: &str, etag: &str) -> bool {
        let p = self.placement(commit, path, etag);
        match self {
            Layout::Cache { .. } => p.complete.is_file(),
            Layout::LocalDir { .. } => p.visible.is_file() && self.local_metadata(path).map(|(_, e)| e == etag).unwrap_or(false),
        }
    }

    /// After the content is at `placement.complete`: link the snapshot pointer (cache) or write
    /// the metadata (local dir).
    pub fn finish(&self, commit: &str, path: &str, etag: &str) -> Result<(), Failure> {
        let p = self.placement(commit, path, etag);
        match self {
            Layout::Cache { .. } => {
                let dir = p.visible.parent().unwrap_or(Path::new("."));
                create_dir(dir)?;
                let depth = path.split('/').count() - 1 + 2;
                let target = format!("{}blobs/{etag}", "../".repeat(depth));
                if fs::read_link(&p.visible).ok().map(|t| t == Path::new(&target)).unwrap_or(false) {
                    return Ok(());
                }
                let tmp = dir.join(format!(".{}.link-{}", p.visible.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Failure::io_at(&tmp, "cannot create symlink", &e))?;
                fs::rename(&tmp, &p.visible).map_err(|e| Failure::io_at(&p.visible, "cannot rename symlink into place", &e))
            }
            Layout::LocalDir { dir } => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                write_atomic(&Self::metadata_path(dir, path), format!("{commit}\n{etag}\n{now:.6}\n").as_bytes())
            }
        }
    }
}

/// Append a line (for the resume journal) and flush it to disk.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoType;

    #[test]
    fn short_hash_matches_python() {
        // base64.urlsafe_b64encode(hashlib.sha1(b"x.bin.metadata").digest()).decode()
        let expected = {
            let d = Sha1::digest(b"x.bin.metadata");
            assert_eq!(d.len(), 20);
            short_hash("x.bin.metadata")
        };
        assert_eq!(expected.len(), 28);
        assert!(expected.ends_with('='));
        assert_eq!(short_hash("abc"), "qZk-NkcGgWq6PiVxeFDCbJzQ2J0=");
    }

    #[test]
    fn cache_paths_and_relative_links() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoRef::new("org/name", RepoType::Dataset).unwrap();
        let layout = Layout::cache(dir.path(), &repo);
        let commit = "c".repeat(40);
        layout.prepare("main", &commit, Some(&[])).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("datasets--org--name/refs/main")).unwrap(), commit);
        let p = layout.placement(&commit, "a/b.bin", "e1");
        fs::write(&p.complete, b"x").unwrap();
        layout.finish(&commit, "a/b.bin", "e1").unwrap();
        assert_eq!(fs::read_link(&p.visible).unwrap(), PathBuf::from("../../../blobs/e1"));
        assert_eq!(fs::read(&p.visible).unwrap(), b"x");
        assert!(layout.is_present(&commit, "a/b.bin", "e1"));
        assert_eq!(p.lock, dir.path().join(".locks/datasets--org--name/e1.lock"));
    }

    #[test]
    fn repo_paths_are_checked() {
        for bad in ["/etc/passwd", "../x", "a//b", "a/./b", ""] {
            assert!(check_repo_path(bad).is_err(), "{bad}");
        }
        check_repo_path("a/b.c").unwrap();
    }
}
