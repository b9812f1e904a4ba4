//! Multi-head latent attention (MLA) as transformers' DeepSeek-V3 computes it.

use crate::config::Config;
use crate::documents::DocumentSegments;
use crate::fast_paths::FastPaths;
use crate::layers::{Linear, RmsNorm};
use crate::weights::Weights;
use crate::token_groups::TokenGroups;
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

    /// Attention with an explicit mask, for padded batches. x [B, S, hidden]; cos/sin [B, 1, S,
    /// rope_dim] at each token's position; `mask` [B, 1, S, S] bool, true where a query may see a key.
    pub fn forward_masked(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Tensor {
        let (q, latent, k_rot) = self.project(x, rope, cos, sin);
        let (k, v) = self.expand(&latent, &k_rot);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, self.scale, false);
        self.output(&y)
    }

    /// Causal attention over prompts x [n, T, hidden] right-padded at positions 0..T (cos/sin [T,
    /// rope_dim]), storing their latents and rotated keys in the cache rows `rows` [n] (int64) at
    /// 0..T. Outputs at padding positions are not meaningful; those before it never see it.
    pub fn forward_prefill(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor, cache: &mut MlaCache, rows: &Tensor) -> Tensor {
        let (q, latent, k_rot) = self.project(x, rope, cos, sin);
        cache.store_prefix(rows, &latent, &k_rot);
        let (k, v) = self.expand(&latent, &k_rot);
        let y = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, self.scale, false);
        self.output(&y)
    }

    /// One decoding step of every cache row: x [rows, 1, hidden] at cos/sin [rows, 1, 1, rope_dim];
    /// its latent is stored where `step` says and attention runs over the cache entries `step`
    /// allows, absorbed (the per-head keys and values of the cache are never built).
    pub fn forward_decode(&self, x: &Tensor, rope: &Rope, cos: &Tensor, sin: &Tensor, cache: &mut MlaCache, step: &DecodeStep) -> Tensor {
        let (q, latent, k_rot) = self.project(x, rope, cos, sin);
        cache.store_at(&step.at, &latent, &k_rot);
        self.output(&self.attend_absorbed(&q, &cache.latent.narrow(1, 0, step.keys), &cache.k_rot.narrow(2, 0, step.keys), &step.mask))
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
    /// whole cache are never built. Equal to `expand` + attention up to rounding (scores and softmax in fp32).
    /// q [B, H, S, nope + rope], latent [B, K, r], k_rot [B, 1, K, rope], mask [B, 1, S, K] -> [B, H, S, v].
    fn attend_absorbed(&self, q: &Tensor, latent: &Tensor, k_rot: &Tensor, mask: &Tensor) -> Tensor {
        let (b, h, s, k) = (q.size()[0], self.heads, q.size()[2], latent.size()[1]);
        let r = self.kv_lora_rank;
        let w = self.kv_b_proj.weight.to_kind(q.kind()).view([h, self.nope + self.v_dim, r]);
        let (w_k, w_v) = (w.narrow(1, 0, self.nope), w.narrow(1, self.nope, self.v_dim));
        let q_parts = q.split_with_sizes([self.nope, self.rope_dim], -1);
        // q_nope · (W_k latent) = (q_nope W_k) · latent, per head.
        let q_latent = q_parts[0].matmul(&w_k);
        // The latent and rotary parts as two products summed in fp32: the cache (strided views of
        // a preallocated buffer) is read in place, never joined into one key tensor.
        let latent_part = q_latent.reshape([b, h * s, r]).matmul(&latent.transpose(1, 2));
        let rope_part = q_parts[1].reshape([b, h * s, self.rope_dim]).matmul(&k_rot.squeeze_dim(1).transpose(1, 2));
        let scores = ((latent_part.to_kind(Kind::Float) + rope_part.to_kind(Kind::Float)) * self.scale).view([b, h, s, k]);
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

    /// An empty cache of `rows` sequences of up to `capacity` tokens each.
    pub fn new_cache(&self, rows: i64, capacity: i64, kind: Kind, device: Device) -> MlaCache {
        MlaCache {
            latent: Tensor::zeros([rows, capacity, self.kv_lora_rank], (kind, device)),
            k_rot: Tensor::zeros([rows, 1, capacity, self.rope_dim], (kind, device)),
        }
    }
}

/// Where one decoding step of every cache row writes and reads.
pub struct DecodeStep {
    /// [rows] int64: each row's new entry, as a flat index (row * capacity + position).
    pub at: Tensor,
    /// Cache entries attention reads (positions 0..keys).
    pub keys: i64,
    /// [rows, 1, 1, keys] bool: which of them each row sees.
    pub mask: Tensor,
}

/// One layer's KV cache in MLA form: per row (one sequence each), the normalised latent (before
/// kv_b_proj) and the rotated shared key of its tokens at their positions, preallocated to a
/// capacity. Which entries are filled is the caller's business (the attention masks say).
pub struct MlaCache {
    /// [rows, capacity, kv_lora_rank]
    pub latent: Tensor,
    /// [rows, 1, capacity, qk_rope_head_dim]
    pub k_rot: Tensor,
}

impl MlaCache {
    fn capacity(&self) -> i64 {
        self.latent.size()[1]
    }

    /// Store latents [n, T, r] and k_rot [n, 1, T, rope] of rows `rows` [n] at positions 0..T.
    fn store_prefix(&mut self, rows: &Tensor, latent: &Tensor, k_rot: &Tensor) {
        let t = latent.size()[1];
        assert!(t <= self.capacity(), "KV cache: {t} prompt positions > capacity {}", self.capacity());
        let _ = self.latent.narrow(1, 0, t).index_copy_(0, rows, latent);
        let _ = self.k_rot.narrow(2, 0, t).index_copy_(0, rows, k_rot);
    }

    /// Store one token's latent [rows, 1, r] and k_rot [rows, 1, 1, rope] per row at the flat
    /// indices `at` [rows] (row * capacity + position).
    fn store_at(&mut self, at: &Tensor, latent: &Tensor, k_rot: &Tensor) {
        let (rows, cap) = (self.latent.size()[0], self.capacity());
        let n = latent.size()[0];
        let _ = self.latent.view([rows * cap, -1]).index_copy_(0, at, &latent.reshape([n, -1]));
        let _ = self.k_rot.view([rows * cap, -1]).index_copy_(0, at, &k_rot.reshape([n, -1]));
    }

    /// Keep only the rows `rows` (int64 indices), in that order.
    pub fn keep_rows(&mut self, rows: &Tensor) {
        self.latent = self.latent.index_select(0, rows);
        self.k_rot = self.k_rot.index_select(0, rows);
    }
}
