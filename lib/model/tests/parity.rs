//! Parity with transformers' DeepseekV3ForCausalLM on CPU in fp32: small random checkpoints
//! written by `tests/python/hf_deepseek.py` (project venv), loaded here; logits and loss compared,
//! and checkpoints saved here loaded back by transformers.

use openseek_model::tch::{Device, Kind, Tensor};
use openseek_model::{checkpoint, Config};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python(args: &[&str]) -> String {
    let py = std::env::var_os("OPENSEEK_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(py.is_file(), "the project venv's Python is missing at {}; run `make venv`", py.display());
    let out = Command::new(&py).arg(root().join("tests/python/hf_deepseek.py")).args(args).output().unwrap();
    assert!(out.status.success(), "hf_deepseek.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn make(dir: &Path, variant: &str, extra: &[&str]) -> Value {
    let mut args = vec!["make", dir.to_str().unwrap(), "--variant", variant];
    args.extend_from_slice(extra);
    python(&args);
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn tensor_of(v: &Value) -> Tensor {
    let flat: Vec<f32> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let shape: Vec<i64> = v["shape"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    Tensor::from_slice(&flat).view(shape.as_slice())
}

fn ids_of(v: &Value) -> Tensor {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v["ids"].clone()).unwrap();
    let t = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, t])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Load, run the reference batch, compare logits and loss; returns the model.
fn check(dir: &Path, reference: &Value) -> openseek_model::DeepseekV3 {
    let model = checkpoint::load(dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{}", e.message));
    let ids = ids_of(reference);
    let logits = openseek_model::tch::no_grad(|| model.forward(&ids));
    let want = tensor_of(reference);
    let diff = max_abs(&logits, &want);
    let spread = want.abs().max().double_value(&[]);
    eprintln!("{}: max |logits - transformers| = {diff:.3e} (logits up to {spread:.2})", dir.display());
    assert!(diff <= 1e-4, "{}: logits differ from transformers by {diff}", dir.display());
    let v = logits.size()[2];
    let loss = logits.narrow(1, 0, logits.size()[1] - 1).reshape([-1, v]).cross_entropy_for_logits(&ids.narrow(1, 1, ids.size()[1] - 1).reshape([-1]));
    let loss_diff = (loss.double_value(&[]) - reference["loss"].as_f64().unwrap()).abs();
    assert!(loss_diff <= 1e-5, "loss differs by {loss_diff}");
    model
}

#[test]
fn every_variant_matches_transformers() {
    for variant in ["plain", "lora_tied", "groups", "yarn"] {
        let dir = tempfile::tempdir().unwrap();
        let reference = make(dir.path(), variant, &[]);
        check(dir.path(), &reference);
    }
}

#[test]
fn fused_and_sharded_layouts_load() {
    let dir = tempfile::tempdir().unwrap();
    let reference = make(dir.path(), "groups", &["--layout", "fused", "--shards", "3"]);
    assert!(dir.path().join("model.safetensors.index.json").is_file());
    check(dir.path(), &reference);
    let dir = tempfile::tempdir().unwrap();
    let reference = make(dir.path(), "lora_tied", &["--layout", "per-expert", "--shards", "2"]);
    check(dir.path(), &reference);
}

#[test]
fn saved_checkpoints_load_in_transformers_with_equal_logits() {
    let src = tempfile::tempdir().unwrap();
    for (variant, kind) in [("plain", Kind::Float), ("lora_tied", Kind::Float)] {
        let reference = make(src.path(), variant, &["--layout", "fused"]);
        let model = check(src.path(), &reference);
        let out = tempfile::tempdir().unwrap();
        // Small shards so the index path is exercised.
        checkpoint::save(&model, out.path(), kind, 64 * 1024).unwrap();
        assert!(out.path().join("model-00001-of-00003.safetensors").is_file() || std::fs::read_dir(out.path()).unwrap().count() > 4);
        let index: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("model.safetensors.index.json")).unwrap()).unwrap();
        assert!(index["weight_map"]["model.layers.1.mlp.experts.7.down_proj.weight"].is_string(), "per-expert layout expected");
        // Our loader reads it back bit for bit.
        let back = checkpoint::load(out.path(), Kind::Float, Device::Cpu).unwrap();
        for ((n, a), (_, b)) in model.named_tensors().iter().zip(back.named_tensors().iter()) {
            assert!(a.equal(b), "{n} changed in the round trip");
        }
        // transformers reads it and computes the same logits.
        let ids_file = src.path().join("reference.json");
        let got_file = out.path().join("hf_logits.json");
        python(&["logits", out.path().to_str().unwrap(), ids_file.to_str().unwrap(), got_file.to_str().unwrap()]);
        let got: Value = serde_json::from_str(&std::fs::read_to_string(&got_file).unwrap()).unwrap();
        let diff = max_abs(&tensor_of(&got), &tensor_of(&reference));
        eprintln!("{variant}: transformers on our saved checkpoint: max |diff| = {diff:.3e}");
        assert!(diff <= 1e-5, "transformers' logits on our saved checkpoint differ by {diff}");
    }
}

#[test]
fn a_tied_config_with_a_different_stored_head_uses_it_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let reference = make(dir.path(), "plain", &[]);
    let path = dir.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = true.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let got_file = dir.path().join("hf_logits.json");
    python(&["logits", dir.path().to_str().unwrap(), dir.path().join("reference.json").to_str().unwrap(), got_file.to_str().unwrap()]);
    let hf: Value = serde_json::from_str(&std::fs::read_to_string(&got_file).unwrap()).unwrap();
    let model = checkpoint::load(dir.path(), Kind::Float, Device::Cpu).unwrap();
    assert!(model.lm_head.is_some());
    let logits = openseek_model::tch::no_grad(|| model.forward(&ids_of(&reference)));
    let diff = max_abs(&logits, &tensor_of(&hf));
    assert!(diff <= 1e-4, "differs from transformers by {diff}");
}

#[test]
fn a_checkpoint_that_does_not_fit_gets_one_error_listing_everything() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "plain", &[]);
    let path = dir.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["intermediate_size"] = 100.into();
    cfg["q_lora_rank"] = 16.into();
    cfg["n_routed_experts"] = 10.into();
    cfg["n_group"] = 2.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    Config::load(dir.path()).unwrap();
    let err = checkpoint::load(dir.path(), Kind::Float, Device::Cpu).err().expect("must fail").message;
    for needle in [
        "missing:",
        "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.1.mlp.experts.9.gate_proj.weight",
        "unexpected:",
        "model.layers.1.self_attn.q_proj.weight",
        "mis-shaped:",
        "model.layers.0.mlp.gate_proj.weight is [96, 64], expected [100, 64]",
        "model.layers.1.mlp.gate.weight is [8, 64], expected [10, 64]",
    ] {
        assert!(err.contains(needle), "error lacks {needle:?}:\n{err}");
    }
}
