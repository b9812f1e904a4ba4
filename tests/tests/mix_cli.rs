//! os-mix from the command line: what users see when a shard is missing or corrupt, and
//! `os-mix inspect` printing exactly the samples the store holds.

use std::path::Path;

use openseek_common::AtomicOutputs;
use openseek_mix::store::SampleStore;
use openseek_shards::indexed::{DType, IndexedDatasetWriter};
use openseek_tests::run_tool;

/// A shard of `docs` documents with distinct, recognisable token ids.
fn write_shard(prefix: &Path, docs: u32, base: u32) {
    let mut outputs = AtomicOutputs::new();
    let mut writer = IndexedDatasetWriter::create(prefix, DType::U16, &mut outputs).unwrap();
    for d in 0..docs {
        let len = 5 + (d * 7) % 23;
        let tokens: Vec<u32> = (0..len).map(|t| base + (d * 31 + t) % 1000).collect();
        writer.add_document(&tokens).unwrap();
    }
    writer.finish(&mut outputs).unwrap();
    outputs.commit().unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn missing_and_corrupt_shards_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_shard(&a, 200, 0);
    let weights = format!("1 {} 1 {}", a.display(), dir.path().join("nope").display());
    let out = run_tool("os-mix", &["--weights", &weights, "--seq-len", "32", "--samples", "10", "--output", dir.path().join("m1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.idx"), "{}", stderr(&out));

    let b = dir.path().join("b");
    write_shard(&b, 200, 2000);
    let bin = dir.path().join("b.bin");
    let len = std::fs::metadata(&bin).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&bin).unwrap().set_len(len - 10).unwrap();
    let weights = format!("1 {} 1 {}", a.display(), b.display());
    let out = run_tool("os-mix", &["--weights", &weights, "--seq-len", "32", "--samples", "10", "--dry-run"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(stderr(&out).contains("b.bin") && stderr(&out).contains("shorter"), "{}", stderr(&out));
    assert!(!dir.path().join("m1").exists(), "a failed mix must leave no store");
}

#[test]
fn inspect_prints_the_stored_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_shard(&a, 300, 0);
    write_shard(&b, 300, 2000);
    let store_dir = dir.path().join("mix");
    let weights = format!("0.6 {} 0.4 {}", a.display(), b.display());
    let out = run_tool("os-mix", &["--weights", &weights, "--seq-len", "32", "--samples", "50", "--output", store_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run_tool("os-mix", &["inspect", store_dir.to_str().unwrap(), "--range", "10:20", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = SampleStore::open(&store_dir).unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    for (k, line) in lines.iter().enumerate() {
        let i = 10 + k as u64;
        let (tokens, _) = store.sample(i);
        assert_eq!(line["sample"], i);
        let printed: Vec<u32> = line["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(printed, tokens, "sample {i}");
        assert_eq!(printed.len(), 33);
        // dataset a holds ids below 2000, b from 2000: the printed dataset must match the tokens
        let dataset = line["dataset"].as_u64().unwrap();
        assert!(printed.iter().all(|&t| (t >= 2000) == (dataset == 1)), "sample {i} claims dataset {dataset}");
    }
    let out = run_tool("os-mix", &["inspect", store_dir.to_str().unwrap(), "--range", "45:60"]);
    assert_eq!(out.status.code(), Some(64), "a range past the end is a usage error: {}", stderr(&out));
}
