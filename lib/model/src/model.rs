//! The DeepSeek-V3 decoder (OpenSeek-Small-v1), top to bottom: the embedding, the decoder layers
//! (`crate::layer`: RMSNorm, multi-head latent attention, dense SwiGLU MLP or sigmoid-routed MoE
//! with shared experts), the final norm and the LM head, and the MTP depths (`crate::mtp`).
//! Each block computes what transformers' `modeling_deepseek_v3.py` computes, in the same order
//! and dtypes, so fp32 logits agree to rounding.
//!
//! Weights are plain tensors with the Hugging Face names (`named_tensors`); routed experts are
//! held fused, as transformers 5 does: `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first)
//! and `mlp.experts.down_proj` [E, H, I].

use crate::config::Config;
use crate::fast_paths::FastPaths;
pub use crate::layer::{FeedForward, Layer};
use crate::layers::RmsNorm;
use crate::mtp::MtpLayer;
use crate::rope::Rope;
use crate::weights::{take, Weights};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

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
    /// [`DeepseekV3::head_padded`]'s weight, built on first use and kept while the head's weight
    /// stays the same tensor, unmodified.
    padded_head: Mutex<Option<PaddedHead>>,
}

/// The head's weight in a dtype, its rows padded with zeros to a multiple of 64, and what it was
/// built from: the weight's storage and version counter (an in-place update bumps it).
struct PaddedHead {
    source: (usize, i64, Kind),
    weight: Tensor,
}

impl DeepseekV3 {
    /// Build from a complete state dict (HF names, fused experts); see `shapes::expected_shapes`.
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
        DeepseekV3 { config, embed_tokens, layers, norm, lm_head, rope, mtp, compute_kind, padded_head: Mutex::new(None) }
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
    /// The padded weight is built once (a copy of the head) and reused until the weight changes.
    pub fn head_padded(&self, hidden: &Tensor) -> Tensor {
        let (kind, weight) = (hidden.kind(), self.head_weight());
        let (vocab, width) = (weight.size()[0], weight.size()[1]);
        let padded = (vocab + 63) / 64 * 64;
        if padded == vocab || !hidden.device().is_cuda() || hidden.requires_grad() {
            return hidden.linear::<Tensor>(&weight.to_kind(kind), None);
        }
        let source = (weight.data_ptr() as usize, weight.internal_version(), kind);
        let mut cached = self.padded_head.lock().unwrap();
        if cached.as_ref().is_none_or(|c| c.source != source || c.weight.device() != hidden.device()) {
            let _ = cached.take();
            let weight = tch::no_grad(|| Tensor::cat(&[weight.to_kind(kind), Tensor::zeros([padded - vocab, width], (kind, hidden.device()))], 0));
            *cached = Some(PaddedHead { source, weight });
        }
        hidden.linear::<Tensor>(&cached.as_ref().unwrap().weight, None)
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
            m.named_tensors(&crate::shapes::mtp_prefix(&self.config, k), &mut out);
        }
        out
    }

    /// The LM head's weight: `lm_head`, or the embeddings when tied.
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}
