//! One fetch from start to end: resolve the revision to a commit, list the repo, select files
//! (patterns or an exact list), ask the Hub for each file's etag and location, skip what is
//! already in place, check disk space, download the rest, link or record each file as it lands,
//! and write the manifest. With `HF_HUB_OFFLINE` the same selection is served from the cache,
//! or fails naming what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use openseek_common::provenance::Provenance;
use openseek_common::{ExitCode, Failure};

use crate::cache::{check_repo_path, Layout};
use crate::config::HubConfig;
use crate::download::{self, EngineOptions, Expect, FileJob, Outcome};
use crate::http::{Client, ResolveMeta, RetryPolicy};
use crate::listing::{self, RemoteFile};
use crate::manifest::{Manifest, ManifestFile};
use openseek_common::progress::{Mode, Transfers};
use crate::repo::RepoRef;
use crate::space;

#[derive(Debug, Clone)]
pub enum Selection {
    /// `--include` / `--exclude` (fnmatch; empty include = everything).
    Patterns { include: Vec<String>, exclude: Vec<String> },
    /// Exactly these paths; any that the repo lacks is an error.
    Exact(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub repo: RepoRef,
    pub revision: String,
    pub selection: Selection,
    pub local_dir: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub engine: EngineOptions,
    pub retry: RetryPolicy,
    pub progress: Mode,
}

#[derive(Debug)]
pub struct FetchReport {
    /// The snapshot folder or the local dir.
    pub root: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
}

fn select<'a>(files: &'a [RemoteFile], selection: &Selection, what: &str) -> Result<Vec<&'a RemoteFile>, Failure> {
    match selection {
        Selection::Patterns { include, exclude } => {
            let chosen: Vec<&RemoteFile> = files.iter().filter(|f| crate::glob::selected(&f.path, include, exclude)).collect();
            if chosen.is_empty() {
                eprintln!("os-fetch: warning: no file of {what} matches --include {include:?} / --exclude {exclude:?}");
            }
            Ok(chosen)
        }
        Selection::Exact(paths) => {
            let by_path: HashMap<&str, &RemoteFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
            let missing: Vec<&str> = paths.iter().map(String::as_str).filter(|p| !by_path.contains_key(p)).collect();
            if !missing.is_empty() {
                let sample: Vec<&str> = missing.iter().take(5).copied().collect();
                return Err(Failure::new(
                    ExitCode::Unavailable,
                    format!(
                        "{what}: {} of the {} requested files are not in the repo: {}{}",
                        missing.len(),
                        paths.len(),
                        sample.join(", "),
                        if missing.len() > 5 { ", ..." } else { "" }
                    ),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            Ok(paths.iter().filter(|p| seen.insert(p.as_str())).map(|p| by_path[p.as_str()]).collect())
        }
    }
}

fn default_manifest_path(layout: &Layout, commit: &str) -> PathBuf {
    match layout {
        Layout::Cache { repo_dir, .. } => repo_dir.join("os-fetch").join(format!("{commit}.json")),
        Layout::LocalDir { dir } => dir.join(".cache").join("os-fetch").join("manifest.json"),
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// HEAD every file, `threads` at a time, keeping order.
fn resolve_all(client: &Client, endpoint: &str, req: &FetchRequest, commit: &str, files: &[&RemoteFile], threads: usize) -> Result<Vec<ResolveMeta>, Failure> {
    let results: Vec<Mutex<Option<Result<ResolveMeta, Failure>>>> = files.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, files.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() {
                    break;
                }
                let f = files[i];
                let url = req.repo.resolve_url(endpoint, commit, &f.path);
                let label = format!("{}, file {}", req.repo.display(), f.path);
                let r = client.head_resolve(&url, &label).map_err(|e| e.context(&label));
                let failed = r.is_err();
                *results[i].lock().unwrap() = Some(r);
                if failed {
                    // Stop the others early: one failure fails the fetch.
                    next.store(files.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(files.len());
    for r in results {
        match r.into_inner().unwrap() {
            Some(Ok(m)) => out.push(m),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

/// Fetch `req` with the settings of `cfg`.
pub fn fetch(cfg: &HubConfig, req: &FetchRequest) -> Result<FetchReport, Failure> {
    for p in match &req.selection {
        Selection::Exact(paths) => paths.clone(),
        _ => vec![],
    } {
        check_repo_path(&p)?;
    }
    let layout = match &req.local_dir {
        Some(d) => Layout::local_dir(d),
        None => Layout::cache(&cfg.hub_cache, &req.repo),
    };
    if cfg.offline {
        return fetch_offline(cfg, req, &layout);
    }
    let started = Instant::now();
    let what = format!("{} at {}", req.repo.display(), req.revision);
    let client = Client::new(&cfg.endpoint, cfg.token.clone(), req.retry.clone(), req.engine.connections);
    let commit = listing::resolve_commit(&client, &cfg.endpoint, &req.repo, &req.revision)?;
    let files = listing::list_tree(&client, &cfg.endpoint, &req.repo, &commit)?;
    let chosen = select(&files, &req.selection, &what)?;
    for f in &chosen {
        check_repo_path(&f.path).map_err(|e| e.context(&what))?;
    }
    layout.prepare(&req.revision, &commit, Some(&files))?;

    // Cache mode: a snapshot pointer that exists is final (commit-addressed), no HEAD needed.
    let needs_head: Vec<&RemoteFile> = chosen
        .iter()
        .copied()
        .filter(|f| !matches!(layout, Layout::Cache { .. }) || !layout.root(&commit).join(&f.path).is_file())
        .collect();
    let metas = resolve_all(&client, &cfg.endpoint, req, &commit, &needs_head, req.engine.connections)?;
    let meta_of: HashMap<&str, &ResolveMeta> = needs_head.iter().map(|f| f.path.as_str()).zip(metas.iter()).collect();

    struct Entry {
        file: RemoteFile,
        etag: String,
        expect: Expect,
        status: &'static str,
        job: Option<usize>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut jobs: Vec<FileJob> = Vec::new();
    let mut job_of_blob: HashMap<PathBuf, usize> = HashMap::new();
    let mut paths_of_job: Vec<Vec<(String, String)>> = Vec::new();
    for f in &chosen {
        let label = format!("{}, file {}", req.repo.display(), f.path);
        let expect = Expect {
            sha256: f.lfs_sha256.clone(),
            git_oid: if f.lfs_sha256.is_none() && !f.oid.is_empty() { Some(f.oid.clone()) } else { None },
        };
        let Some(meta) = meta_of.get(f.path.as_str()) else {
            // Present in the snapshot: its etag is the blob the pointer names.
            let link = std::fs::read_link(layout.root(&commit).join(&f.path)).ok();
            let etag = link.and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
            entries.push(Entry { file: (*f).clone(), etag, expect, status: "present", job: None });
            continue;
        };
        let etag = meta.etag.clone().ok_or_else(|| {
            Failure::data(format!("{label}: the server sent neither X-Linked-Etag nor ETag for {}; is HF_ENDPOINT a Hub mirror?", meta.location))
        })?;
        if etag.is_empty() || etag.contains('/') || etag.starts_with('.') {
            return Err(Failure::data(format!("{label}: unusable ETag `{etag}`")));
        }
        if let Some(size) = meta.size {
            if size != f.size {
                return Err(Failure::data(format!(
                    "{label}: the listing says {} bytes but the file answers {size} (X-Linked-Size / Content-Length)",
                    f.size
                )));
            }
        }
        let mut expect = expect;
        if expect.sha256.is_none() && is_sha256(&etag) {
            expect.sha256 = Some(etag.clone());
            expect.git_oid = None;
        }
        if layout.is_present(&commit, &f.path, &etag) {
            layout.finish(&commit, &f.path, &etag)?;
            entries.push(Entry { file: (*f).clone(), etag, expect, status: "present", job: None });
            continue;
        }
        // A local file without metadata whose sha256 is the etag (huggingface_hub does the same).
        if let (Layout::LocalDir { dir }, true) = (&layout, is_sha256(&etag)) {
            let local = dir.join(&f.path);
            if local.is_file() && openseek_common::hash::sha256_file(&local).map(|h| h == etag).unwrap_or(false) {
                layout.finish(&commit, &f.path, &etag)?;
                entries.push(Entry { file: (*f).clone(), etag, expect, status: "present", job: None });
                continue;
            }
        }
        let placement = layout.placement(&commit, &f.path, &etag);
        let idx = match job_of_blob.get(&placement.complete) {
            Some(&i) => i,
            None => {
                jobs.push(FileJob { label, repo_path: f.path.clone(), size: f.size, url: meta.location.clone(), expect: expect.clone(), placement: placement.clone() });
                paths_of_job.push(Vec::new());
                job_of_blob.insert(placement.complete.clone(), jobs.len() - 1);
                jobs.len() - 1
            }
        };
        paths_of_job[idx].push((f.path.clone(), etag.clone()));
        entries.push(Entry { file: (*f).clone(), etag, expect, status: "downloaded", job: Some(idx) });
    }

    // Disk space for what is still to come.
    let resumed: Vec<u64> = jobs
        .iter()
        .map(|j| download::load_resume_state(&j.placement.incomplete, j.size).iter().map(|(s, e)| e - s).sum())
        .collect();
    let needed: u64 = jobs.iter().zip(&resumed).map(|(j, r)| j.size - r).sum();
    let data_dir = layout.data_dir();
    space::check(needed, space::available_bytes(&data_dir), &data_dir)?;

    let total: u64 = jobs.iter().map(|j| j.size).sum();
    let progress = Transfers::start("os-fetch", total, resumed.iter().sum(), jobs.len(), req.progress);
    let on_done = |job: &FileJob| -> Result<(), Failure> {
        let i = jobs.iter().position(|j| std::ptr::eq(j, job)).unwrap_or(0);
        for (path, etag) in &paths_of_job[i] {
            layout.finish(&commit, path, etag)?;
        }
        Ok(())
    };
    let outcomes = download::run(&client, &jobs, &req.engine, &progress, &on_done);
    progress.finish();
    let outcomes = outcomes?;

    let root = layout.root(&commit);
    let mut manifest_files = Vec::new();
    let mut first_use = vec![true; jobs.len()];
    for e in &entries {
        let (status, downloaded, sha256, git_oid) = match e.job {
            Some(i) => {
                let o: &Outcome = &outcomes[i];
                let first = std::mem::replace(&mut first_use[i], false);
                let status = if !first { "present" } else if o.resumed > 0 { "resumed" } else { e.status };
                (status, if first { o.downloaded } else { 0 }, o.sha256.clone().or(e.expect.sha256.clone()), o.git_oid.clone().or(e.expect.git_oid.clone()))
            }
            None => (e.status, 0, e.expect.sha256.clone(), e.expect.git_oid.clone()),
        };
        manifest_files.push(ManifestFile {
            path: e.file.path.clone(),
            size: e.file.size,
            sha256,
            git_oid,
            etag: e.etag.clone(),
            local_path: root.join(&e.file.path).display().to_string(),
            status: status.to_string(),
            downloaded_bytes: downloaded,
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    let downloaded_bytes: u64 = manifest_files.iter().map(|f| f.downloaded_bytes).sum();
    let manifest = Manifest {
        provenance: Provenance::capture("os-fetch", env!("CARGO_PKG_VERSION")),
        repo: req.repo.id.clone(),
        repo_type: req.repo.kind.as_str().to_string(),
        revision: req.revision.clone(),
        commit: commit.clone(),
        endpoint: cfg.endpoint.clone(),
        layout: if req.local_dir.is_some() { "local-dir" } else { "cache" }.to_string(),
        root: root.display().to_string(),
        offline: false,
        total_bytes: manifest_files.iter().map(|f| f.size).sum(),
        downloaded_bytes,
        seconds,
        mb_per_s: downloaded_bytes as f64 / 1e6 / seconds.max(1e-9),
        files: manifest_files,
    };
    let manifest_path = req.manifest.clone().unwrap_or_else(|| default_manifest_path(&layout, &commit));
    manifest.write(&manifest_path)?;
    Ok(FetchReport { root, manifest_path, manifest })
}

/// Every regular file (or symlink to one) under `root`, as `/`-separated relative paths;
/// `skip` names top-level folders to leave out.
fn walk(root: &Path, skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let path = e.path();
            if path.is_dir() {
                if !(rel.is_empty() && skip.contains(&name.as_str())) {
                    stack.push((path, rel_path));
                }
            } else if path.is_file() {
                out.push(rel_path);
            }
        }
    }
    out.sort();
    out
}

fn fetch_offline(cfg: &HubConfig, req: &FetchRequest, layout: &Layout) -> Result<FetchReport, Failure> {
    let what = format!("{} at {}", req.repo.display(), req.revision);
    let offline_err = |detail: String| {
        Failure::new(
            ExitCode::Unavailable,
            format!("{what}: {detail}; HF_HUB_OFFLINE is set, so nothing is downloaded: unset it (or fetch on a machine with network) first"),
        )
    };
    let (commit, root) = match layout {
        Layout::Cache { repo_dir, .. } => {
            let commit = layout.cached_commit(&req.revision).ok_or_else(|| {
                offline_err(format!("not in the cache ({} has no refs/{})", repo_dir.display(), req.revision))
            })?;
            let root = layout.root(&commit);
            if !root.is_dir() {
                return Err(offline_err(format!("commit {commit} is not in the cache ({} is missing)", root.display())));
            }
            (commit, root)
        }
        Layout::LocalDir { dir } => {
            if !dir.is_dir() {
                return Err(offline_err(format!("{} does not exist", dir.display())));
            }
            (String::new(), dir.clone())
        }
    };
    let cached_tree = if commit.is_empty() { None } else { layout.cached_tree(&commit) };
    let candidates: Vec<RemoteFile> = match (&req.selection, &cached_tree) {
        (Selection::Exact(paths), _) => paths.iter().map(|p| RemoteFile { path: p.clone(), size: 0, oid: String::new(), lfs_sha256: None }).collect(),
        (_, Some(tree)) => tree.clone(),
        (_, None) => walk(&root, &[".cache"]).into_iter().map(|p| RemoteFile { path: p, size: 0, oid: String::new(), lfs_sha256: None }).collect(),
    };
    let chosen: Vec<RemoteFile> = match &req.selection {
        Selection::Exact(_) => candidates,
        Selection::Patterns { include, exclude } => candidates.into_iter().filter(|f| crate::glob::selected(&f.path, include, exclude)).collect(),
    };
    let missing: Vec<&str> = chosen.iter().filter(|f| !root.join(&f.path).is_file()).map(|f| f.path.as_str()).collect();
    if !missing.is_empty() {
        let sample: Vec<&str> = missing.iter().take(5).copied().collect();
        return Err(offline_err(format!(
            "{} of {} requested files are not on disk under {}: {}{}",
            missing.len(),
            chosen.len(),
            root.display(),
            sample.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        )));
    }
    let mut commit_seen = commit.clone();
    let files: Vec<ManifestFile> = chosen
        .iter()
        .map(|f| {
            let local = root.join(&f.path);
            let size = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(f.size);
            let etag = match layout {
                Layout::Cache { .. } => std::fs::read_link(&local).ok().and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default(),
                Layout::LocalDir { .. } => match layout.local_metadata(&f.path) {
                    Some((c, e)) => {
                        if commit_seen.is_empty() {
                            commit_seen = c;
                        }
                        e
                    }
                    None => String::new(),
                },
            };
            ManifestFile {
                path: f.path.clone(),
                size,
                sha256: f.lfs_sha256.clone(),
                git_oid: (!f.oid.is_empty()).then(|| f.oid.clone()),
                etag,
                local_path: local.display().to_string(),
                status: "present".into(),
                downloaded_bytes: 0,
            }
        })
        .collect();
    let manifest = Manifest {
        provenance: Provenance::capture("os-fetch", env!("CARGO_PKG_VERSION")),
        repo: req.repo.id.clone(),
        repo_type: req.repo.kind.as_str().to_string(),
        revision: req.revision.clone(),
        commit: commit_seen.clone(),
        endpoint: cfg.endpoint.clone(),
        layout: if req.local_dir.is_some() { "local-dir" } else { "cache" }.to_string(),
        root: root.display().to_string(),
        offline: true,
        total_bytes: files.iter().map(|f| f.size).sum(),
        downloaded_bytes: 0,
        seconds: 0.0,
        mb_per_s: 0.0,
        files,
    };
    let manifest_path = req.manifest.clone().unwrap_or_else(|| default_manifest_path(layout, if commit_seen.is_empty() { "unknown" } else { &commit_seen }));
    manifest.write(&manifest_path)?;
    Ok(FetchReport { root, manifest_path, manifest })
}
