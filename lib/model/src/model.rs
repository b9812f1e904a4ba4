//! The DeepSeek-V3 decoder (OpenSeek-Small-v1), top to bottom: RMSNorm, multi-head latent
//! attention, dense SwiGLU MLP, sigmoid-routed MoE with shared experts, and the LM head.
//! Each block computes what transformers' `modeling_deepseek_v3.py` computes, in the same order
//! and dtypes, so fp32 logits agree to rounding.
//!
//! Weights are plain tensors with the Hugging Face names (`named_tensors`); routed experts are
//! held fused, as transformers 5 does: `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first)
//! and `mlp.experts.down_proj` [E, H, I].

use crate::config::Config;
use crate::rope::Rope;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// A named set of tensors, the HF state dict (fused experts).
pub type Weights = BTreeMap<String, Tensor>;

fn take(w: &mut Weights, name: &str) -> Tensor {
    w.remove(name).unwrap_or_else(|| panic!("weight {name} missing (the checkpoint loader checks names first)"))
}

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    fn take(w: &mut Weights, prefix: &str, bias: bool) -> Linear {
        Linear {
            weight: take(w, &format!("{prefix}.weight")),
            bias: bias.then(|| take(w, &format!("{prefix}.bias"))),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    fn take(w: &mut Weights, prefix: &str, eps: f64) -> RmsNorm {
        RmsNorm { weight: take(w, &format!("{prefix}.weight")), eps }
    }
    /// Normalise in fp32, cast back to the input dtype, then scale.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let x = x * (variance + self.eps).rsqrt();
        &self.weight * x.to_kind(kind)
    }
}

/// SwiGLU: down(silu(gate x) * up x). The dense layers and the shared experts.
pub struct Mlp {
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
}

impl Mlp {
    fn take(w: &mut Weights, prefix: &str) -> Mlp {
        Mlp {
            gate_proj: take(w, &format!("{prefix}.gate_proj.weight")),
            up_proj: take(w, &format!("{prefix}.up_proj.weight")),
            down_proj: take(w, &format!("{prefix}.down_proj.weight")),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.linear::<Tensor>(&self.gate_proj, None).silu() * x.linear::<Tensor>(&self.up_proj, None);
        h.linear::<Tensor>(&self.down_proj, None)
    }
}

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
    fn take(w: &mut Weights, p: &str, cfg: &Config) -> Attention {
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

/// Sigmoid router with group-limited top-k. The correction bias only ranks experts; the
/// weights are the unbiased scores of the chosen experts.
pub struct Router {
    pub weight: Tensor,
    /// `e_score_correction_bias`, fp32.
    pub bias: Tensor,
    top_k: i64,
    n_group: i64,
    topk_group: i64,
    norm_topk_prob: bool,
    scaling: f64,
}

impl Router {
    /// x [N, hidden] -> (weights [N, k] fp32, expert ids [N, k]).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let n = x.size()[0];
        let experts = self.weight.size()[0];
        let per_group = experts / self.n_group;
        let scores = x.to_kind(Kind::Float).linear::<Tensor>(&self.weight.to_kind(Kind::Float), None).sigmoid();
        let for_choice = &scores + &self.bias;
        // Rank groups by the sum of their two best experts; keep the best topk_group groups.
        let group_scores = for_choice.view([n, self.n_group, per_group]).topk(per_group.min(2), -1, true, true).0.sum_dim_intlist(-1, false, Kind::Float);
        let group_idx = group_scores.topk(self.topk_group, -1, true, false).1;
        let group_mask = group_scores.zeros_like().scatter_value(1, &group_idx, 1.0);
        let expert_mask = group_mask.unsqueeze(-1).expand([n, self.n_group, per_group], false).reshape([n, experts]);
        let for_choice = for_choice.masked_fill(&expert_mask.eq(0.0), f64::NEG_INFINITY);
        let idx = for_choice.topk(self.top_k, -1, true, false).1;
        let mut weights = scores.gather(1, &idx, false);
        if self.norm_topk_prob {
            weights = &weights / (weights.sum_dim_intlist(-1, true, Kind::Float) + 1e-20);
        }
        (weights * self.scaling, idx)
    }
}

/// The routed experts, fused: gate_up [E, 2I, H], down [E, H, I].
pub struct Experts {
    pub gate_up_proj: Tensor,
    pub down_proj: Tensor,
}

impl Experts {
    /// x [N, H]; each token goes through its k experts, outputs weighted (fp32 weights [N, k]) and summed.
    /// On CUDA the experts run as two grouped GEMMs; on CPU one after another.
    pub fn forward(&self, x: &Tensor, weights: &Tensor, idx: &Tensor) -> Tensor {
        if x.device().is_cuda() {
            self.forward_grouped(x, weights, idx)
        } else {
            self.forward_loop(x, weights, idx)
        }
    }

    /// All (token, expert) pairs sorted by expert, each expert's rows one group of
    /// `_grouped_mm` (offsets = running row counts), results scattered back with index_add.
    pub fn forward_grouped(&self, x: &Tensor, weights: &Tensor, idx: &Tensor) -> Tensor {
        let (experts, k) = (self.gate_up_proj.size()[0], idx.size()[1]);
        let inter = self.down_proj.size()[2];
        let (_, order) = idx.view([-1]).sort_stable(true, 0, false);
        let token = order.floor_divide_scalar(k);
        let counts = idx.view([-1]).bincount::<Tensor>(None, experts);
        let offsets = counts.cumsum(0, Kind::Int);
        let h = x.index_select(0, &token).internal_grouped_mm(&self.gate_up_proj.transpose(1, 2), Some(&offsets), None, None);
        let h = (h.narrow(-1, 0, inter).silu() * h.narrow(-1, inter, inter)).contiguous();
        let y = h.internal_grouped_mm(&self.down_proj.transpose(1, 2), Some(&offsets), None, None);
        let w = weights.view([-1]).index_select(0, &order).unsqueeze(1);
        x.zeros_like().index_add(0, &token, &(y * w).to_kind(x.kind()))
    }

    /// Experts one after another in id order (transformers' own order).
    pub fn forward_loop(&self, x: &Tensor, weights: &Tensor, idx: &Tensor) -> Tensor {
        let mut out = x.zeros_like();
        let inter = self.down_proj.size()[2];
        for e in 0..self.gate_up_proj.size()[0] {
            let hits = idx.eq(e).nonzero();
            if hits.size()[0] == 0 {
                continue;
            }
            let token = hits.select(1, 0);
            let slot = hits.select(1, 1);
            let h = x.index_select(0, &token).linear::<Tensor>(&self.gate_up_proj.get(e), None);
            let h = h.narrow(-1, 0, inter).silu() * h.narrow(-1, inter, inter);
            let y = h.linear::<Tensor>(&self.down_proj.get(e), None);
            let w = weights.index_select(0, &token).gather(1, &slot.unsqueeze(1), false);
            out = out.index_add(0, &token, &(y * w).to_kind(x.kind()));
        }
        out
    }
}

pub struct Moe {
    pub gate: Router,
    pub experts: Experts,
    pub shared_experts: Mlp,
}

impl Moe {
    fn take(w: &mut Weights, p: &str, cfg: &Config) -> Moe {
        Moe {
            gate: Router {
                weight: take(w, &format!("{p}.gate.weight")),
                bias: take(w, &format!("{p}.gate.e_score_correction_bias")).to_kind(Kind::Float),
                top_k: cfg.num_experts_per_tok,
                n_group: cfg.n_group,
                topk_group: cfg.topk_group,
                norm_topk_prob: cfg.norm_topk_prob,
                scaling: cfg.routed_scaling_factor,
            },
            experts: Experts {
                gate_up_proj: take(w, &format!("{p}.experts.gate_up_proj")),
                down_proj: take(w, &format!("{p}.experts.down_proj")),
            },
            shared_experts: Mlp::take(w, &format!("{p}.shared_experts")),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let shape = x.size();
        let flat = x.view([-1, *shape.last().unwrap()]);
        let (weights, idx) = self.gate.forward(&flat);
        let routed = self.experts.forward(&flat, &weights, &idx).view(shape.as_slice());
        routed + self.shared_experts.forward(x)
    }
}

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
    pub fn forward(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor) -> Tensor {
        let x = x + self.self_attn.forward(&self.input_layernorm.forward(x), rope, cos, sin);
        let h = self.post_attention_layernorm.forward(&x);
        let y = match &self.mlp {
            FeedForward::Dense(m) => m.forward(&h),
            FeedForward::Moe(m) => m.forward(&h),
        };
        x + y
    }
}

pub struct DeepseekV3 {
    pub config: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// None when tied to the embeddings.
    pub lm_head: Option<Tensor>,
    pub rope: Rope,
}

impl DeepseekV3 {
    /// Build from a complete state dict (HF names, fused experts); see `checkpoint::expected_shapes`.
    pub fn from_weights(config: Config, mut w: Weights) -> DeepseekV3 {
        let eps = config.rms_norm_eps;
        let embed_tokens = take(&mut w, "model.embed_tokens.weight");
        let device = embed_tokens.device();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Layer {
                    input_layernorm: RmsNorm::take(&mut w, &format!("{p}.input_layernorm"), eps),
                    self_attn: Attention::take(&mut w, &format!("{p}.self_attn"), &config),
                    post_attention_layernorm: RmsNorm::take(&mut w, &format!("{p}.post_attention_layernorm"), eps),
                    mlp: if config.is_moe_layer(i) {
                        FeedForward::Moe(Moe::take(&mut w, &format!("{p}.mlp"), &config))
                    } else {
                        FeedForward::Dense(Mlp::take(&mut w, &format!("{p}.mlp")))
                    },
                }
            })
            .collect();
        let norm = RmsNorm::take(&mut w, "model.norm", eps);
        let lm_head = (!config.tie_word_embeddings).then(|| take(&mut w, "lm_head.weight"));
        let rope = Rope::new(&config, device);
        DeepseekV3 { config, embed_tokens, layers, norm, lm_head, rope }
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Final hidden states [B, T, hidden] for token ids [B, T] at positions 0..T.
    /// Right padding needs no mask: a causal model's outputs before the padding do not see it.
    pub fn hidden(&self, ids: &Tensor) -> Tensor {
        let t = ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, self.device()));
        let (cos, sin) = self.rope.cos_sin(&positions, self.kind());
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        for layer in &self.layers {
            x = layer.forward(&x, &self.rope, &cos, &sin);
        }
        self.norm.forward(&x)
    }

    /// Logits from hidden states.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed_tokens), None)
    }

    /// Logits [B, T, vocab] for token ids [B, T].
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        self.head(&self.hidden(ids))
    }

    /// The state dict (HF names, fused experts), sharing storage with the model.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        let mut put = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            put(format!("{p}.input_layernorm.weight"), &l.input_layernorm.weight);
            put(format!("{p}.post_attention_layernorm.weight"), &l.post_attention_layernorm.weight);
            let a = &l.self_attn;
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
            match &l.mlp {
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
        put("model.norm.weight".to_string(), &self.norm.weight);
        if let Some(h) = &self.lm_head {
            put("lm_head.weight".to_string(), h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_experts_equal_the_loop() {
        tch::manual_seed(7);
        let (e, h, i, n, k) = (8, 64, 32, 50, 2);
        let experts = Experts {
            gate_up_proj: Tensor::randn([e, 2 * i, h], (Kind::Float, Device::Cpu)) / 8.0,
            down_proj: Tensor::randn([e, h, i], (Kind::Float, Device::Cpu)) / 6.0,
        };
        let x = Tensor::randn([n, h], (Kind::Float, Device::Cpu));
        // Expert 3 gets no token: an empty group.
        let idx = Tensor::randint(e - 1, [n, k], (Kind::Int64, Device::Cpu));
        let idx = idx.where_self(&idx.ne(3), &Tensor::from(e - 1));
        let w = Tensor::rand([n, k], (Kind::Float, Device::Cpu));
        let a = experts.forward_loop(&x, &w, &idx);
        let b = experts.forward_grouped(&x, &w, &idx);
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "grouped differs from the loop by {diff}");
        assert!(a.abs().max().double_value(&[]) > 0.1);
    }
}
