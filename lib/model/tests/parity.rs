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

/// Checkpoints with multi-token-prediction layers (release layout, per-expert and fused, one and two
/// depths): the main path still equals transformers (which skips the extra layers), every MTP
/// tensor survives our save and load bit for bit, the save holds the release's copies of the
/// shared embedding and head, and transformers reads our save with unchanged logits.
#[test]
fn mtp_layers_are_kept_and_transformers_skips_them() {
    for (variant, depths, layout) in [("plain", 1, "per-expert"), ("lora_tied", 2, "fused")] {
        let src = tempfile::tempdir().unwrap();
        let reference = make(src.path(), variant, &["--mtp", &depths.to_string(), "--layout", layout]);
        let model = check(src.path(), &reference);
        assert_eq!(model.mtp.len(), depths);
        let mtp_names: Vec<String> = model.named_tensors().into_iter().map(|(n, _)| n).filter(|n| openseek_model::shapes::is_mtp_name(&model.config, n)).collect();
        assert!(mtp_names.iter().any(|n| n == &format!("model.layers.{}.eh_proj.weight", 1 + depths)), "{mtp_names:?}");
        let out = tempfile::tempdir().unwrap();
        checkpoint::save(&model, out.path(), Kind::Float, 64 * 1024).unwrap();
        let index: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("model.safetensors.index.json")).unwrap()).unwrap();
        for copy in ["embed_tokens.weight", "shared_head.head.weight", "shared_head.norm.weight", "enorm.weight", "mlp.experts.3.up_proj.weight"] {
            assert!(index["weight_map"][format!("model.layers.2.{copy}")].is_string(), "{copy} not saved");
        }
        let back = checkpoint::load(out.path(), Kind::Float, Device::Cpu).unwrap();
        let (a, b) = (model.named_tensors(), back.named_tensors());
        assert_eq!(a.len(), b.len());
        for ((n, x), (m, y)) in a.iter().zip(&b) {
            assert_eq!(n, m);
            assert!(x.equal(y), "{n} changed in the round trip");
        }
        let got_file = out.path().join("hf_logits.json");
        python(&["logits", out.path().to_str().unwrap(), src.path().join("reference.json").to_str().unwrap(), got_file.to_str().unwrap()]);
        let got: Value = serde_json::from_str(&std::fs::read_to_string(&got_file).unwrap()).unwrap();
        let diff = max_abs(&tensor_of(&got), &tensor_of(&reference));
        assert!(diff <= 1e-5, "{variant}: transformers' logits on our saved MTP checkpoint differ by {diff}");
    }
}

/// An MTP config that does not fit the checkpoint's MTP tensors stops with names and shapes
/// (exit 65); a config that declares MTP layers a checkpoint lacks entirely gets them initialised.
#[test]
fn mtp_configs_that_do_not_fit_are_refused_and_absent_ones_initialised() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "plain", &["--mtp", "1"]);
    let path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let with = |depths: Option<i64>| {
        let mut cfg: Value = serde_json::from_str(&original).unwrap();
        match depths {
            Some(d) => cfg["num_nextn_predict_layers"] = d.into(),
            None => drop(cfg.as_object_mut().unwrap().remove("num_nextn_predict_layers")),
        }
        std::fs::write(&path, cfg.to_string()).unwrap();
        checkpoint::load(dir.path(), Kind::Float, Device::Cpu)
    };
    // Undeclared (omitted, as transformers' older configs do, or 0): the extra layer is unexpected.
    for depths in [None, Some(0)] {
        let err = with(depths).err().expect("must fail");
        assert_eq!(err.code, openseek_common::ExitCode::DataErr);
        for needle in ["unexpected:", "model.layers.2.eh_proj.weight [64, 128]", "model.layers.2.shared_head.head.weight [256, 64]", "num_nextn_predict_layers (0)"] {
            assert!(err.message.contains(needle), "error lacks {needle:?}:\n{}", err.message);
        }
    }
    // Two declared, one stored: the second depth's tensors are missing, with their shapes.
    let err = with(Some(2)).err().expect("must fail");
    for needle in ["missing:", "model.layers.3.enorm.weight [64]", "model.layers.3.mlp.gate.weight [8, 64]", "num_nextn_predict_layers (2)"] {
        assert!(err.message.contains(needle), "error lacks {needle:?}:\n{}", err.message);
    }
    // A checkpoint without any MTP tensor, its config declaring one depth: initialised.
    let plain = tempfile::tempdir().unwrap();
    make(plain.path(), "plain", &[]);
    let path = plain.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["num_nextn_predict_layers"] = 1.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let model = checkpoint::load(plain.path(), Kind::Float, Device::Cpu).unwrap();
    assert_eq!(model.mtp.len(), 1);
    let again = checkpoint::load(plain.path(), Kind::Float, Device::Cpu).unwrap();
    assert!(model.mtp[0].eh_proj.weight.equal(&again.mtp[0].eh_proj.weight), "the initialisation is deterministic");
    assert!(model.mtp[0].eh_proj.weight.std(true).double_value(&[]) > 0.01);
}
