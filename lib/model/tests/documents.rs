//! Attention within documents on CUDA (on the GPU machine: `documents -- --ignored`): a small
//! random model in bf16 whose attention runs the variable-length flash kernels, against the same
//! model on the masked SDPA path (the `varlen_attention` fast path off; logits and every
//! parameter's gradient), and against each document run alone.
//! The CPU path (the mask) is checked exactly by os-train's step tests.

use openseek_model::shapes::expected_shapes;
use openseek_model::tch::{self, Device, Kind, Tensor};
use openseek_model::{document_attention, Config, DeepseekV3, FastPaths};
use std::collections::BTreeMap;

/// Dense layers only (no routing, whose top-k choices bf16 rounding could flip), MLA with q/k head
/// dim 48 and v 32 (so the flash kernels pad the values), interleaved rope.
fn config() -> Config {
    Config::from_json(serde_json::json!({
        "model_type": "deepseek_v3", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
        "moe_intermediate_size": 16, "num_hidden_layers": 2, "first_k_dense_replace": 2,
        "num_attention_heads": 4, "q_lora_rank": null, "kv_lora_rank": 32, "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_shared_experts": 1, "n_group": 1, "topk_group": 1, "rope_theta": 10000.0,
        "tie_word_embeddings": false
    }))
    .unwrap()
}

/// The same random bf16 weights on every call (norms 1), as leaves that require grad.
fn model(device: Device) -> DeepseekV3 {
    let cfg = config();
    let mut weights = BTreeMap::new();
    for (i, (name, shape)) in expected_shapes(&cfg).into_iter().enumerate() {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else {
            let n: i64 = shape.iter().product();
            ((Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + i as f64).sin() * 0.2).view(shape.as_slice())
        };
        weights.insert(name, t.to_kind(Kind::BFloat16).to_device(device).set_requires_grad(true));
    }
    DeepseekV3::from_weights(cfg, weights)
}

/// Logits [B, T, V] (fp32) of `ids` with attention within documents, and the parameters' gradients
/// under sum(logits * probe).
fn run(ids: &Tensor, starts: &[Vec<u32>], varlen: bool, probe: &Tensor) -> (Tensor, Vec<(String, Tensor)>) {
    let dev = ids.device();
    let mut model = model(dev);
    model.set_fast_paths(FastPaths { varlen_attention: varlen, ..FastPaths::default() });
    let documents = document_attention(starts, ids.size()[1], dev);
    let (mut x, cos, sin) = model.embed(ids, Some(&documents.positions));
    for layer in &model.layers {
        x = layer.forward_train(&x, &model.rope, &cos, &sin, Some(&documents), &Default::default()).0;
    }
    let logits = model.head(&model.norm.forward(&x)).to_kind(Kind::Float);
    (&logits * probe).sum(Kind::Float).backward();
    let grads = model.named_tensors().into_iter().map(|(n, t)| (n, t.grad().to_kind(Kind::Float))).collect();
    (logits.detach(), grads)
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

#[test]
#[ignore]
fn varlen_attention_equals_the_masked_path_and_each_document_alone() {
    assert!(tch::Cuda::is_available(), "this test needs a CUDA device");
    let dev = Device::Cuda(0);
    let (rows, seq) = (2i64, 96i64);
    let starts = vec![vec![0u32, 20, 45, 46], vec![0, 7]];
    let ids = ((Tensor::arange(rows * seq, (Kind::Int64, Device::Cpu)) * 37 + 5).remainder(93) + 3).view([rows, seq]).to_device(dev);
    let probe = (Tensor::arange(rows * seq * 96, (Kind::Float, Device::Cpu)) * 0.7).sin().view([rows, seq, 96]).to_device(dev);
    let (varlen, varlen_grads) = run(&ids, &starts, true, &probe);
    let (masked, masked_grads) = run(&ids, &starts, false, &probe);
    let worst_logit = relative(&varlen, &masked);
    eprintln!("per-document logits, varlen vs masked SDPA (bf16): max |diff| / max = {worst_logit:.2e}");
    assert!(worst_logit <= 2e-2, "logits differ by {worst_logit:.2e}");
    let mut worst_grad = 0f64;
    for ((name, a), (_, b)) in varlen_grads.iter().zip(&masked_grads) {
        assert!(b.abs().max().double_value(&[]) > 0.0, "{name}: no gradient");
        let r = relative(a, b);
        worst_grad = worst_grad.max(r);
        assert!(r <= 3e-2, "{name}: gradient differs by {r:.2e} of its largest value");
    }
    eprintln!("per-document gradients, varlen vs masked SDPA (bf16): worst max |diff| / max = {worst_grad:.2e}");
    // Each document alone, plain causal attention from position 0.
    let model = model(dev);
    for (r, row) in starts.iter().enumerate() {
        let ends: Vec<i64> = row.iter().skip(1).map(|&s| s as i64).chain([seq]).collect();
        for (&start, end) in row.iter().zip(ends) {
            let (start, len) = (start as i64, end - start as i64);
            let alone = tch::no_grad(|| model.forward(&ids.get(r as i64).narrow(0, start, len).unsqueeze(0))).to_kind(Kind::Float);
            let part = varlen.get(r as i64).narrow(0, start, len).unsqueeze(0);
            let d = relative(&part, &alone);
            assert!(d <= 2e-2, "row {r}, document at {start} ({len} tokens): {d:.2e}");
        }
    }
}
