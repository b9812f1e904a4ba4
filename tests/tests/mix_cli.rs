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

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn existing_stores_are_refused_and_replaced_whole_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_shard(&a, 200, 0);
    write_shard(&b, 200, 2000);
    let out = dir.path().join("mix");
    let o = out.to_str().unwrap();
    let two = format!("1 {} 1 {}", a.display(), b.display());
    let ok = |r: std::process::Output| assert!(r.status.success(), "{}", stderr(&r));
    ok(run_tool("os-mix", &["--weights", &two, "--seq-len", "32", "--samples", "50", "-o", o]));
    assert!(files(&out).contains(&"d001_shuffle_index.npy".to_string()));
    // Without --force: exit 73 naming the store, nothing touched.
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let again = run_tool("os-mix", &["--weights", &format!("1 {}", a.display()), "--seq-len", "32", "--samples", "50", "-o", o]);
    assert_eq!(again.status.code(), Some(73), "{}", stderr(&again));
    assert!(stderr(&again).contains("cannot create output") && stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);
    // With --force a one-dataset blend replaces the two-dataset one: no d001_* is left behind.
    ok(run_tool("os-mix", &["--weights", &format!("1 {}", a.display()), "--seq-len", "32", "--samples", "50", "-o", o, "--force"]));
    assert!(!files(&out).iter().any(|f| f.starts_with("d001_")), "stale files: {:?}", files(&out));
    assert_eq!(SampleStore::open(&out).unwrap().len(), 50);
    // os-pack into that store: refused, then a packed store replaces it whole.
    let pack = |extra: &[&str]| {
        let mut args = vec!["--input", a.to_str().unwrap(), "--seq-len", "32", "-o", o];
        args.extend_from_slice(extra);
        run_tool("os-pack", &args)
    };
    assert_eq!(pack(&["--strategy", "bfd"]).status.code(), Some(73));
    ok(pack(&["--strategy", "bfd", "--force"]));
    assert_eq!(files(&out), ["manifest.json", "pieces.npy", "sample_offsets.npy"]);
}

#[test]
fn sample_counts_are_bounded_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_shard(&a, 200, 0);
    let ap = a.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // --samples 0 asks for nothing: a usage error, not an empty store.
    for tool in ["os-pack", "os-mix"] {
        let r = if tool == "os-pack" {
            run_tool(tool, &["--input", ap, "--seq-len", "32", "--samples", "0", "-o", &out("zero")])
        } else {
            run_tool(tool, &["--weights", &format!("1 {ap}"), "--seq-len", "32", "--samples", "0", "-o", &out("zero")])
        };
        assert_eq!(r.status.code(), Some(64), "{tool}: {}", stderr(&r));
    }
    // A huge count stops with what it needs before allocating (no abort, no store).
    for tool in ["os-pack", "os-mix"] {
        let r = if tool == "os-pack" {
            run_tool(tool, &["--input", ap, "--seq-len", "32", "--samples", "100000000000", "-o", &out("huge")])
        } else {
            run_tool(tool, &["--weights", &format!("1 {ap}"), "--seq-len", "32", "--samples", "100000000000", "-o", &out("huge")])
        };
        assert_eq!(r.status.code(), Some(64), "{tool}: {}", stderr(&r));
        assert!(stderr(&r).contains("of memory but") && stderr(&r).contains("is available"), "{tool}: {}", stderr(&r));
        assert!(!dir.path().join("huge/manifest.json").exists());
    }
    // Megatron builds whole epochs: the message says why the store holds more samples than asked.
    let r = run_tool("os-pack", &["--input", ap, "--seq-len", "32", "--samples", "10", "-o", &out("ten")]);
    assert!(r.status.success(), "{}", stderr(&r));
    let said = String::from_utf8_lossy(&r.stdout);
    assert!(said.contains("(10 asked for: Megatron's GPTDataset builds whole epochs") && said.contains("a reader takes the first 10"), "{said}");
}

#[test]
fn a_dry_run_names_every_missing_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_shard(&a, 50, 0);
    let weights = format!("1 {} 1 {} 1 {}", dir.path().join("gone1").display(), a.display(), dir.path().join("gone2").display());
    let r = run_tool("os-mix", &["--weights", &weights, "--seq-len", "32", "--samples", "10", "--dry-run"]);
    assert_eq!(r.status.code(), Some(66), "{}", stderr(&r));
    let err = stderr(&r);
    assert!(err.contains("2 of the mix's datasets cannot be read") && err.contains("gone1") && err.contains("gone2"), "{err}");
}
