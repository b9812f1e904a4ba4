//! Multi-head latent attention (MLA) as transformers' DeepSeek-V3 computes it.

use crate::config::Config;
use crate::documents::DocumentSegments;
use crate::fast_paths::FastPaths;
use crate::layers::{Linear, RmsNorm};
use crate::model::Weights;
use crate::packed::TokenGroups;
use crate::rope::Rope;
use openseek_kernels::varlen_attention;
use tch::{Device, Kind, Tensor};

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
    pub fast: FastPaths,
}

impl Attention {
    /// The fast paths of the attention and its norms.
    pub fn set_fast_paths(&mut self, fast: FastPaths) {
        self.fast = fast;
        self.kv_a_layernorm.fast = fast;
        if let QueryProj::LowRank { norm, .. } = &mut self.q {
            norm.fast = fast;
        }
    }

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
            fast: FastPaths::default(),
        }
    }

    /// Causal self-attention over x [B, T, hidden] at positions 0..T (cos/sin [T, rope_dim]).
    pub fn forward(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor) -> Tensor {
        let (q, k, v) = self.qkv(x, rope, cos, sin);
        let y = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, self.scale, false);
        self.output(&y)
    }

    /// Attention with an explicit mask, for padded batches and incremental decoding.
    /// x [B, S, hidden]; cos/sin [B, 1, S, rope_dim] at each token's position; `mask` [B, 1, S, K]
    /// bool, true where a query may see a key, K counting the cached keys first. With a cache the
    /// new latents are appended to it and attention runs over all K of them (absorbed, for one new token).
    pub fn forward_masked(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor, mask: &Tensor, cache: Option<&mut MlaCache>) -> Tensor {
        let (q, latent, k_rot) = self.project(x, rope, cos, sin);
        let decoding = cache.is_some() && x.size()[1] == 1;
        let (latent, k_rot) = match cache {
            Some(c) => c.append(&latent, &k_rot),
            None => (latent, k_rot),
        };
        if decoding {
            return self.output(&self.attend_absorbed(&q, &latent, &k_rot, mask));
        }
        let (k, v) = self.expand(&latent, &k_rot);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, self.scale, false);
        self.output(&y)
    }

    /// Attention within groups of tokens packed into one sequence (see [`crate::packed`]): x [1, N,
    /// hidden], cos/sin [1, 1, N, rope] at each token's position. Projections run on the N tokens;
    /// attention runs per group, the groups padded to a common length, each token seeing the keys
    /// that `groups.mask` allows.
    pub fn forward_grouped(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor, groups: &TokenGroups) -> Tensor {
        let (q, k, v) = self.qkv(x, rope, cos, sin);
        let y = Tensor::scaled_dot_product_attention(&groups.spread(&q), &groups.spread(&k), &groups.spread(&v), Some(&groups.mask), 0.0, false, self.scale, false);
        self.output(&groups.collect(&y))
    }

    /// Attention within documents (see [`crate::documents`]): x [B, T, hidden], cos/sin [B, 1, T,
    /// rope] at each token's position within its document. On CUDA in 16-bit the B * T tokens go
    /// to openseek-kernels' `varlen_attention` (flash attention's varlen kernels) with the
    /// documents as segments, queries, keys and values in the projections' [B, T, H, d] layout,
    /// the output straight into o_proj (fast path `varlen_attention`); elsewhere SDPA with the
    /// documents' [B, 1, T, T] mask. When every row is one document, plain causal attention.
    pub fn forward_documents(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor, documents: &DocumentSegments) -> Tensor {
        let (q, k, v) = self.qkv(x, rope, cos, sin);
        if documents.cu_seqlens.numel() as i64 - 1 == x.size()[0] {
            // Each row one document: plain causal attention is the same, and faster (cuDNN's
            // causal kernels against flash attention's varlen ones with v padded).
            let y = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, self.scale, false);
            return self.output(&y);
        }
        let varlen = self.fast.varlen_attention && x.device().is_cuda() && matches!(x.kind(), Kind::BFloat16 | Kind::Half);
        if !varlen {
            let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(documents.mask()), 0.0, false, self.scale, false);
            return self.output(&y);
        }
        let (b, t) = (x.size()[0], x.size()[1]);
        // [B, H, T, d] (transposed views of [B, T, H, d] on the kernels' path) -> [B * T, H, d].
        let tokens = |a: &Tensor| a.transpose(1, 2).reshape([b * t, self.heads, -1]);
        let y = varlen_attention(&tokens(&q), &tokens(&k), &tokens(&v), &documents.cu_seqlens, documents.max_len, self.scale).expect("varlen attention");
        self.o_proj.forward(&y.view([b, t, self.heads * self.v_dim]))
    }

    /// Attention with kv_b_proj absorbed into the queries and the output (one decoding step): the
    /// scores are taken against the cached latents directly, so per-head keys and values of the
    /// whole cache are never built. Equal to `expand` + attention up to rounding (softmax in fp32).
    /// q [B, H, S, nope + rope], latent [B, K, r], k_rot [B, 1, K, rope], mask [B, 1, S, K] -> [B, H, S, v].
    fn attend_absorbed(&self, q: &Tensor, latent: &Tensor, k_rot: &Tensor, mask: &Tensor) -> Tensor {
        let (b, h, s, k) = (q.size()[0], self.heads, q.size()[2], latent.size()[1]);
        let r = self.kv_lora_rank;
        let w = self.kv_b_proj.weight.to_kind(q.kind()).view([h, self.nope + self.v_dim, r]);
        let (w_k, w_v) = (w.narrow(1, 0, self.nope), w.narrow(1, self.nope, self.v_dim));
        let q_parts = q.split_with_sizes([self.nope, self.rope_dim], -1);
        // q_nope · (W_k latent) = (q_nope W_k) · latent, per head.
        let q_latent = q_parts[0].matmul(&w_k);
        let q_all = Tensor::cat(&[&q_latent, &q_parts[1]], -1).reshape([b, h * s, r + self.rope_dim]);
        let keys = Tensor::cat(&[latent, &k_rot.squeeze_dim(1)], -1);
        let scores = (q_all.matmul(&keys.transpose(1, 2)).view([b, h, s, k]) * self.scale).to_kind(Kind::Float);
        let p = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY).softmax(-1, Kind::Float).to_kind(q.kind());
        let context = p.view([b, h * s, k]).matmul(latent).view([b, h, s, r]);
        context.matmul(&w_v.transpose(1, 2))
    }

    /// Queries [B, H, S, nope + rope] (rotated part last), the normalised latent [B, S, kv_lora_rank]
    /// and the rotated shared key [B, 1, S, rope]. cos/sin broadcast against [B, H, S, rope].
    /// Queries (and keys, in `expand`) are split and joined per token, in the projections' own
    /// [B, S, H, d] layout, and handed to attention as transposed views of it: the joined tensors'
    /// gradients come back in that layout, so neither pass copies a transposed tensor to regroup
    /// heads. `attn_layout` off: the same operations on [B, H, S, d] tensors.
    fn project(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (q, latent, k_pe) = self.projections(x);
        if self.fast.attn_layout {
            // cos/sin [S, rope] or [B, 1, S, rope] -> broadcasting against [B, S, H, rope].
            let per_token = |c: &Tensor| if c.dim() == 2 { c.unsqueeze(1) } else { c.transpose(-3, -2) };
            let (cos, sin) = (per_token(cos), per_token(sin));
            let q_parts = q.split_with_sizes([self.nope, self.rope_dim], -1);
            let q = Tensor::cat(&[&q_parts[0], &rope.apply(&q_parts[1], &cos, &sin)], -1).transpose(1, 2);
            let k_rot = rope.apply(&k_pe.unsqueeze(2), &cos, &sin).transpose(1, 2);
            return (q, latent, k_rot);
        }
        let q_parts = q.transpose(1, 2).split_with_sizes([self.nope, self.rope_dim], -1);
        let k_rot = rope.apply(&k_pe.unsqueeze(1), cos, sin);
        let q = Tensor::cat(&[&q_parts[0], &rope.apply(&q_parts[1], cos, sin)], -1);
        (q, latent, k_rot)
    }

    /// The projections of x [B, T, hidden]: queries [B, T, H, nope + rope], the normalised latent
    /// [B, T, kv_lora_rank] and the shared key part k_pe [B, T, rope] before rotation.
    fn projections(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = match &self.q {
            QueryProj::Plain(q) => q.forward(x),
            QueryProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x))),
        };
        let kv_a = self.kv_a_proj_with_mqa.forward(x);
        let kv_parts = kv_a.split_with_sizes([self.kv_lora_rank, self.rope_dim], -1);
        let latent = self.kv_a_layernorm.forward(&kv_parts[0]);
        (q.view([b, t, self.heads, self.nope + self.rope_dim]), latent, kv_parts[1].shallow_clone())
    }

    /// Queries, keys and values [B, H, T, d] for attention among x's own tokens (cos/sin as in
    /// `project`). On CUDA with the `attn_layout` path, the rotary joins are openseek-kernels'
    /// `rope_query` and `rope_key` (one kernel per join and pass, [B, T, H, d] tensors handed over
    /// as transposed views; `rope_kernel` off: `project` and `expand`'s tensor ops).
    fn qkv(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        if !(x.device().is_cuda() && self.fast.attn_layout && self.fast.rope_kernel) {
            let (q, latent, k_rot) = self.project(x, rope, cos, sin);
            let (k, v) = self.expand(&latent, &k_rot);
            return (q, k, v);
        }
        let (b, t) = (x.size()[0], x.size()[1]);
        let (q, latent, k_pe) = self.projections(x);
        // cos/sin [T, rope] or [B, 1, T, rope] -> [T, rope] or [B, T, rope].
        let table = |c: &Tensor| if c.dim() == 2 { c.shallow_clone() } else { c.squeeze_dim(1) };
        let (cos, sin) = (table(cos), table(sin));
        let q = openseek_kernels::rope_query(&q, &cos, &sin, self.nope, rope.interleave(), true).expect("rope_query");
        let kv = self.kv_b_proj.forward(&latent).view([b, t, self.heads, self.nope + self.v_dim]);
        let (k, v) = openseek_kernels::rope_key(&kv, &k_pe, &cos, &sin, self.nope, rope.interleave(), true).expect("rope_key");
        (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    }

    /// Keys [B, H, K, nope + rope] and values [B, H, K, v] from latents [B, K, r] and k_rot [B, 1, K, rope].
    fn expand(&self, latent: &Tensor, k_rot: &Tensor) -> (Tensor, Tensor) {
        let (b, t) = (latent.size()[0], latent.size()[1]);
        let kv = self.kv_b_proj.forward(latent).view([b, t, self.heads, self.nope + self.v_dim]);
        if self.fast.attn_layout {
            let kv_parts = kv.split_with_sizes([self.nope, self.v_dim], -1);
            let k_rot = k_rot.transpose(1, 2).expand([b, t, self.heads, self.rope_dim], false);
            let k = Tensor::cat(&[&kv_parts[0], &k_rot], -1).transpose(1, 2);
            return (k, kv_parts[1].transpose(1, 2));
        }
        let kv_parts = kv.transpose(1, 2).split_with_sizes([self.nope, self.v_dim], -1);
        let k = Tensor::cat(&[&kv_parts[0], &k_rot.expand([b, self.heads, t, self.rope_dim], false)], -1);
        (k, kv_parts[1].shallow_clone())
    }

    fn output(&self, y: &Tensor) -> Tensor {
        let (b, t) = (y.size()[0], y.size()[2]);
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, t, self.heads * self.v_dim]))
    }

    /// An empty cache for `batch` sequences of up to `capacity` tokens.
    pub fn new_cache(&self, batch: i64, capacity: i64, kind: Kind, device: Device) -> MlaCache {
        MlaCache {
            latent: Tensor::zeros([batch, capacity, self.kv_lora_rank], (kind, device)),
            k_rot: Tensor::zeros([batch, 1, capacity, self.rope_dim], (kind, device)),
            len: 0,
        }
    }
}

/// One layer's KV cache in MLA form: the normalised latent (before kv_b_proj) and the rotated
/// shared key, preallocated to a capacity; `len` positions are filled.
pub struct MlaCache {
    /// [B, capacity, kv_lora_rank]
    pub latent: Tensor,
    /// [B, 1, capacity, qk_rope_head_dim]
    pub k_rot: Tensor,
    pub len: i64,
}

impl MlaCache {
    /// Store latents [B, S, r] and k_rot [B, 1, S, rope] after the cached ones; return all filled entries.
    fn append(&mut self, latent: &Tensor, k_rot: &Tensor) -> (Tensor, Tensor) {
        let s = latent.size()[1];
        let capacity = self.latent.size()[1];
        assert!(self.len + s <= capacity, "KV cache full: {} + {s} positions > capacity {capacity}", self.len);
        self.latent.narrow(1, self.len, s).copy_(latent);
        self.k_rot.narrow(2, self.len, s).copy_(k_rot);
        self.len += s;
        (self.latent.narrow(1, 0, self.len), self.k_rot.narrow(2, 0, self.len))
    }

    /// Keep only the batch rows `rows` (int64 indices), e.g. when some sequences have finished.
    pub fn keep_rows(&mut self, rows: &Tensor) {
        self.latent = self.latent.index_select(0, rows);
        self.k_rot = self.k_rot.index_select(0, rows);
    }
}
