//! os-fetch against a local mock Hub (two listeners: hub + CDN) with injected faults. Every
//! case ends with correct files or a clear error, and nothing corrupt under a final name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openseek_fetch::mock_hub::{pseudo_random, Faults, MockFile, MockHub, MockRepo};
use openseek_tests::{python, root, tool};
use openseek_common::hash::sha256_bytes as sha256_hex;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn model_repo() -> MockRepo {
    MockRepo {
        kind: "model".into(),
        id: "org/tiny-model".into(),
        commit: COMMIT.into(),
        branch: "main".into(),
        files: vec![
            MockFile::new("config.json", br#"{"hidden_size": 8}"#.to_vec(), false),
            MockFile::new("README.md", b"# tiny\n".to_vec(), false),
            MockFile::new("weights/model.safetensors", pseudo_random(700_000, 1), true),
            MockFile::new("weights/extra.bin", pseudo_random(300_001, 2), true),
            MockFile::new("tokenizer/vocab.txt", b"a\nb\nc\n".to_vec(), false),
        ],
    }
}

fn dataset_repo(big: usize) -> MockRepo {
    MockRepo {
        kind: "dataset".into(),
        id: "BAAI/Mini-Pretrain".into(),
        commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
        branch: "main".into(),
        files: vec![
            MockFile::new("Nemotron-high/part_1_text_document.bin", pseudo_random(big, 3), true),
            MockFile::new("Nemotron-high/part_1_text_document.idx", pseudo_random(4_000, 4), false),
            MockFile::new("code/part_7_text_document.bin", pseudo_random(big / 2 + 7, 5), true),
            MockFile::new("code/part_7_text_document.idx", pseudo_random(3_000, 6), true),
            MockFile::new("math/part_9_text_document.bin", pseudo_random(50_000, 7), true),
            MockFile::new("math/part_9_text_document.idx", pseudo_random(900, 8), false),
            MockFile::new("README.md", b"dataset card".to_vec(), false),
        ],
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env { dir: tempfile::tempdir().unwrap() }
    }
    fn hf_home(&self) -> PathBuf {
        self.dir.path().join("hf")
    }
    fn hub_cache(&self) -> PathBuf {
        self.hf_home().join("hub")
    }
    fn command(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut c = Command::new(tool("os-fetch"));
        c.args(args)
            .args(["--retry-wait-ms", "1", "--plain-progress", "--progress-interval", "0.05"])
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HOME", self.hf_home())
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("TRANSFORMERS_OFFLINE");
        c
    }
    fn run(&self, endpoint: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut c = self.command(endpoint, args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().expect("run os-fetch")
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "os-fetch failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap().trim().to_string()
}

fn fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "expected exit {code}, stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`:\n{err}");
    }
    err
}

/// All files under `dir` (recursively), relative, excluding nothing.
fn all_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn no_temporaries(dir: &Path) {
    let bad: Vec<String> = all_files(dir).into_iter().filter(|f| f.contains(".incomplete") || f.contains(".tmp-") || f.ends_with(".parts")).collect();
    assert!(bad.is_empty(), "temporaries left behind: {bad:?}");
}

fn check_snapshot(snapshot: &Path, repo: &MockRepo, only: Option<&[&str]>) {
    for f in &repo.files {
        if let Some(only) = only {
            if !only.contains(&f.path.as_str()) {
                assert!(!snapshot.join(&f.path).exists(), "{} should not have been fetched", f.path);
                continue;
            }
        }
        let got = std::fs::read(snapshot.join(&f.path)).unwrap_or_else(|e| panic!("{}: {e}", f.path));
        assert!(got == *f.data, "{} differs from the served bytes", f.path);
    }
}

#[test]
fn cache_layout_pagination_auth_and_python_finds_the_files() {
    let repo = model_repo();
    let hub = MockHub::start(vec![repo.clone()], Faults { page_size: 2, token: Some("s3cret".into()), ..Default::default() });
    let env = Env::new();
    let out = env.run(&hub.endpoint(), &["org/tiny-model", "--chunk-size", "64k"], &[("HF_TOKEN", "s3cret")]);
    let printed = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let repo_dir = env.hub_cache().join("models--org--tiny-model");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    assert_eq!(PathBuf::from(&printed), snapshot);
    check_snapshot(&snapshot, &repo, None);
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    // Blobs are named by etag: sha256 for LFS files, git blob id for the others; pointers are relative links.
    let lfs = &repo.files[2];
    assert_eq!(
        std::fs::read_link(snapshot.join("weights/model.safetensors")).unwrap(),
        PathBuf::from(format!("../../../blobs/{}", lfs.sha256()))
    );
    let cfg_id = openseek_fetch::download::git_blob_id(&repo.files[0].data);
    assert_eq!(std::fs::read_link(snapshot.join("config.json")).unwrap(), PathBuf::from(format!("../../blobs/{cfg_id}")));
    assert!(repo_dir.join("trees").join(format!("{COMMIT}.json")).is_file());
    no_temporaries(&env.hub_cache());
    // Pagination: 5 files + 2 directories at 2 per page = 4 tree requests.
    let reqs = hub.requests();
    let tree_pages = reqs.iter().filter(|r| r.target.contains("/tree/")).count();
    assert_eq!(tree_pages, 4, "{reqs:#?}");
    // The token went to the hub, never to the CDN; LFS bytes came from the CDN in several ranges.
    assert!(reqs.iter().filter(|r| r.host == "hub").all(|r| r.authorization.as_deref() == Some("Bearer s3cret")));
    assert!(reqs.iter().filter(|r| r.host == "cdn").all(|r| r.authorization.is_none()));
    let cdn_ranges = reqs.iter().filter(|r| r.host == "cdn" && r.range.is_some()).count();
    assert!(cdn_ranges >= 700_000 / 65_536, "expected multi-chunk range requests, saw {cdn_ranges}");
    // Progress and per-file lines in a non-terminal stderr.
    assert!(stderr.contains("os-fetch: fetched weights/model.safetensors"), "{stderr}");
    assert!(stderr.contains("files 5/5"), "{stderr}");
    // The manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_dir.join("os-fetch").join(format!("{COMMIT}.json"))).unwrap()).unwrap();
    assert_eq!(manifest["commit"], COMMIT);
    assert_eq!(manifest["repo"], "org/tiny-model");
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), 5);
    let m = files.iter().find(|f| f["path"] == "weights/model.safetensors").unwrap();
    assert_eq!(m["sha256"], lfs.sha256());
    assert_eq!(m["size"], 700_000);
    assert_eq!(m["status"], "downloaded");

    // huggingface_hub, offline, finds every file where os-fetch put it.
    let py = Command::new(python())
        .arg(root().join("tests/python/fetch_hf_offline.py"))
        .args(["org/tiny-model", "model", "main", "weights/model.safetensors"])
        .env("HF_HOME", env.hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ENDPOINT")
        .output()
        .unwrap();
    assert!(py.status.success(), "python cross-check failed:\n{}", String::from_utf8_lossy(&py.stderr));
    let v: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let seen: HashMap<String, String> = serde_json::from_value(v["files"].clone()).unwrap();
    assert_eq!(seen.len(), repo.files.len());
    for f in &repo.files {
        assert_eq!(seen[&f.path], sha256_hex(&f.data), "{}", f.path);
    }

    // A second run finds everything in place and downloads nothing.
    hub.clear_log();
    let out = env.run(&hub.endpoint(), &["org/tiny-model"], &[("HF_TOKEN", "s3cret")]);
    ok(&out);
    assert!(hub.requests().iter().all(|r| r.method != "GET" || !r.target.contains("resolve") && r.host != "cdn"));

    // Offline: served from the cache with no request at all; missing → clear error.
    hub.clear_log();
    let out = env.run("http://127.0.0.1:9", &["org/tiny-model", "--include", "*.json"], &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(PathBuf::from(ok(&out)), snapshot);
    let out = env.run("http://127.0.0.1:9", &["org/other-model"], &[("HF_HUB_OFFLINE", "1")]);
    fails(&out, 69, &["org/other-model", "HF_HUB_OFFLINE"]);
    assert!(hub.requests().is_empty());
}

#[test]
fn include_exclude_select_like_huggingface_hub() {
    let repo = model_repo();
    let hub = MockHub::start(vec![repo.clone()], Faults::default());
    let env = Env::new();
    let out = env.run(&hub.endpoint(), &["org/tiny-model", "--include", "weights/", "--include", "*.json", "--exclude", "*extra*"], &[]);
    let snapshot = PathBuf::from(ok(&out));
    check_snapshot(&snapshot, &repo, Some(&["weights/model.safetensors", "config.json"]));
}

#[test]
fn access_errors_name_repo_and_file() {
    let repo = model_repo();
    let hub = MockHub::start(vec![repo], Faults { token: Some("right".into()), ..Default::default() });
    let env = Env::new();
    let out = env.run(&hub.endpoint(), &["org/tiny-model"], &[]);
    fails(&out, 69, &["model org/tiny-model", "access denied", "HTTP 401", "HF_TOKEN"]);
    let out = env.run(&hub.endpoint(), &["org/tiny-model"], &[("HF_TOKEN", "wrong")]);
    fails(&out, 69, &["access denied", "HTTP 403", "GatedRepo"]);
    // The token file at HF_TOKEN_PATH is used when HF_TOKEN is unset.
    let token_file = env.dir.path().join("tok");
    std::fs::write(&token_file, "right\n").unwrap();
    let out = env.run(&hub.endpoint(), &["org/tiny-model", "--include", "*.md"], &[("HF_TOKEN_PATH", token_file.to_str().unwrap())]);
    ok(&out);
    let out = env.run(&hub.endpoint(), &["org/missing"], &[("HF_TOKEN", "right")]);
    fails(&out, 69, &["org/missing", "does not exist", "HTTP 404"]);
    let out = env.run(&hub.endpoint(), &["org/tiny-model", "--revision", "v9"], &[("HF_TOKEN", "right")]);
    fails(&out, 69, &["revision v9", "revision does not exist"]);
    assert!(!env.hub_cache().join("models--org--tiny-model/blobs").exists() || all_files(&env.hub_cache().join("models--org--tiny-model/blobs")).iter().all(|f| !f.contains("incomplete")));
}

#[test]
fn mirror_origin_links_are_rewritten_to_the_endpoint() {
    let repo = model_repo();
    let hub = MockHub::start(vec![repo.clone()], Faults { page_size: 1, origin_links: true, ..Default::default() });
    let env = Env::new();
    let out = env.run(&hub.endpoint(), &["org/tiny-model", "--retries", "2"], &[]);
    check_snapshot(&PathBuf::from(ok(&out)), &repo, None);
    assert_eq!(hub.requests().iter().filter(|r| r.target.contains("/tree/")).count(), 7, "one page per entry");
}

#[test]
fn dropped_connections_throttling_truncation_and_corruption_recover() {
    let repo = dataset_repo(3_000_000);
    let faults = Faults {
        page_size: 3,
        drop_mid_body: 4.into(),
        truncate_bodies: 3.into(),
        corrupt_bodies: 1.into(),
        ..Default::default()
    };
    *faults.fail_status.lock().unwrap() = vec![429, 503, 503, 500];
    *faults.api_fail_status.lock().unwrap() = vec![429, 503];
    let hub = MockHub::start(vec![repo.clone()], faults);
    let env = Env::new();
    let local = env.dir.path().join("local");
    let out = env.run(
        &hub.endpoint(),
        &["BAAI/Mini-Pretrain", "--dataset", "--local-dir", local.to_str().unwrap(), "--chunk-size", "256k", "--connections", "4", "--max-files", "3"],
        &[],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 429") && stderr.contains("HTTP 503"), "{stderr}");
    assert!(stderr.contains("mismatch") && stderr.contains("downloading it again"), "{stderr}");
    check_snapshot(&local, &repo, None);
    no_temporaries(&local);
    let f = hub.faults();
    assert_eq!(f.drop_mid_body.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(f.truncate_bodies.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(f.fail_status.lock().unwrap().is_empty());
    // Local-dir metadata as huggingface_hub writes it: commit, etag, timestamp.
    let meta = std::fs::read_to_string(local.join(".cache/huggingface/download/code/part_7_text_document.bin.metadata")).unwrap();
    let lines: Vec<&str> = meta.lines().collect();
    assert_eq!(lines[0], repo.commit);
    assert_eq!(lines[1], repo.files[2].sha256());
    assert!(lines[2].parse::<f64>().unwrap() > 1.6e9);
    assert_eq!(std::fs::read_to_string(local.join(".cache/huggingface/.gitignore")).unwrap(), "*");
    // Up to date: a second run downloads nothing.
    hub.clear_log();
    ok(&env.run(&hub.endpoint(), &["BAAI/Mini-Pretrain", "--dataset", "--local-dir", local.to_str().unwrap()], &[]));
    assert!(hub.requests().iter().all(|r| r.method != "GET" || r.host == "hub" && !r.target.contains("/resolve/")));
}

#[test]
fn persistent_corruption_is_an_error_and_nothing_is_kept() {
    let repo = dataset_repo(400_000);
    let hub = MockHub::start(vec![repo], Faults { corrupt_bodies: 1_000_000.into(), ..Default::default() });
    let env = Env::new();
    let out = env.run(&hub.endpoint(), &["BAAI/Mini-Pretrain", "--dataset", "--include", "math/*.bin", "--chunk-size", "16k"], &[]);
    fails(&out, 65, &["dataset BAAI/Mini-Pretrain, file math/part_9_text_document.bin", "sha256 mismatch", "nothing was kept"]);
    let repo_dir = env.hub_cache().join("datasets--BAAI--Mini-Pretrain");
    let blobs = all_files(&repo_dir.join("blobs"));
    assert!(blobs.is_empty(), "nothing may be left in blobs: {blobs:?}");
    let snapshot = all_files(&repo_dir.join("snapshots"));
    assert!(snapshot.is_empty(), "no snapshot entry may exist: {snapshot:?}");
}

#[test]
fn interrupted_download_resumes_from_disk() {
    let repo = dataset_repo(2_000_000);
    let hub = MockHub::start(vec![repo.clone()], Faults::default());
    let env = Env::new();
    let local = env.dir.path().join("d");
    let args = [
        "BAAI/Mini-Pretrain", "--dataset", "--include", "Nemotron-high/*.bin", "--local-dir", local.to_str().unwrap(),
        "--chunk-size", "128k", "--connections", "2",
    ];
    // Run 1: every body is cut before its first byte; no progress, so the retries run out (exit 75).
    *hub.faults().cut_every_body_after.lock().unwrap() = Some(0);
    let out = env.run(&hub.endpoint(), &[&args[..], &["--retries", "2"]].concat(), &[]);
    fails(&out, 75, &["gave up", "run again to resume"]);
    assert!(!local.join("Nemotron-high/part_1_text_document.bin").exists());

    // Run 2: bodies cut after 100 kB and a single try per range: it stops with part of each range
    // on disk and journalled, nothing under the final name.
    *hub.faults().cut_every_body_after.lock().unwrap() = Some(100_000);
    let out = env.run(&hub.endpoint(), &[&args[..], &["--retries", "1"]].concat(), &[]);
    fails(&out, 75, &["gave up"]);
    assert!(!local.join("Nemotron-high/part_1_text_document.bin").exists());
    let dl = local.join(".cache/huggingface/download/Nemotron-high");
    let parts: Vec<String> = all_files(&dl).into_iter().filter(|f| f.ends_with(".parts")).collect();
    assert_eq!(parts.len(), 1, "{:?}", all_files(&dl));
    let journal = std::fs::read_to_string(dl.join(&parts[0])).unwrap();
    assert!(journal.lines().any(|l| l == "0 100000"), "journal records what is on disk: {journal}");

    // Run 3: healthy server; the ranges already on disk are not requested again.
    *hub.faults().cut_every_body_after.lock().unwrap() = None;
    hub.clear_log();
    let out = env.run(&hub.endpoint(), &args, &[]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("resuming Nemotron-high/part_1_text_document.bin"), "{err}");
    let starts: Vec<u64> = hub
        .requests()
        .iter()
        .filter(|r| r.host == "cdn")
        .filter_map(|r| r.range.as_ref()?.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect();
    assert!(!starts.contains(&0), "byte 0 was on disk already, yet requested again: {starts:?}");
    let got = std::fs::read(local.join("Nemotron-high/part_1_text_document.bin")).unwrap();
    assert!(got == *repo.files[0].data);
    no_temporaries(&local);
}

#[test]
fn a_prefix_left_by_huggingface_hub_is_resumed() {
    let repo = dataset_repo(1_000_000);
    let hub = MockHub::start(vec![repo.clone()], Faults::default());
    let env = Env::new();
    let f = &repo.files[0];
    let blobs = env.hub_cache().join("datasets--BAAI--Mini-Pretrain/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.incomplete", f.sha256())), &f.data[..600_000]).unwrap();
    let out = env.run(&hub.endpoint(), &["BAAI/Mini-Pretrain", "--dataset", "--include", "Nemotron-high/*.bin", "--chunk-size", "64k"], &[]);
    let snapshot = PathBuf::from(ok(&out));
    assert_eq!(std::fs::read(snapshot.join(&f.path)).unwrap(), *f.data);
    let bytes: u64 = hub
        .requests()
        .iter()
        .filter(|r| r.host == "cdn")
        .filter_map(|r| {
            let (a, b) = r.range.as_ref()?.strip_prefix("bytes=")?.split_once('-')?;
            Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
        })
        .sum();
    assert_eq!(bytes, 400_000, "only the missing tail is requested");
    no_temporaries(&env.hub_cache());
}

#[test]
fn recipe_fetches_exactly_the_named_shards() {
    let repo = dataset_repo(200_000);
    let hub = MockHub::start(vec![repo.clone()], Faults { page_size: 4, ..Default::default() });
    let env = Env::new();
    let recipe = env.dir.path().join("mix.toml");
    std::fs::write(
        &recipe,
        r#"name = "mini"
seq_len = 4096
total_samples = 100
data_root = "data/Mini"
[source]
repo = "BAAI/Mini-Pretrain"
repo_type = "dataset"
revision = "main"
[[stages]]
name = "s1"
tokens = 1e6
[[stages.datasets]]
prefix = "Nemotron-high/part_1_text_document"
weight = 0.7
[[stages.datasets]]
prefix = "code/part_7_text_document"
weight = 0.3
[[stages]]
name = "s2"
tokens = 1e6
[[stages.datasets]]
prefix = "code/part_7_text_document"
weight = 1.0
"#,
    )
    .unwrap();
    let out = env.run(&hub.endpoint(), &["--recipe", recipe.to_str().unwrap(), "--chunk-size", "32k"], &[]);
    let printed = PathBuf::from(ok(&out));
    let root = env.dir.path().join("data/Mini");
    assert_eq!(printed, root);
    let wanted = [
        "Nemotron-high/part_1_text_document.bin",
        "Nemotron-high/part_1_text_document.idx",
        "code/part_7_text_document.bin",
        "code/part_7_text_document.idx",
    ];
    check_snapshot(&root, &repo, Some(&wanted));
    let listed: Vec<String> = all_files(&root).into_iter().filter(|f| !f.starts_with(".cache")).collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(".cache/os-fetch/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["layout"], "local-dir");

    // A recipe naming a shard the repo lacks: a clear error naming it, before any download.
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(&bad, "data_root: out\nsource:\n  repo: BAAI/Mini-Pretrain\ndatasets:\n  - prefix: math/part_9_text_document\n  - prefix: web/part_404_text_document\n").unwrap();
    let out = env.run(&hub.endpoint(), &["--recipe", bad.to_str().unwrap()], &[]);
    fails(&out, 69, &["web/part_404_text_document.bin", "2 of the 4 requested files are not in the repo"]);
    assert!(!env.dir.path().join("out/math").exists());
}
