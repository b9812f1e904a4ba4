//! Multi-head latent attention (MLA) as transformers' DeepSeek-V3 computes it.

use crate::config::Config;
use crate::layers::{Linear, RmsNorm};
use crate::model::Weights;
use crate::rope::Rope;
use tch::Tensor;

/// The query projection: plain, or low-rank with a norm between (q_lora_rank set).
pub enum QueryProj {
    Plain(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

/// Multi-head latent attention. Keys and values come from a shared latent (kv_lora_rank wide)
/// plus one rotated key part shared by all heads.
pub struct Attention {
    pub q: QueryProj,
    pub kv_a_proj_with_mqa: Linear,
    pub kv_a_layernorm: RmsNorm,
    pub kv_b_proj: Linear,
    pub o_proj: Linear,
    heads: i64,
    nope: i64,
    rope_dim: i64,
    v_dim: i64,
    kv_lora_rank: i64,
    scale: f64,
}

impl Attention {
    pub(crate) fn take(w: &mut Weights, p: &str, cfg: &Config) -> Attention {
        let bias = cfg.attention_bias;
        let q = match cfg.q_lora_rank {
            None => QueryProj::Plain(Linear::take(w, &format!("{p}.q_proj"), false)),
            Some(_) => QueryProj::LowRank {
                a: Linear::take(w, &format!("{p}.q_a_proj"), bias),
                // transformers builds this norm with the default eps (1e-6), not rms_norm_eps.
                norm: RmsNorm::take(w, &format!("{p}.q_a_layernorm"), 1e-6),
                b: Linear::take(w, &format!("{p}.q_b_proj"), false),
            },
        };
        Attention {
            q,
            kv_a_proj_with_mqa: Linear::take(w, &format!("{p}.kv_a_proj_with_mqa"), bias),
            kv_a_layernorm: RmsNorm::take(w, &format!("{p}.kv_a_layernorm"), 1e-6),
            kv_b_proj: Linear::take(w, &format!("{p}.kv_b_proj"), false),
            o_proj: Linear::take(w, &format!("{p}.o_proj"), bias),
            heads: cfg.num_attention_heads,
            nope: cfg.qk_nope_head_dim,
            rope_dim: cfg.qk_rope_head_dim,
            v_dim: cfg.v_head_dim,
            kv_lora_rank: cfg.kv_lora_rank,
            scale: cfg.softmax_scale(),
        }
    }

    /// Causal self-attention over x [B, T, hidden].
    pub fn forward(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = match &self.q {
            QueryProj::Plain(q) => q.forward(x),
            QueryProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x))),
        };
        let q = q.view([b, t, self.heads, self.nope + self.rope_dim]).transpose(1, 2);
        let q_parts = q.split_with_sizes([self.nope, self.rope_dim], -1);

        let kv_a = self.kv_a_proj_with_mqa.forward(x);
        let kv_parts = kv_a.split_with_sizes([self.kv_lora_rank, self.rope_dim], -1);
        let latent = self.kv_a_layernorm.forward(&kv_parts[0]);
        let k_rot = kv_parts[1].view([b, 1, t, self.rope_dim]);

        let q_rot = rope.apply(&q_parts[1], cos, sin);
        let k_rot = rope.apply(&k_rot, cos, sin);

        let kv = self.kv_b_proj.forward(&latent).view([b, t, self.heads, self.nope + self.v_dim]).transpose(1, 2);
        let kv_parts = kv.split_with_sizes([self.nope, self.v_dim], -1);
        let k = Tensor::cat(&[&kv_parts[0], &k_rot.expand([b, self.heads, t, self.rope_dim], false)], -1);
        let q = Tensor::cat(&[&q_parts[0], &q_rot], -1);
        let v = &kv_parts[1];

        let y = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, v, None, 0.0, true, self.scale, false);
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, t, self.heads * self.v_dim]))
    }
}

