//! os-eval score end to end against transformers: small random DeepSeek-V3 checkpoints written by
//! `tests/python/hf_deepseek.py`, scored by os-eval (tokens and text input), log-probs compared
//! with transformers' per sequence and per token.

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
