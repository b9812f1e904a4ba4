//! Megatron indexed datasets cross-checked with megatron-core itself (tests/python/megatron_indexed.py):
//! shards we write are read by megatron's `IndexedDataset` token for token; shards megatron's
//! `IndexedDatasetBuilder` writes are read by us, and our merge reproduces its `add_index` output
//! byte for byte. Then the `os-shards` CLI end to end.

use std::path::{Path, PathBuf};

use openseek_common::AtomicOutputs;
use openseek_shards::indexed::{self, DType, IndexedDataset, IndexedDatasetWriter, Tokens};
use openseek_tests::{run_python, run_tool};
use serde_json::{json, Value};

/// Deterministic documents (each a list of sequences) for `dtype`: several multi-sequence
/// documents, an empty sequence, an empty document, and the dtype's largest id.
fn documents(dtype: DType, seed: u64) -> Vec<Vec<Vec<u32>>> {
    let top = dtype.max_token().min(u32::MAX as u64) as u32;
    let hi = top.min(60_000) as u64 + 1;
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |m: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let mut docs: Vec<Vec<Vec<u32>>> = (0..7)
        .map(|_| (0..1 + next(3)).map(|_| (0..1 + next(12)).map(|_| next(hi) as u32).collect()).collect())
        .collect();
    docs[0].insert(0, vec![top, 0, top]);
    docs[2].push(Vec::new());
    docs.insert(4, Vec::new());
    docs
}

fn write(prefix: &Path, dtype: DType, docs: &[Vec<Vec<u32>>], modes: bool) {
    let mut out = AtomicOutputs::new();
    let mut w = if modes {
        IndexedDatasetWriter::create_multimodal(prefix, dtype, &mut out).unwrap()
    } else {
        IndexedDatasetWriter::create(prefix, dtype, &mut out).unwrap()
    };
    let mut k = 0i8;
    for doc in docs {
        for seq in doc {
            w.add_sequence_with_mode(seq, k % 3).unwrap();
            k += 1;
        }
        w.end_document();
    }
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
}

/// Tokens as megatron's `.tolist()` gives them: ints, or floats for the float dtypes.
fn tokens_json(dtype: DType, tokens: &[u32]) -> Value {
    if dtype.is_float() {
        json!(tokens.iter().map(|&t| t as f64).collect::<Vec<_>>())
    } else {
        json!(tokens)
    }
}

fn our_tokens_json(t: &Tokens<'_>) -> Value {
    match t {
        Tokens::F32(s) => json!(s.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        Tokens::F64(s) => json!(s),
        _ => json!(t.to_vec_i64()),
    }
}

#[test]
fn megatron_reads_our_shards_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (k, dtype) in DType::ALL.into_iter().enumerate() {
        let prefix = dir.path().join(format!("ours_{}", dtype.name()));
        let docs = documents(dtype, k as u64);
        write(&prefix, dtype, &docs, false);
        cases.push((prefix, dtype, docs, false));
    }
    let prefix = dir.path().join("ours_multimodal");
    let docs = documents(DType::I32, 99);
    write(&prefix, DType::I32, &docs, true);
    cases.push((prefix, DType::I32, docs, true));

    let args: Vec<String> = cases
        .iter()
        .map(|(p, _, _, mm)| format!("{}{}", if *mm { "multimodal:" } else { "" }, p.display()))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let read: Value = serde_json::from_str(&run_python("megatron_indexed.py", &[&["read"], &args[..]].concat())).unwrap();
    let read = read.as_array().unwrap();
    assert_eq!(read.len(), cases.len());

    for ((prefix, dtype, docs, mm), got) in cases.iter().zip(read) {
        let what = prefix.display().to_string();
        assert_eq!(got["dtype"], dtype.name(), "{what}");
        let seqs: Vec<&Vec<u32>> = docs.iter().flatten().collect();
        let expect_seqs: Vec<Value> = seqs.iter().map(|s| tokens_json(*dtype, s)).collect();
        assert_eq!(got["sequences"], json!(expect_seqs), "{what}: megatron reads other tokens than we wrote");
        assert_eq!(got["sliced"], json!(expect_seqs), "{what}: megatron's slice read differs");
        let mut di = vec![0u64];
        for doc in docs {
            di.push(di.last().unwrap() + doc.len() as u64);
        }
        assert_eq!(got["document_indices"], json!(di), "{what}");
        assert_eq!(got["document_count"], json!(docs.len()), "{what}");
        // Our reader agrees with megatron on every field.
        let ds = IndexedDataset::open(prefix).unwrap();
        assert_eq!(got["sequence_lengths"], json!(ds.sequence_lengths()), "{what}");
        assert_eq!(got["sequence_pointers"], json!(ds.sequence_pointers()), "{what}");
        assert_eq!(got["document_indices"], json!(ds.document_indices()), "{what}");
        for g in got["gets"].as_array().unwrap() {
            let (i, off, len) = (g["sequence"].as_u64().unwrap() as usize, g["offset"].as_u64().unwrap() as usize, g["length"].as_u64().unwrap() as usize);
            assert_eq!(g["tokens"], our_tokens_json(&ds.sequence_slice(i, off, len)), "{what}: get({i}, {off}, {len})");
        }
        if *mm {
            let modes: Vec<i8> = (0..ds.num_sequences()).map(|i| ds.sequence_mode(i).unwrap()).collect();
            assert_eq!(got["modes"], json!(modes), "{what}");
            assert_eq!(modes, (0..seqs.len()).map(|k| (k % 3) as i8).collect::<Vec<_>>());
        } else {
            assert_eq!(got["modes"], Value::Null);
        }
    }
}

fn as_docs(v: &Value) -> Vec<Vec<Vec<u32>>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn assert_same_files(ours: &Path, theirs: &Path) {
    for (a, b) in [(indexed::bin_path(ours), indexed::bin_path(theirs)), (indexed::idx_path(ours), indexed::idx_path(theirs))] {
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(x == y, "{} ({} bytes) differs from megatron's {} ({} bytes)", a.display(), x.len(), b.display(), y.len());
    }
}

#[test]
fn we_read_megatron_shards_and_merge_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let written: Value = serde_json::from_str(&run_python("megatron_indexed.py", &["write", dir.path().to_str().unwrap()])).unwrap();

    let datasets = written["datasets"].as_array().unwrap();
    assert!(datasets.len() >= 12);
    for d in datasets {
        let prefix = PathBuf::from(d["prefix"].as_str().unwrap());
        let ds = IndexedDataset::open(&prefix).unwrap_or_else(|e| panic!("{e}"));
        let docs = as_docs(&d["documents"]);
        assert_eq!(ds.dtype().name(), d["dtype"], "{}", prefix.display());
        assert_eq!(ds.num_documents(), docs.len(), "{}", prefix.display());
        let mut all_modes = Vec::new();
        for (k, doc) in docs.iter().enumerate() {
            let seqs: Vec<Vec<u32>> = ds.document_sequences(k).map(|s| ds.sequence(s).to_vec_u32()).collect();
            assert_eq!(&seqs, doc, "{} document {k}", prefix.display());
            all_modes.extend(ds.document_sequences(k).map(|s| ds.sequence_mode(s)));
        }
        match d["modes"].as_array() {
            Some(modes) => {
                assert!(ds.has_sequence_modes());
                let want: Vec<Option<i8>> = modes.iter().map(|m| Some(m.as_i64().unwrap() as i8)).collect();
                assert_eq!(all_modes, want, "{}", prefix.display());
            }
            None => assert!(!ds.has_sequence_modes(), "{}", prefix.display()),
        }
        indexed::check(&prefix).unwrap();
    }

    for m in written["merges"].as_array().unwrap() {
        let theirs = PathBuf::from(m["output"].as_str().unwrap());
        let inputs: Vec<PathBuf> = m["inputs"].as_array().unwrap().iter().map(|p| PathBuf::from(p.as_str().unwrap())).collect();
        let before = as_docs(&m["before"]);
        let ours = dir.path().join(format!("ours_{}", theirs.file_name().unwrap().to_string_lossy()));
        let mut out = AtomicOutputs::new();
        if before.is_empty() {
            indexed::merge(&inputs, &ours, &mut out).unwrap();
        } else {
            // Documents of our own, then add_index: the writer's add_dataset.
            let dtype = IndexedDataset::open(&inputs[0]).unwrap().dtype();
            let mut w = IndexedDatasetWriter::create(&ours, dtype, &mut out).unwrap();
            for doc in &before {
                for seq in doc {
                    w.add_sequence(seq).unwrap();
                }
                w.end_document();
            }
            for input in &inputs {
                w.add_dataset(&IndexedDataset::open(input).unwrap()).unwrap();
            }
            w.finish(&mut out).unwrap();
        }
        out.commit().unwrap();
        assert_same_files(&ours, &theirs);
    }

    // The CLI's merge writes the same bytes (plus its manifest).
    let merged = &written["merges"][0];
    let theirs = PathBuf::from(merged["output"].as_str().unwrap());
    let cli_out = dir.path().join("cli_merged");
    let mut args = vec!["merge".to_string(), "--output".into(), cli_out.display().to_string()];
    args.extend(merged["inputs"].as_array().unwrap().iter().map(|p| format!("{}.bin", p.as_str().unwrap())));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool("os-shards", &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_files(&cli_out, &theirs);
}

#[test]
fn os_shards_cli_info_check_merge_dump() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let docs_a = documents(DType::U16, 1);
    let docs_b = documents(DType::U16, 2);
    write(&a, DType::U16, &docs_a, false);
    write(&b, DType::U16, &docs_b, false);
    let s = |p: &Path| p.display().to_string();

    // info, with and without extensions, as JSON.
    let out = run_tool("os-shards", &["info", "--json", &format!("{}.bin", s(&a)), &format!("{}.idx", s(&b))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seqs = |d: &[Vec<Vec<u32>>]| d.iter().map(|x| x.len()).sum::<usize>();
    let toks = |d: &[Vec<Vec<u32>>]| d.iter().flatten().map(|x| x.len()).sum::<usize>();
    assert_eq!(info["shards"][0]["sequences"], json!(seqs(&docs_a)));
    assert_eq!(info["shards"][1]["documents"], json!(docs_b.len()));
    assert_eq!(info["total"]["tokens"], json!(toks(&docs_a) + toks(&docs_b)));
    assert_eq!(info["shards"][0]["dtype"], "uint16");
    let out = run_tool("os-shards", &["info", &s(&a), &s(&b)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().last().unwrap().starts_with("total (2 shards)"), "{text}");

    // check: a healthy pair passes; a truncated copy exits 65 naming the .bin.
    let out = run_tool("os-shards", &["check", &s(&a), &s(&b)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let bad = dir.path().join("bad");
    std::fs::copy(indexed::idx_path(&a), indexed::idx_path(&bad)).unwrap();
    let bin = std::fs::read(indexed::bin_path(&a)).unwrap();
    std::fs::write(indexed::bin_path(&bad), &bin[..bin.len() - 2]).unwrap();
    let out = run_tool("os-shards", &["check", &s(&a), &s(&bad)]);
    assert_eq!(out.status.code(), Some(65));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{}: OK", s(&a))), "{stdout}");
    assert!(stdout.contains(&format!("{}: CORRUPT: {}", s(&bad), s(&indexed::bin_path(&bad)))) && stdout.contains("truncated"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 shard(s) failed"));
    // A missing shard is 66; a vocabulary too small for the ids is 65.
    assert_eq!(run_tool("os-shards", &["check", &s(&dir.path().join("nope"))]).status.code(), Some(66));
    let out = run_tool("os-shards", &["check", "--vocab-size", "1000", &s(&a)]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stdout).contains("holds token id 65535"));

    // merge: atomic outputs, readable, with a manifest; refuses to overwrite without --force.
    let m = dir.path().join("m");
    let out = run_tool("os-shards", &["merge", "--output", &s(&m), &s(&a), &format!("{}.idx", s(&b))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = IndexedDataset::open(&m).unwrap();
    let all: Vec<Vec<u32>> = (0..ds.num_sequences()).map(|i| ds.sequence(i).to_vec_u32()).collect();
    let expect: Vec<Vec<u32>> = docs_a.iter().chain(&docs_b).flatten().cloned().collect();
    assert_eq!(all, expect);
    assert_eq!(ds.num_documents(), docs_a.len() + docs_b.len());
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(manifest["provenance"]["tool"], "os-shards");
    assert!(manifest["provenance"]["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 2);
    assert_eq!(manifest["inputs"][1]["sequences"], json!(seqs(&docs_b)));
    assert_eq!(manifest["output"]["tokens"], json!(toks(&docs_a) + toks(&docs_b)));
    let out = run_tool("os-shards", &["merge", "--output", &s(&m), &s(&a)]);
    assert_eq!(out.status.code(), Some(73), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_tool("os-shards", &["merge", "--force", "--output", &s(&m), &s(&a)]);
    assert!(out.status.success());
    assert_eq!(IndexedDataset::open(&m).unwrap().num_documents(), docs_a.len());
    // A failed merge (mixed dtypes) leaves nothing behind.
    let c = dir.path().join("c");
    write(&c, DType::I32, &documents(DType::I32, 3), false);
    let out = run_tool("os-shards", &["merge", "--output", &s(&dir.path().join("mixed")), &s(&a), &s(&c)]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&s(&c)));
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("mixed")));

    // dump: JSON lines for a document, one sequence, or the first N.
    let out = run_tool("os-shards", &["dump", &s(&a), "--document", "0"]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), docs_a[0].len());
    assert_eq!(lines[0]["tokens"], json!(docs_a[0][0]));
    assert_eq!(lines[0]["document"], 0);
    let out = run_tool("os-shards", &["dump", &s(&a), "--limit", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let last = seqs(&docs_a) - 1;
    let out = run_tool("os-shards", &["dump", &s(&a), "--sequence", &last.to_string()]);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["tokens"], json!(docs_a.last().unwrap().last().unwrap()));
    assert_eq!(line["document"], json!(docs_a.len() - 1));
    assert_eq!(run_tool("os-shards", &["dump", &s(&a), "--sequence", "100000"]).status.code(), Some(64));
}
