//! The DeepSeek-V3 decoder (OpenSeek-Small-v1), top to bottom: RMSNorm, multi-head latent
//! attention, dense SwiGLU MLP, sigmoid-routed MoE with shared experts, and the LM head.
//! Each block computes what transformers' `modeling_deepseek_v3.py` computes, in the same order
//! and dtypes, so fp32 logits agree to rounding.
//!
//! Weights are plain tensors with the Hugging Face names (`named_tensors`); routed experts are
//! held fused, as transformers 5 does: `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first)
//! and `mlp.experts.down_proj` [E, H, I].

use crate::attention::{Attention, QueryProj};
use crate::config::Config;
use crate::documents::DocumentSegments;
use crate::fast_paths::FastPaths;
use crate::layers::{Linear, Mlp, RmsNorm};
use crate::moe::{AuxCoefficients, Moe, RoutingStats};
use crate::mtp::MtpLayer;
use crate::rope::Rope;
use crate::weights::{take, Weights};
use tch::{Device, Kind, Tensor};

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

pub struct DeepseekV3 {
    pub config: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// None when tied to the embeddings.
    pub lm_head: Option<Tensor>,
    pub rope: Rope,
    /// The multi-token-prediction depths (`num_nextn_predict_layers`), trained by os-train; the
    /// forward pass never uses them.
    pub mtp: Vec<MtpLayer>,
    /// The activations' dtype; weights of another dtype (fp32 master weights) are cast where used.
    pub compute_kind: Kind,
}

impl DeepseekV3 {
    /// Build from a complete state dict (HF names, fused experts); see `checkpoint::expected_shapes`.
    pub fn from_weights(config: Config, mut w: Weights) -> DeepseekV3 {
        let eps = config.rms_norm_eps;
        let embed_tokens = take(&mut w, "model.embed_tokens.weight");
        let device = embed_tokens.device();
        let layers = (0..config.num_hidden_layers).map(|i| Layer::take(&mut w, &format!("model.layers.{i}"), i, &config)).collect();
        let norm = RmsNorm::take(&mut w, "model.norm", eps);
        let lm_head = (!config.tie_word_embeddings).then(|| take(&mut w, "lm_head.weight"));
        let mtp = (0..config.num_nextn_predict_layers as usize).map(|k| MtpLayer::take(&mut w, k, &config)).collect();
        let rope = Rope::new(&config, device);
        let compute_kind = embed_tokens.kind();
        DeepseekV3 { config, embed_tokens, layers, norm, lm_head, rope, mtp, compute_kind }
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// Take the fast paths `fast` in every module (all are on when a model is built).
    pub fn set_fast_paths(&mut self, fast: FastPaths) {
        for layer in &mut self.layers {
            layer.set_fast_paths(fast);
        }
        self.norm.fast = fast;
        for m in &mut self.mtp {
            m.set_fast_paths(fast);
        }
    }

    /// Every decoder layer with its HF layer number: the main ones, then the MTP depths' layers.
    pub fn all_layers(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers.iter().chain(self.mtp.iter().map(|m| &m.layer)).enumerate()
    }

    /// [`DeepseekV3::all_layers`], mutable.
    pub fn all_layers_mut(&mut self) -> impl Iterator<Item = (usize, &mut Layer)> {
        self.layers.iter_mut().chain(self.mtp.iter_mut().map(|m| &mut m.layer)).enumerate()
    }

    /// The weights' dtype.
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Embeddings of token ids [B, T] in the compute dtype, and the RoPE tables: for positions
    /// 0..T ([T, rope_dim]), or for `positions` [B, T] ([B, 1, T, rope_dim], as masked attention takes them).
    pub fn embed(&self, ids: &Tensor, positions: Option<&Tensor>) -> (Tensor, Tensor, Tensor) {
        let (cos, sin) = match positions {
            None => self.rope.cos_sin(&Tensor::arange(ids.size()[1], (Kind::Int64, self.device())), self.compute_kind),
            Some(p) => {
                let (c, s) = self.rope.cos_sin(p, self.compute_kind);
                (c.unsqueeze(1), s.unsqueeze(1))
            }
        };
        let x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false).to_kind(self.compute_kind);
        (x, cos, sin)
    }

    /// Final hidden states [B, T, hidden] for token ids [B, T] at positions 0..T.
    /// Right padding needs no mask: a causal model's outputs before the padding do not see it.
    pub fn hidden(&self, ids: &Tensor) -> Tensor {
        let (mut x, cos, sin) = self.embed(ids, None);
        for layer in &self.layers {
            x = layer.forward(&x, &self.rope, &cos, &sin);
        }
        self.norm.forward(&x)
    }

    /// Logits [.., vocab] from hidden states (on CUDA outside autograd a view of
    /// [`DeepseekV3::head_padded`]'s).
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        let logits = self.head_padded(hidden);
        let vocab = self.head_weight().size()[0];
        if logits.size().last() == Some(&vocab) {
            return logits;
        }
        logits.narrow(-1, 0, vocab)
    }

    /// The head's product with its rows padded to a multiple of 64 where that pays: on CUDA outside
    /// autograd (an odd vocabulary, 151,851, misaligns the logits' rows and makes the GEMM several
    /// times slower; os-train's loss pads its head the same way). Logits [.., padded vocab],
    /// contiguous; the padding columns are 0 (not logits: [`DeepseekV3::head`] narrows them away).
    pub fn head_padded(&self, hidden: &Tensor) -> Tensor {
        let (kind, weight) = (hidden.kind(), self.head_weight());
        let (vocab, width) = (weight.size()[0], weight.size()[1]);
        let padded = (vocab + 63) / 64 * 64;
        if padded == vocab || !hidden.device().is_cuda() || hidden.requires_grad() {
            return hidden.linear::<Tensor>(&weight.to_kind(kind), None);
        }
        let weight = Tensor::cat(&[weight.to_kind(kind), Tensor::zeros([padded - vocab, width], (kind, hidden.device()))], 0);
        hidden.linear::<Tensor>(&weight, None)
    }

    /// Logits [B, T, vocab] for token ids [B, T].
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        self.head(&self.hidden(ids))
    }

    /// The state dict (HF names, fused experts), sharing storage with the model: the main model,
    /// then the multi-token-prediction layers (`model.layers.{num_hidden_layers + k - 1}`).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        for (i, l) in self.layers.iter().enumerate() {
            l.named_tensors(&format!("model.layers.{i}"), &mut out);
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.shallow_clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.shallow_clone()));
        }
        for (k, m) in self.mtp.iter().enumerate() {
            m.named_tensors(&crate::mtp::prefix(&self.config, k), &mut out);
        }
        out
    }

    /// The LM head's weight: `lm_head`, or the embeddings when tied.
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}
