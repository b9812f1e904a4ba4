//! os-eval score end to end against transformers: small random DeepSeek-V3 checkpoints written by
//! `tests/python/hf_deepseek.py`, scored by os-eval (tokens and text input), log-probs compared
//! with transformers' per sequence and per token; Megatron shards scored per document equal the
//! JSONL path, resume after a kill without duplicates or gaps, bad shards fail cleanly, and
//! `os-shards select` cuts the scored shards into quality buckets.

use openseek_shards::indexed::{DType, IndexedDatasetWriter};
use openseek_tests::{run_python, run_tool};
use serde_json::Value;
use std::path::Path;

fn make(dir: &Path, variant: &str, extra: &[&str]) -> Value {
    let mut args = vec!["make", dir.to_str().unwrap(), "--variant", variant];
    args.extend_from_slice(extra);
    run_python("hf_deepseek.py", &args);
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn score(dir: &Path, input_flag: &str, input: &str, extra: &[&str]) -> Vec<Value> {
    let out = dir.join(format!("scores-{input_flag}-{}.jsonl", extra.len()));
    let input = dir.join(input);
    let mut args = vec!["score", "--model", dir.to_str().unwrap(), input_flag, input.to_str().unwrap(), "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run_tool("os-eval", &args);
    assert!(o.status.success(), "os-eval score failed: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Same number of lines, same lengths, every log-prob and sum within `tol`; returns the largest difference.
fn compare(got: &[Value], want: &Value, tol: f64) -> f64 {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "one output line per input line");
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (gl, wl) = (g["token_logprobs"].as_array().unwrap(), w["token_logprobs"].as_array().unwrap());
        assert_eq!(gl.len(), wl.len(), "line {i}: token count");
        for (a, b) in gl.iter().zip(wl) {
            worst = worst.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
        }
        worst = worst.max((g["sum_logprob"].as_f64().unwrap() - w["sum_logprob"].as_f64().unwrap()).abs());
    }
    assert!(worst <= tol, "log-probs differ from transformers by {worst}");
    worst
}

#[test]
fn score_tokens_matches_transformers() {
    for (variant, extra) in [("plain", &[][..]), ("groups", &["--layout", "fused", "--shards", "2"][..]), ("lora_tied", &[][..])] {
        let dir = tempfile::tempdir().unwrap();
        let reference = make(dir.path(), variant, extra);
        // Small batches too: several sequences padded together, and one at a time.
        for batch in ["16384", "40"] {
            let got = score(dir.path(), "--tokens", "tokens.jsonl", &["--batch-tokens", batch, "--device", "cpu"]);
            let worst = compare(&got, &reference["scores"], 1e-4);
            eprintln!("{variant} batch {batch}: max |logprob - transformers| = {worst:.2e}");
        }
        // The one-token sequence scores nothing.
        let got = score(dir.path(), "--tokens", "tokens.jsonl", &[]);
        assert_eq!(got[0]["token_logprobs"].as_array().unwrap().len(), 0);
        assert_eq!(got[0]["sum_logprob"].as_f64().unwrap(), 0.0);
    }
}

#[test]
fn score_text_uses_the_model_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let reference = make(dir.path(), "plain", &[]);
    compare(&score(dir.path(), "--text", "texts.jsonl", &[]), &reference["text_scores"], 1e-4);
    compare(&score(dir.path(), "--text", "texts.jsonl", &["--bos"]), &reference["text_bos_scores"], 1e-4);
}

#[test]
fn score_refuses_bad_input_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "plain", &[]);
    let d = dir.path();
    std::fs::write(d.join("bad.jsonl"), "{\"tokens\": [1, 2]}\n{\"tokens\": [3, 999]}\n").unwrap();
    let out = d.join("out.jsonl");
    let o = run_tool("os-eval", &["score", "--model", d.to_str().unwrap(), "--tokens", d.join("bad.jsonl").to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:2") && err.contains("999"), "{err}");
    assert!(!out.exists());
    // A model directory without weights.
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(d.join("config.json"), empty.path().join("config.json")).unwrap();
    let o = run_tool("os-eval", &["score", "--model", empty.path().to_str().unwrap(), "--tokens", d.join("tokens.jsonl").to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(66), "{}", String::from_utf8_lossy(&o.stderr));
    // Neither --tokens nor --text is a usage error (64, as every tool's bad command line).
    let o = run_tool("os-eval", &["score", "--model", d.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "usage exit");
    assert_eq!(run_tool("os-eval", &["run", "--tasks", "x"]).status.code(), Some(64));
}

/// Write `seqs` as one Megatron shard (one document each) at `prefix`.
fn write_shard(prefix: &Path, seqs: &[Vec<u32>]) {
    let mut out = openseek_common::AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(prefix, DType::U16, &mut out).unwrap();
    for s in seqs {
        w.add_document(s).unwrap();
    }
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
}

/// The `tokens` of each JSON line of `text` (the checkpoint's tokens.jsonl, `os-shards dump`).
fn token_lines(text: &str) -> Vec<Vec<u32>> {
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()).collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn shard_scoring_equals_jsonl_scoring_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make(d, "plain", &[]);
    let jsonl = score(d, "--tokens", "tokens.jsonl", &["--device", "cpu"]);
    let seqs = token_lines(&std::fs::read_to_string(d.join("tokens.jsonl")).unwrap());
    // Two shards: the sequences split between them.
    write_shard(&d.join("a"), &seqs[..4]);
    write_shard(&d.join("b"), &seqs[4..]);
    let shard_args = |out: &Path, extra: &[&str]| -> std::process::Output {
        let mut args = vec!["score", "--model", d.to_str().unwrap(), "--shards", "a", "b.bin", "--output", out.to_str().unwrap(), "--device", "cpu", "--per-token"];
        args.extend_from_slice(extra);
        let mut cmd = std::process::Command::new(openseek_tests::tool("os-eval"));
        cmd.current_dir(d).args(&args).output().unwrap()
    };
    let full = d.join("shards.jsonl");
    let o = shard_args(&full, &["--batch-tokens", "40", "--chunk-tokens", "20"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = lines(&full);
    assert_eq!(got.len(), seqs.len());
    let mut worst = 0f64;
    for (k, (g, w)) in got.iter().zip(&jsonl).enumerate() {
        assert!(g["shard"].as_str().unwrap().ends_with(if k < 4 { "a" } else { "b" }), "{g}");
        assert_eq!(g["sequence"], if k < 4 { k } else { k - 4 });
        assert_eq!(g["tokens"], seqs[k].len());
        assert_eq!(g["scored"], seqs[k].len().saturating_sub(1));
        let (gl, wl) = (g["token_logprobs"].as_array().unwrap(), w["token_logprobs"].as_array().unwrap());
        assert_eq!(gl.len(), wl.len());
        for (a, b) in gl.iter().zip(wl) {
            worst = worst.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
        }
        worst = worst.max((g["sum_logprob"].as_f64().unwrap() - w["sum_logprob"].as_f64().unwrap()).abs());
    }
    assert!(worst <= 1e-5, "shard scores differ from JSONL scoring by {worst}");
    assert!(got[0]["mean_logprob"].is_null() && got[3]["mean_logprob"].is_number());
    assert!(!d.join("shards.jsonl.partial").exists());
    // An existing output is refused without --force.
    assert_eq!(shard_args(&full, &[]).status.code(), Some(73));
    // Killed after three records and half of the fourth: the rerun continues there.
    let resumed = d.join("resumed.jsonl");
    let text = std::fs::read_to_string(&full).unwrap();
    let cut: usize = text.lines().take(3).map(|l| l.len() + 1).sum::<usize>() + 10;
    std::fs::write(d.join("resumed.jsonl.partial"), &text[..cut]).unwrap();
    let o = shard_args(&resumed, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("after 3 of 6 documents"));
    let again = lines(&resumed);
    assert_eq!(again.len(), got.len());
    for (a, b) in again.iter().zip(&got) {
        assert_eq!((&a["shard"], &a["sequence"]), (&b["shard"], &b["sequence"]));
        assert!((a["sum_logprob"].as_f64().unwrap() - b["sum_logprob"].as_f64().unwrap()).abs() < 1e-5);
    }
    // Two workers: contiguous halves, together every document once.
    let (w0, w1) = (d.join("w0.jsonl"), d.join("w1.jsonl"));
    assert!(shard_args(&w0, &["--shard-index", "0", "--num-shards", "2"]).status.success());
    assert!(shard_args(&w1, &["--shard-index", "1", "--num-shards", "2"]).status.success());
    let both: Vec<(Value, Value)> = lines(&w0).into_iter().chain(lines(&w1)).map(|r| (r["shard"].clone(), r["sequence"].clone())).collect();
    assert_eq!(both, got.iter().map(|r| (r["shard"].clone(), r["sequence"].clone())).collect::<Vec<_>>());
    // Windows: a 40-token document in windows of 16 every 8 tokens still scores each token once.
    let win = d.join("win.jsonl");
    assert!(shard_args(&win, &["--window", "16", "--stride", "8"]).status.success());
    let w = lines(&win);
    assert_eq!(w[4]["scored"], 39);
    // The first window's tokens see what they see in the whole document.
    for (a, b) in w[4]["token_logprobs"].as_array().unwrap()[..15].iter().zip(got[4]["token_logprobs"].as_array().unwrap()) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5);
    }
}

#[test]
fn shard_scoring_refuses_bad_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make(d, "plain", &[]);
    let out = d.join("out.jsonl");
    let run = |shard: &str, extra: &[&str]| {
        let shard = d.join(shard);
        let mut args = vec!["score", "--model", d.to_str().unwrap(), "--shards", shard.to_str().unwrap(), "--output", out.to_str().unwrap(), "--device", "cpu"];
        args.extend_from_slice(extra);
        run_tool("os-eval", &args)
    };
    // Token ids past the model's vocabulary (256).
    write_shard(&d.join("big"), &[vec![5, 6, 7], vec![8, 300, 9]]);
    let o = run("big", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("big.bin") && err.contains("300") && err.contains("vocabulary"), "{err}");
    // A truncated .bin.
    write_shard(&d.join("cut"), &[vec![5, 6, 7, 8], vec![9, 10]]);
    let bin = d.join("cut.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 2]).unwrap();
    let o = run("cut", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("cut."), "{err}");
    // A window past the model's context (128).
    write_shard(&d.join("ok"), &[vec![5, 6, 7]]);
    let o = run("ok", &["--window", "4096"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("4096") && err.contains("config.json"), "{err}");
    for p in ["out.jsonl", "out.jsonl.partial"] {
        assert!(!d.join(p).exists(), "{p} was written");
    }
}

/// `os-shards select` on what `os-eval score --shards` wrote: the better half of the documents by
/// mean log-prob in `-high`, the rest in `-low`, each in its shards' order, the cut in OUTPUT.json;
/// an existing output is refused, a bad score line is an error naming it, and nothing is written.
#[test]
fn scored_shards_cut_into_quality_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make(d, "plain", &[]);
    let seqs = token_lines(&std::fs::read_to_string(d.join("tokens.jsonl")).unwrap());
    write_shard(&d.join("a"), &seqs[..4]);
    write_shard(&d.join("b"), &seqs[4..]);
    let in_dir = |tool: &str, args: &[&str]| std::process::Command::new(openseek_tests::tool(tool)).current_dir(d).args(args).output().unwrap();
    let o = in_dir("os-eval", &["score", "--model", ".", "--shards", "a", "b", "--output", "scores.jsonl", "--device", "cpu"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = lines(&d.join("scores.jsonl"));
    // What the cut must be: documents with a score, best mean log-prob first.
    let mut ranked: Vec<(f64, usize)> = records.iter().enumerate().filter_map(|(k, r)| r["mean_logprob"].as_f64().map(|m| (m, k))).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let half = ranked.len().div_ceil(2);
    let mut high: Vec<usize> = ranked[..half].iter().map(|r| r.1).collect();
    let mut low: Vec<usize> = ranked[half..].iter().map(|r| r.1).collect();
    high.sort();
    low.sort();
    let select = ["select", "--scores", "scores.jsonl", "--buckets", "high=0.5,low=0.5", "--output", "sel/q", "a", "b.idx"];
    std::fs::create_dir(d.join("sel")).unwrap();
    let o = in_dir("os-shards", &select);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (name, want) in [("high", &high), ("low", &low)] {
        let o = in_dir("os-shards", &["dump", &format!("sel/q-{name}")]);
        let got = token_lines(&String::from_utf8_lossy(&o.stdout));
        let want: Vec<Vec<u32>> = want.iter().map(|&k| seqs[k].clone()).collect();
        assert_eq!(got, want, "bucket {name}");
    }
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(d.join("sel/q.json")).unwrap()).unwrap();
    assert_eq!(manifest["report"]["ranked_documents"], ranked.len());
    assert_eq!(manifest["report"]["unscorable_documents"], seqs.len() - ranked.len());
    assert_eq!(manifest["config"]["options"]["weight"], "documents");
    assert!(manifest["provenance"].is_object());
    // Existing outputs: refused without --force.
    assert_eq!(in_dir("os-shards", &select).status.code(), Some(73));
    // A line that is not a score record: exit 65 naming the file and line; nothing written.
    std::fs::write(d.join("bad.jsonl"), format!("{}\n{{\"shard\": \"a\"}}\n", serde_json::to_string(&records[0]).unwrap())).unwrap();
    let o = in_dir("os-shards", &["select", "--scores", "bad.jsonl", "--output", "sel/bad", "a", "b"]);
    assert_eq!(o.status.code(), Some(65), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.jsonl:2"), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<_> = std::fs::read_dir(d.join("sel")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.contains("bad")).collect();
    assert!(left.is_empty(), "{left:?}");
}
