//! The JSON manifest of a fetch: repo, revision, commit, endpoint, where the files are, and per
//! file its size, hashes, etag, local path and whether it was downloaded, resumed or present.

use std::path::Path;

use openseek_common::provenance::Provenance;
use openseek_common::Failure;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_oid: Option<String>,
    pub etag: String,
    pub local_path: String,
    /// "downloaded", "resumed" (partly from an earlier run) or "present" (already there).
    pub status: String,
    pub downloaded_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub provenance: Provenance,
    pub repo: String,
    pub repo_type: String,
    pub revision: String,
    pub commit: String,
    pub endpoint: String,
    /// "cache" or "local-dir".
    pub layout: String,
    /// The snapshot folder or the local dir.
    pub root: String,
    pub offline: bool,
    pub files: Vec<ManifestFile>,
    pub total_bytes: u64,
    pub downloaded_bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> Result<(), Failure> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            openseek_common::output::create_dir(dir)?;
        }
        openseek_common::write_json_file(path, self)
    }
}
