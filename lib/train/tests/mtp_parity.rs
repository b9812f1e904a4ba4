//! Multi-token prediction against megatron-core on CPU in fp32: `tests/python/megatron_mtp.py`
//! trains a small DeepSeek-V3-style GPTModel with a 2-layer `MultiTokenPredictionBlock` for 3 SGD
//! steps, with and without `--calculate-per-token-loss` (os-train's `loss_averaging` per_token and
//! per_micro_batch), and records each step's batch, the decoder output it handed the MTP block,
//! the MTP loss and every gradient the MTP loss gives. Its checkpoint (saved before training, in the legacy
//! torch layout and as torch_dist) is converted with os-megatron2hf's library; here the same
//! steps run through `openseek_train::mtp` from the recorded hidden states, with the same updates:
//! loss and gradients (hidden states, shared embedding and head, every MTP parameter) must agree
//! to 1e-5 relative at every step.

use openseek_model::safetensors::{read_tensor, SafetensorsFile};
use openseek_model::tch::{self, Device, Kind, Tensor};
use openseek_model::{checkpoint, DeepseekV3};
use openseek_train::config::{HeadLoss, LossAveraging};
use openseek_train::mtp::{denominators, mtp_forward_backward, MtpBatch, MtpSettings};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn make_reference(out: &Path) {
    let py = std::env::var_os("OPENSEEK_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(py.is_file(), "the project venv's Python is missing at {}; run `make venv`", py.display());
    let o = Command::new(&py).arg(root().join("tests/python/megatron_mtp.py")).arg("make").arg(out).output().unwrap();
    assert!(o.status.success(), "megatron_mtp.py failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// os-megatron2hf's conversion of one of the reference's Megatron checkpoints.
fn convert(src: &Path, out: &Path) -> DeepseekV3 {
    let opts = openseek_megatron::Options {
        load: src.to_path_buf(),
        iteration: None,
        out: out.to_path_buf(),
        vocab_size: Some(256),
        max_shard_bytes: 1 << 20,
        skip_unknown: false,
        tokenizer: None,
        bos_token_id: None,
        eos_token_id: None,
    };
    let provenance = openseek_common::provenance::Provenance::capture("mtp_parity", "test");
    openseek_megatron::convert(&opts, provenance, |_, _, _| Ok(())).unwrap_or_else(|e| panic!("{}: {}", src.display(), e.message));
    checkpoint::load(out, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{}", e.message))
}

fn rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    (got - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn mtp_loss_and_gradients_equal_megatron_core_over_several_steps() {
    let dir = tempfile::tempdir().unwrap();
    make_reference(dir.path());
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
    let model = convert(&dir.path().join("torch"), &dir.path().join("hf_torch"));
    // Both Megatron formats convert to the same model, MTP layers included.
    let from_dist = convert(&dir.path().join("dist"), &dir.path().join("hf_dist"));
    let (a, b) = (model.named_tensors(), from_dist.named_tensors());
    assert_eq!(a.len(), b.len());
    for ((n, x), (m, y)) in a.iter().zip(&b) {
        assert!(n == m && x.equal(y), "{n}: the legacy and torch_dist conversions differ");
    }
    assert_eq!(model.mtp.len(), reference["depths"].as_u64().unwrap() as usize);
    let (coeff, lr) = (reference["coeff"].as_f64().unwrap(), reference["lr"].as_f64().unwrap());
    for (mode, averaging) in [("per_token", LossAveraging::PerToken), ("per_micro_batch", LossAveraging::PerMicroBatch)] {
        // Each mode trains from the converted weights.
        let model = checkpoint::load(&dir.path().join("hf_torch"), Kind::Float, Device::Cpu).unwrap();
        let steps = reference["modes"][mode].as_array().unwrap();
        check_steps(&model, dir.path(), mode, averaging, steps, coeff, lr);
    }
}

/// Run the reference's steps of one loss-averaging mode through `openseek_train::mtp` and compare.
fn check_steps(model: &DeepseekV3, dir: &Path, mode: &str, averaging: LossAveraging, steps: &[Value], coeff: f64, lr: f64) {
    let params: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| !n.ends_with("e_score_correction_bias"))
        .map(|(n, t)| (n, t.set_requires_grad(true)))
        .collect();
    for (s, step) in steps.iter().enumerate() {
        let file = SafetensorsFile::open(&dir.join(format!("{mode}_step{}.safetensors", s + 1))).unwrap();
        let get = |name: &str| read_tensor(&file, name, Kind::Float).unwrap();
        let ids = get("ids").to_kind(Kind::Int64);
        let labels = get("labels").to_kind(Kind::Int64).view([-1]);
        let loss_mask = get("loss_mask").view([-1]);
        let hidden = get("hidden").set_requires_grad(true);
        let tokens = step["loss_tokens"].as_f64().unwrap();
        let (rows, seq) = (ids.size()[0] as usize, ids.size()[1] as usize);
        let mask: Vec<f32> = Vec::try_from(&loss_mask).unwrap();
        assert_eq!(mask.len(), rows * seq);
        let batch = MtpBatch { ids: &ids, labels: &labels, loss_mask: &loss_mask, per_document: None };
        let settings = MtpSettings {
            coeff,
            denominators: denominators(averaging, tokens, &mask, seq, model.mtp.len(), 1),
            micro_batches: 1,
            chunk_tokens: 7,
            head_loss: HeadLoss::Fused,
            fast: Default::default(),
            aux: Default::default(),
        };
        let out = mtp_forward_backward(model, &hidden, &batch, &settings).unwrap();
        let numbers = |key: &str| -> Vec<f64> { step[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        let (sums, counts) = (numbers("sums"), numbers("counts"));
        // The mean over depths of each depth's sum over its denominator.
        let per_depth: Vec<f64> = match averaging {
            LossAveraging::PerToken => sums.iter().map(|s| s / tokens).collect(),
            LossAveraging::PerMicroBatch => sums.iter().zip(&counts).map(|(s, c)| s / c.max(1.0)).collect(),
        };
        let want = per_depth.iter().sum::<f64>() / per_depth.len() as f64;
        let got = out.loss.double_value(&[]);
        eprintln!("{mode} step {}: MTP loss {got:.7} (megatron-core {want:.7})", s + 1);
        assert!(((got - want) / want).abs() <= 1e-5, "{mode} step {}: MTP loss {got} vs megatron-core's {want}", s + 1);
        let mut compared = vec![("hidden".to_string(), rel_diff(&hidden.grad(), &get("grad.hidden")))];
        for (name, p) in &params {
            let g = p.grad();
            let key = format!("grad.{name}");
            match (g.defined(), file.tensors.contains_key(&key)) {
                (true, true) => compared.push((name.clone(), rel_diff(&g, &get(&key)))),
                (false, false) => {}
                (ours, theirs) => panic!("{mode} step {}: {name}: gradient here {ours}, in megatron-core {theirs}", s + 1),
            }
        }
        let worst = compared.iter().cloned().fold(("".to_string(), 0.0), |w, c| if c.1 > w.1 { c } else { w });
        eprintln!("{mode} step {}: {} gradients, largest relative difference {:.2e} ({})", s + 1, compared.len(), worst.1, worst.0);
        // The hidden states, embedding and head, and per depth its 4 own tensors and its MoE layer's 13.
        assert_eq!(compared.len(), 3 + 17 * model.mtp.len(), "gradients compared");
        assert!(worst.1 <= 1e-5, "{mode} step {}: {} differs from megatron-core by {:e} relative", s + 1, worst.0, worst.1);
        // The same SGD step as the reference, then fresh gradients.
        tch::no_grad(|| {
            for (_, p) in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = p.shallow_clone().g_sub_(&(&g * lr));
                    let _ = g.zero_();
                }
            }
        });
    }
}
