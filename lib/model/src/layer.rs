//! One DeepSeek-V3 decoder layer: RMSNorm, multi-head latent attention, RMSNorm, then a dense
//! SwiGLU MLP or the sigmoid-routed MoE (as the config says for the layer's index), each with its
//! residual. The main model stacks them (`crate::model`); each MTP depth holds one (`crate::mtp`).

use crate::attention::{Attention, QueryProj};
use crate::config::Config;
use crate::documents::DocumentSegments;
use crate::fast_paths::FastPaths;
use crate::layers::{Linear, Mlp, RmsNorm};
use crate::moe::{AuxCoefficients, Moe, RoutingStats};
use crate::rope::Rope;
use crate::weights::Weights;
use tch::Tensor;

pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

pub struct Layer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: FeedForward,
}

impl Layer {
    pub fn set_fast_paths(&mut self, fast: FastPaths) {
        self.input_layernorm.fast = fast;
        self.post_attention_layernorm.fast = fast;
        self.self_attn.set_fast_paths(fast);
        match &mut self.mlp {
            FeedForward::Dense(m) => m.fast = fast,
            FeedForward::Moe(m) => m.set_fast_paths(fast),
        }
    }

    pub fn forward(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor) -> Tensor {
        self.forward_train(x, rope, cos, sin, None, &AuxCoefficients::default()).0
    }

    /// The forward pass plus, for an MoE layer, what its router did (loads, auxiliary losses).
    /// Causal attention over whole rows, or with `documents` attention within each document
    /// (cos/sin then per token, [B, 1, T, rope_dim], at the positions `documents` gives).
    pub fn forward_train(
        &self,
        x: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        documents: Option<&DocumentSegments>,
        aux: &AuxCoefficients,
    ) -> (Tensor, Option<RoutingStats>) {
        let mut attend = |a: &Attention, h: &Tensor| match documents {
            None => a.forward(h, rope, cos, sin),
            Some(d) => a.forward_documents(h, rope, cos, sin, d),
        };
        self.forward_around(x, &mut attend, aux)
    }

    /// The layer around a given use of its attention: `attend(&self.self_attn, normed x)` gives
    /// the attention output (causal, masked, cached or grouped; see its callers).
    pub fn forward_around(
        &self,
        x: &Tensor,
        attend: &mut dyn FnMut(&Attention, &Tensor) -> Tensor,
        aux: &AuxCoefficients,
    ) -> (Tensor, Option<RoutingStats>) {
        let h = self.input_layernorm.forward(x);
        let x = x + attend(&self.self_attn, &h);
        let h = self.post_attention_layernorm.forward(&x);
        let (y, stats) = match &self.mlp {
            FeedForward::Dense(m) => (m.forward(&h), None),
            FeedForward::Moe(m) => {
                let (y, stats) = m.forward_train(&h, aux);
                (y, Some(stats))
            }
        };
        (x + y, stats)
    }

    /// The layer's tensors under `p` (`model.layers.N`), HF names, sharing storage.
    pub fn named_tensors(&self, p: &str, out: &mut Vec<(String, Tensor)>) {
        let mut put = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
        put(format!("{p}.input_layernorm.weight"), &self.input_layernorm.weight);
        put(format!("{p}.post_attention_layernorm.weight"), &self.post_attention_layernorm.weight);
        let a = &self.self_attn;
        let mut linear = |name: &str, lin: &Linear| {
            put(format!("{p}.self_attn.{name}.weight"), &lin.weight);
            if let Some(b) = &lin.bias {
                put(format!("{p}.self_attn.{name}.bias"), b);
            }
        };
        match &a.q {
            QueryProj::Plain(q) => linear("q_proj", q),
            QueryProj::LowRank { a: qa, norm: _, b: qb } => {
                linear("q_a_proj", qa);
                linear("q_b_proj", qb);
            }
        }
        linear("kv_a_proj_with_mqa", &a.kv_a_proj_with_mqa);
        linear("kv_b_proj", &a.kv_b_proj);
        linear("o_proj", &a.o_proj);
        if let QueryProj::LowRank { norm, .. } = &a.q {
            put(format!("{p}.self_attn.q_a_layernorm.weight"), &norm.weight);
        }
        put(format!("{p}.self_attn.kv_a_layernorm.weight"), &a.kv_a_layernorm.weight);
        let mut mlp = |prefix: String, m: &Mlp| {
            put(format!("{prefix}.gate_proj.weight"), &m.gate_proj);
            put(format!("{prefix}.up_proj.weight"), &m.up_proj);
            put(format!("{prefix}.down_proj.weight"), &m.down_proj);
        };
        match &self.mlp {
            FeedForward::Dense(m) => mlp(format!("{p}.mlp"), m),
            FeedForward::Moe(m) => {
                mlp(format!("{p}.mlp.shared_experts"), &m.shared_experts);
                put(format!("{p}.mlp.gate.weight"), &m.gate.weight);
                put(format!("{p}.mlp.gate.e_score_correction_bias"), &m.gate.bias);
                put(format!("{p}.mlp.experts.gate_up_proj"), &m.experts.gate_up_proj);
                put(format!("{p}.mlp.experts.down_proj"), &m.experts.down_proj);
            }
        }
    }

    /// Layer `i` of `config` from the weights under `p`.
    pub(crate) fn take(w: &mut Weights, p: &str, i: i64, config: &Config) -> Layer {
        let eps = config.rms_norm_eps;
        Layer {
            input_layernorm: RmsNorm::take(w, &format!("{p}.input_layernorm"), eps),
            self_attn: Attention::take(w, &format!("{p}.self_attn"), config),
            post_attention_layernorm: RmsNorm::take(w, &format!("{p}.post_attention_layernorm"), eps),
            mlp: if config.is_moe_layer(i) {
                FeedForward::Moe(Moe::take(w, &format!("{p}.mlp"), config))
            } else {
                FeedForward::Dense(Mlp::take(w, &format!("{p}.mlp")))
            },
        }
    }
}
