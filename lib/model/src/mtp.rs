//! DeepSeek-V3's multi-token prediction (MTP) modules, as megatron-core's
//! `MultiTokenPredictionLayer` computes them. Depth k (1..=`num_nextn_predict_layers`) sees, at
//! position i, the previous depth's hidden state h_i (for k = 1 the main model's final hidden
//! states, after its final norm, as megatron-core and transformers' `MtpModel` pass them) and the
//! embedding of token i + k:
//!
//!   h'_i = eh_proj([enorm(emb(t_{i+k})); hnorm(h_i)])    (embedding first, as megatron-core)
//!   h^k_i = shared_head.norm(decoder_layer(h'_i))
//!
//! and the shared LM head turns h^k_i into logits for token i + k + 1; h^k feeds depth k + 1.
//! The embedding and the head are the main model's. The decoder layer is a DeepSeek-V3 layer with
//! the index `num_hidden_layers + k - 1` (MoE as the config says for that index, as DeepSeek-V3's
//! own code builds it). Weights use the layout of DeepSeek-V3's release:
//! `model.layers.{num_hidden_layers + k - 1}.{enorm, hnorm, eh_proj, shared_head.norm}.weight` and
//! the decoder layer's tensors under the same prefix (`crate::shapes`; see `crate::checkpoint` for the stored copies
//! of the shared embedding and head).

use crate::config::Config;
use crate::documents::DocumentSegments;
use crate::fast_paths::FastPaths;
use crate::layers::{Linear, RmsNorm};
use crate::layer::Layer;
use crate::shapes::{expected_shapes, is_mtp_name, mtp_prefix};
use crate::weights::{take, Weights};
use crate::moe::{AuxCoefficients, RoutingStats};
use crate::rope::Rope;
use openseek_common::rng::SplitMix;
use tch::{Device, Kind, Tensor};

/// One MTP depth.
pub struct MtpLayer {
    pub enorm: RmsNorm,
    pub hnorm: RmsNorm,
    /// [hidden, 2 * hidden], no bias; its input is [enorm(embedding); hnorm(hidden)].
    pub eh_proj: Linear,
    pub layer: Layer,
    /// `shared_head.norm`: the norm before the shared head (megatron-core's `final_layernorm`).
    pub norm: RmsNorm,
}

impl MtpLayer {
    pub(crate) fn take(w: &mut Weights, k: usize, cfg: &Config) -> MtpLayer {
        let p = mtp_prefix(cfg, k);
        let eps = cfg.rms_norm_eps;
        MtpLayer {
            enorm: RmsNorm::take(w, &format!("{p}.enorm"), eps),
            hnorm: RmsNorm::take(w, &format!("{p}.hnorm"), eps),
            eh_proj: Linear { weight: take(w, &format!("{p}.eh_proj.weight")), bias: None },
            layer: Layer::take(w, &p, cfg.num_hidden_layers + k as i64, cfg),
            norm: RmsNorm::take(w, &format!("{p}.shared_head.norm"), eps),
        }
    }

    pub fn set_fast_paths(&mut self, fast: FastPaths) {
        self.enorm.fast = fast;
        self.hnorm.fast = fast;
        self.layer.set_fast_paths(fast);
        self.norm.fast = fast;
    }

    /// The depth's tensors under `p`, HF names, sharing storage.
    pub fn named_tensors(&self, p: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{p}.enorm.weight"), self.enorm.weight.shallow_clone()));
        out.push((format!("{p}.hnorm.weight"), self.hnorm.weight.shallow_clone()));
        out.push((format!("{p}.eh_proj.weight"), self.eh_proj.weight.shallow_clone()));
        self.layer.named_tensors(p, out);
        out.push((format!("{p}.shared_head.norm.weight"), self.norm.weight.shallow_clone()));
    }

    /// One depth: `hidden` [B, T, H] (the previous depth's output, or the main model's normed final
    /// hidden states) and `embedded` [B, T, H] (the embeddings of the tokens k ahead) -> this depth's
    /// normed output [B, T, H] (the head's input and the next depth's `hidden`) and what its router
    /// did. Attention as in [`Layer::forward_train`] (causal, or within `documents` with per-token cos/sin).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &self,
        hidden: &Tensor,
        embedded: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        documents: Option<&DocumentSegments>,
        aux: &AuxCoefficients,
    ) -> (Tensor, Option<RoutingStats>) {
        let joined = Tensor::cat(&[self.enorm.forward(embedded), self.hnorm.forward(hidden)], -1);
        let x = self.eh_proj.forward(&joined);
        let (y, stats) = self.layer.forward_train(&x, rope, cos, sin, documents, aux);
        (self.norm.forward(&y), stats)
    }
}

/// Weights for every MTP depth `cfg` declares, initialised as megatron-core initialises an MTP
/// layer: matrices (eh_proj, projections, router, experts) normal(0, `std`), the output
/// projections (o_proj and every down_proj) normal(0, std / sqrt(2 * num_hidden_layers))
/// (megatron-core's `scaled_init_method_normal`), norms one, biases and the router's correction
/// bias zero. Drawn on the CPU from `seed` by SplitMix64 + Box-Muller (no global generator is
/// touched), so a seed gives the same weights on every device.
pub fn megatron_init(cfg: &Config, std: f64, seed: u64, kind: Kind, device: Device) -> Weights {
    let mut rng = SplitMix::new(seed);
    let mut normal = |n: usize, scale: f64| -> Vec<f32> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            // Box-Muller from two uniforms in (0, 1].
            let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            v.push((r * a.cos() * scale) as f32);
            v.push((r * a.sin() * scale) as f32);
        }
        v.truncate(n);
        v
    };
    let output_std = std / (2.0 * cfg.num_hidden_layers as f64).sqrt();
    let mut w = Weights::new();
    for (name, shape) in expected_shapes(cfg).into_iter().filter(|(n, _)| is_mtp_name(cfg, n)) {
        let n = shape.iter().product::<i64>() as usize;
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else if name.ends_with("e_score_correction_bias") || name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else {
            let output = name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") || name.ends_with("experts.down_proj");
            Tensor::from_slice(&normal(n, if output { output_std } else { std })).view(shape.as_slice())
        };
        let k = if name.ends_with("e_score_correction_bias") { Kind::Float } else { kind };
        w.insert(name, t.to_kind(k).to_device(device));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(mtp: i64, first_dense: i64) -> Config {
        Config::from_json(json!({
            "model_type": "deepseek_v3", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
            "moe_intermediate_size": 8, "num_hidden_layers": 2, "first_k_dense_replace": first_dense,
            "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 8, "qk_nope_head_dim": 4,
            "qk_rope_head_dim": 4, "v_head_dim": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
            "n_group": 1, "topk_group": 1, "num_nextn_predict_layers": mtp
        }))
        .unwrap()
    }

    #[test]
    fn names_and_moe_follow_the_layer_index() {
        let cfg = config(2, 1);
        assert_eq!(mtp_prefix(&cfg, 1), "model.layers.3");
        assert!(is_mtp_name(&cfg, "model.layers.2.enorm.weight"));
        assert!(is_mtp_name(&cfg, "model.layers.3.mlp.experts.gate_up_proj"));
        assert!(!is_mtp_name(&cfg, "model.layers.4.enorm.weight"));
        assert!(!is_mtp_name(&cfg, "model.layers.1.input_layernorm.weight"));
        let w = megatron_init(&cfg, 0.02, 7, Kind::Float, Device::Cpu);
        assert!(w.contains_key("model.layers.2.mlp.gate.weight"));
        // A config whose dense layers reach past the main ones gives a dense MTP layer.
        let w = megatron_init(&config(1, 3), 0.02, 7, Kind::Float, Device::Cpu);
        assert!(w.contains_key("model.layers.2.mlp.gate_proj.weight") && !w.contains_key("model.layers.2.mlp.gate.weight"));
    }

    #[test]
    fn megatron_init_draws_the_documented_distributions() {
        let cfg = config(1, 1);
        let w = megatron_init(&cfg, 0.5, 3, Kind::Float, Device::Cpu);
        let again = megatron_init(&cfg, 0.5, 3, Kind::Float, Device::Cpu);
        assert!(w.iter().all(|(n, t)| t.equal(&again[n])), "the same seed draws the same weights");
        let std_of = |n: &str| w[n].std(true).double_value(&[]);
        assert!((std_of("model.layers.2.eh_proj.weight") - 0.5).abs() < 0.03);
        let experts = w["model.layers.2.mlp.experts.down_proj"].std(true).double_value(&[]);
        assert!((experts - 0.25).abs() < 0.03, "down_proj std {experts}, expected 0.5 / sqrt(4)");
        assert!(w["model.layers.2.shared_head.norm.weight"].equal(&Tensor::ones([16], (Kind::Float, Device::Cpu))));
        assert_eq!(w["model.layers.2.mlp.gate.e_score_correction_bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
        let mean = w["model.layers.2.eh_proj.weight"].mean(Kind::Float).double_value(&[]);
        assert!(mean.abs() < 0.03, "mean {mean}");
    }
}
