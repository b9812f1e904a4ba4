//! os-pack's three strategies: megatron checked against megatron-core's GPTDataset sample by
//! sample; bfd and truncate checked for whole documents, capacity and the padding they report,
//! fed from a token document stream on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use openseek_mix::store::SampleStore;
use openseek_shards::docstream::DocStreamWriter;
use openseek_tests::{run_python, run_tool, tool};
use serde_json::{json, Value};

#[test]
fn megatron_strategy_is_megatron_gpt_dataset() {
    let work = tempfile::tempdir().unwrap();
    let config = json!({
        "shards": [[400, 1, 90]], "weights": null, "seq_len": 48, "samples": 1500, "seed": 77,
        "split": "1", "vocab": 70000, "eod": 69999, "data_seed": 5,
    });
    let meg: Value = serde_json::from_str(&run_python("megatron_gpt_blend.py", &[work.path().to_str().unwrap(), &config.to_string()])).unwrap();
    let prefix = meg["prefixes"][0].as_str().unwrap();
    let out_dir = work.path().join("ours");
    let out = run_tool(
        "os-pack",
        &["--input", prefix, "--strategy", "megatron", "--seq-len", "48", "--samples", "1500", "--seed", "77", "--output", out_dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "os-pack failed: {}", String::from_utf8_lossy(&out.stderr));
    for name in ["d000_document_index.npy", "d000_sample_index.npy", "d000_shuffle_index.npy"] {
        let want = std::fs::read(work.path().join("megatron").join(name)).unwrap();
        let got = std::fs::read(out_dir.join(name)).unwrap();
        assert!(want == got, "{name} differs from megatron-core's");
    }
    let store = SampleStore::open(&out_dir).unwrap();
    assert_eq!(store.len(), meg["num_samples"].as_u64().unwrap());
    assert!(store.manifest().datasets[0].epochs > 1, "the case must span several epochs");
    let samples = openseek_mix::array::NpyMap::open(&work.path().join("megatron/samples.npy")).unwrap();
    for i in 0..store.len() {
        let (tokens, src) = store.sample(i);
        let want: Vec<u32> = (0..49).map(|k| samples.get(i as usize * 49 + k) as u32).collect();
        assert_eq!(tokens, want, "sample {i}");
        let docs: Vec<u64> = meg["documents"][i as usize].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(src.pieces.iter().map(|p| p.sequence).collect::<Vec<_>>(), docs, "sample {i} documents");
    }
}

fn documents() -> Vec<Vec<u32>> {
    let mut x = 12345u64;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    (0..300)
        .map(|_| {
            let len = 1 + next() % if next() % 10 == 0 { 300 } else { 60 };
            let mut d: Vec<u32> = (0..len - 1).map(|_| next() % 50_000).collect();
            d.push(99_999);
            d
        })
        .collect()
}

fn pack_stream(strategy: &str, dir: &std::path::Path, docs: &[Vec<u32>]) -> Value {
    let mut stream = DocStreamWriter::new(Vec::new(), 100_000).unwrap();
    for d in docs {
        stream.write_document(d).unwrap();
    }
    let bytes = stream.finish().unwrap();
    let mut child = Command::new(tool("os-pack"))
        .args(["--input", "-", "--strategy", strategy, "--seq-len", "64", "--pad-token", "0", "--eod-token", "99999", "--json", "--output"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "os-pack {strategy} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bfd_packs_whole_documents_from_a_stream_and_reports_padding() {
    let docs = documents();
    let work = tempfile::tempdir().unwrap();
    let manifest = pack_stream("bfd", work.path(), &docs);
    let store = SampleStore::open(work.path()).unwrap();
    let mut seen: Vec<Vec<(u64, Vec<u32>)>> = vec![Vec::new(); docs.len()];
    let mut padding = 0u64;
    for i in 0..store.len() {
        let (tokens, src) = store.sample(i);
        assert_eq!(tokens.len(), 65);
        let mut at = 0usize;
        for p in &src.pieces {
            seen[p.sequence as usize].push((p.offset, tokens[at..at + p.len as usize].to_vec()));
            at += p.len as usize;
        }
        assert!(tokens[at..].iter().all(|&t| t == 0), "padding is the pad token");
        padding += src.padding;
    }
    for (d, mut parts) in seen.into_iter().enumerate() {
        parts.sort();
        let joined: Vec<u32> = parts.into_iter().flat_map(|p| p.1).collect();
        assert_eq!(joined, docs[d], "document {d} must appear once, whole, in order");
    }
    let total: u64 = docs.iter().map(|d| d.len() as u64).sum();
    assert_eq!(padding, store.len() * 65 - total);
    let p = &manifest["packing"];
    assert_eq!(p["padding_tokens"].as_u64().unwrap(), padding);
    assert!((p["padding_fraction"].as_f64().unwrap() - padding as f64 / (store.len() * 65) as f64).abs() < 1e-12);
    // Best fit decreasing stays close to the bound of perfect packing.
    assert!(store.len() <= total.div_ceil(65) * 105 / 100 + 1, "{} samples for {total} tokens", store.len());
    // Piece boundaries reach the reader as document starts.
    use openseek_mix::reader::{Boundaries, Cursor, DataLoader, ReaderOptions};
    let opts = ReaderOptions { reset_attention_mask: true, boundaries: Boundaries::Pieces, ..Default::default() };
    let mut l = DataLoader::new(&store, opts, 0, 1, 1, Cursor::default()).unwrap();
    let b = l.next_batch().unwrap().unwrap();
    let src = store.source(0);
    assert_eq!(b.document_starts[0].len(), src.pieces.len() + usize::from(src.padding > 0 && src.padding < 65) - usize::from(src.pieces.is_empty()));
}

#[test]
fn truncate_takes_one_document_per_sample() {
    let docs = documents();
    let work = tempfile::tempdir().unwrap();
    let manifest = pack_stream("truncate", work.path(), &docs);
    let store = SampleStore::open(work.path()).unwrap();
    assert_eq!(store.len(), docs.len() as u64);
    let mut cut = 0;
    for (i, d) in docs.iter().enumerate() {
        let (tokens, _) = store.sample(i as u64);
        let take = d.len().min(65);
        assert_eq!(&tokens[..take], &d[..take]);
        assert!(tokens[take..].iter().all(|&t| t == 0));
        cut += d.len() - take;
    }
    assert_eq!(manifest["packing"]["truncated_tokens"].as_u64().unwrap(), cut as u64);
}

#[test]
fn trl_strategies_equal_trls_pack_dataset() {
    use openseek_common::AtomicOutputs;
    use openseek_mix::reader::{self, Boundaries, ReaderOptions};
    use openseek_shards::indexed::{DType, IndexedDatasetWriter};
    // 230 documents around the row length of 48: shorter, equal, longer (truncated or split), two
    // empty, many ties; packed in map batches of 40 over 3 processes (shards of 77, 77 and 76 rows).
    let mut x = 4242u64;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let docs: Vec<Vec<u32>> = (0..230)
        .map(|i| {
            let long = next(4) == 0;
            let len = if i == 17 || i == 150 { 0 } else if i % 9 == 0 { 48 } else { 1 + next(if long { 150 } else { 30 }) };
            (0..len).map(|_| 1 + next(50_000) as u32).collect()
        })
        .collect();
    let work = tempfile::tempdir().unwrap();
    let prefix = work.path().join("docs");
    let mut outputs = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&prefix, DType::U16, &mut outputs).unwrap();
    for d in &docs {
        w.add_document(d).unwrap();
    }
    w.finish(&mut outputs).unwrap();
    outputs.commit().unwrap();
    let docs_json = work.path().join("docs.json");
    std::fs::write(&docs_json, serde_json::to_string(&docs).unwrap()).unwrap();
    let trl: Value = serde_json::from_str(&run_python("trl_pack.py", &[docs_json.to_str().unwrap(), "48", "40", "3", "bfd", "bfd_split"])).unwrap();
    for (ours, theirs) in [("trl-bfd", "bfd"), ("trl-bfd-split", "bfd_split")] {
        let dir = work.path().join(ours);
        let out = run_tool(
            "os-pack",
            &["--input", prefix.to_str().unwrap(), "--strategy", ours, "--seq-len", "47", "--trl-batch-size", "40", "--trl-num-proc", "3", "--pad-token", "0", "--json", "-o", dir.to_str().unwrap()],
        );
        assert!(out.status.success(), "{ours}: {}", String::from_utf8_lossy(&out.stderr));
        let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = trl[theirs].as_array().unwrap();
        let store = SampleStore::open(&dir).unwrap();
        assert_eq!(store.len(), rows.len() as u64, "{ours}: rows");
        let opts = ReaderOptions { reset_position_ids: true, boundaries: Boundaries::Pieces, pad_token: Some(0), ..Default::default() };
        let mut kept = 0u64;
        for (i, row) in rows.iter().enumerate() {
            let (tokens, src) = store.sample(i as u64);
            let ids: Vec<u32> = row["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let lengths: Vec<u64> = row["seq_lengths"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(src.pieces.iter().map(|p| p.len).collect::<Vec<_>>(), lengths, "{ours}: row {i} pieces");
            assert_eq!(&tokens[..ids.len()], &ids[..], "{ours}: row {i} tokens");
            assert!(tokens[ids.len()..].iter().all(|&t| t == 0), "{ours}: row {i} padding");
            // The position ids training sees: TRL's, over the row's first seq_len tokens.
            let positions: Vec<u32> = row["position_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let seen = reader::row(&store, i as u64, &opts).unwrap().position_ids;
            let n = positions.len().min(47);
            assert_eq!(&seen[..n], &positions[..n], "{ours}: row {i} position ids");
            kept += ids.len() as u64;
        }
        let total: u64 = docs.iter().map(|d| d.len() as u64).sum();
        let dropped: u64 = docs.iter().map(|d| (d.len() as u64).saturating_sub(48)).sum();
        let p = &manifest["packing"];
        assert_eq!((p["batch_size"].as_u64(), p["num_proc"].as_u64()), (Some(40), Some(3)));
        if ours == "trl-bfd" {
            assert!(dropped > 0 && kept == total - dropped, "TRL's bfd drops what does not fit a row");
            assert_eq!(p["truncated_tokens"].as_u64().unwrap(), dropped);
        } else {
            assert_eq!(kept, total, "bfd_split keeps every token");
        }
    }
}

/// recipes/seed004-trl-pack.sh over a data root holding every prefix of seed 004's ratio mix (tiny
/// shards here): one TRL-bfd store per dataset, rows of 4096 tokens, batches of 1000 over 4 processes.
#[test]
fn the_seed004_recipe_packs_every_dataset_with_trls_bfd() {
    use openseek_common::AtomicOutputs;
    use openseek_shards::indexed::{DType, IndexedDatasetWriter};
    let recipe: Value = serde_json::from_str(&std::fs::read_to_string(openseek_tests::root().join("recipes/seed004-ratio-mix.json")).unwrap()).unwrap();
    let prefixes: Vec<&str> = recipe["datasets"].as_array().unwrap().iter().map(|d| d["prefix"].as_str().unwrap()).collect();
    assert_eq!(prefixes.len(), 32);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    for (k, prefix) in prefixes.iter().enumerate() {
        let path = root.join(prefix);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut outputs = AtomicOutputs::new();
        let mut w = IndexedDatasetWriter::create(&path, DType::I32, &mut outputs).unwrap();
        for d in 0..6u32 {
            w.add_document(&(0..(100 + 1000 * d + k as u32)).map(|t| t % 151_000).collect::<Vec<u32>>()).unwrap();
        }
        w.finish(&mut outputs).unwrap();
        outputs.commit().unwrap();
    }
    let out = work.path().join("packed");
    let run = Command::new("bash")
        .arg(openseek_tests::root().join("recipes/seed004-trl-pack.sh"))
        .args([root.to_str().unwrap(), out.to_str().unwrap()])
        .env("OPENSEEK_BIN_DIR", tool("os-pack").parent().unwrap())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for prefix in prefixes {
        let manifest: Value = serde_json::from_str(&std::fs::read_to_string(out.join(prefix).join("manifest.json")).unwrap()).unwrap();
        let p = &manifest["packing"];
        assert_eq!((p["strategy"].as_str(), p["batch_size"].as_u64(), p["num_proc"].as_u64()), (Some("trl-bfd"), Some(1000), Some(4)), "{prefix}");
        assert_eq!(manifest["seq_len"], 4095, "rows of 4096 tokens");
        assert!(p["truncated_tokens"].as_u64().unwrap() > 0, "{prefix}: the 5,100-token document is cut to one row");
    }
}
