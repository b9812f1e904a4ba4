//! Weights for a model trained from scratch, as transformers' DeepSeek-V3 initialises them:
//! matrices and embeddings normal(0, std), norms one, the router's correction bias zero. Drawn on
//! the CPU from the seed, so a seed gives the same model on any device.

use openseek_model::shapes::expected_shapes;
use openseek_model::weights::Weights;
use openseek_model::Config;
use tch::{Device, Kind, Tensor};

pub fn init_weights(cfg: &Config, std: f64, seed: u64, kind: Kind, device: Device) -> Weights {
    tch::manual_seed(seed as i64);
    let mut w = Weights::new();
    for (name, shape) in expected_shapes(cfg) {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else if name.ends_with("e_score_correction_bias") || name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else {
            Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * std
        };
        let k = if name.ends_with("e_score_correction_bias") { Kind::Float } else { kind };
        w.insert(name, t.to_kind(k).to_device(device));
    }
    w
}

/// A tiny OpenSeek-architecture config for unit tests: hidden 32, 2 heads, 4 routed experts (2
/// chosen) and one shared, the first layer dense.
#[cfg(test)]
pub(crate) fn tiny_config(vocab: i64, layers: i64, tied: bool) -> Config {
    Config::from_json(serde_json::json!({
        "model_type": "deepseek_v3", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
        "moe_intermediate_size": 16, "num_hidden_layers": layers, "first_k_dense_replace": 1,
        "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_shared_experts": 1, "n_group": 1, "topk_group": 1, "rope_theta": 10000.0,
        "tie_word_embeddings": tied
    }))
    .unwrap()
}

/// A model of `cfg` on copies of `w`, every tensor trainable but the routers' correction biases
/// (as os-train marks them), for unit tests.
#[cfg(test)]
pub(crate) fn trainable_model(cfg: &Config, w: &Weights) -> openseek_model::DeepseekV3 {
    let model = openseek_model::DeepseekV3::from_weights(cfg.clone(), w.iter().map(|(n, t)| (n.clone(), t.copy())).collect());
    for (name, t) in model.named_tensors() {
        if !name.ends_with("e_score_correction_bias") {
            let _ = t.set_requires_grad(true);
        }
    }
    model
}
