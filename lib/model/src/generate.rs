//! Inference for evaluation: the forward pass over left-padded batches with an attention mask
//! (positions and masking as transformers derives them from `attention_mask`), and greedy
//! decoding with a KV cache that holds MLA's compressed latent and rotated shared key per layer.

use crate::attention::MlaCache;
use crate::model::DeepseekV3;
use crate::moe::AuxCoefficients;
use tch::{Kind, Tensor};

pub struct GenerateOptions {
    /// At most this many new tokens per prompt.
    pub max_new_tokens: usize,
    /// Token ids that end a sequence (not included in the output).
    pub eos: Vec<i64>,
    /// Prompts decoded together (left-padded to the longest of them).
    pub batch_size: usize,
}

/// The KV cache of every layer for one batch of sequences.
pub struct KvCache {
    pub layers: Vec<MlaCache>,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` tokens (prompt and new tokens).
    pub fn new(model: &DeepseekV3, batch: i64, capacity: i64) -> KvCache {
        let layers = model.layers.iter().map(|l| l.self_attn.new_cache(batch, capacity, model.compute_kind, model.device())).collect();
        KvCache { layers }
    }

    /// Keep only the batch rows `rows` (int64 indices).
    pub fn keep_rows(&mut self, rows: &Tensor) {
        for c in &mut self.layers {
            c.keep_rows(rows);
        }
    }
}

/// Positions as transformers' `generate` derives them: `cumsum(mask) - 1`, 0 at padding.
pub fn positions_of(valid: &Tensor) -> Tensor {
    (valid.cumsum(-1, Kind::Int64) - 1).masked_fill(&valid.logical_not(), 0)
}

impl DeepseekV3 {
    /// Logits [B, T, vocab] for ids [B, T] with `attention_mask` [B, T] (non-zero at tokens, zero at
    /// padding, left or right), as transformers computes them with that mask and the positions of
    /// `positions_of`. Rows at padding positions are not meaningful.
    pub fn forward_masked(&self, ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let valid = attention_mask.ne(0);
        self.head(&self.hidden_masked(ids, &positions_of(&valid), &valid, None))
    }

    /// Final hidden states [B, S, hidden] for new tokens `ids` [B, S] at `positions` [B, S].
    /// `valid` [B, K] (bool) marks which of the K keys are tokens: the cached ones first, then these S.
    /// Each token sees the valid keys at or before it; with a cache, the new keys are appended to it.
    pub fn hidden_masked(&self, ids: &Tensor, positions: &Tensor, valid: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let device = self.device();
        let (s, k) = (ids.size()[1], valid.size()[1]);
        let past = k - s;
        let key = Tensor::arange(k, (Kind::Int64, device));
        let query = Tensor::arange_start(past, k, (Kind::Int64, device)).unsqueeze(1);
        let causal = key.unsqueeze(0).le_tensor(&query);
        // A token always sees itself, so that padding rows attend to something (no NaN); real
        // tokens never see padding.
        let mask = causal.logical_and(&valid.unsqueeze(1)).logical_or(&key.unsqueeze(0).eq_tensor(&query)).unsqueeze(1);
        let (mut x, cos, sin) = self.embed(ids, Some(positions));
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let mut c = c;
            let mut attend = |a: &crate::attention::Attention, h: &Tensor| a.forward_masked(h, &self.rope, &cos, &sin, &mask, c.take());
            x = layer.forward_around(&x, &mut attend, &AuxCoefficients::default()).0;
        }
        self.norm.forward(&x)
    }
}

/// Greedy continuation of each prompt (left-padded batches, KV cache). `stop(i, new_tokens_so_far)`
/// returns true when sequence i is finished (os-eval decodes and checks stop strings); it is called
/// after every new token, the last one included. A sequence also ends at an EOS token (left out of the output) or after
/// `max_new_tokens`. Returns only the new tokens. Prompts must not be empty.
pub fn greedy(model: &DeepseekV3, prompts: &[Vec<i64>], opts: &GenerateOptions, stop: &mut dyn FnMut(usize, &[i64]) -> bool) -> Vec<Vec<i64>> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        panic!("greedy: prompt {i} is empty (a continuation needs at least one token)");
    }
    let mut out = vec![Vec::new(); prompts.len()];
    if opts.max_new_tokens == 0 {
        return out;
    }
    // Longest first so that each batch pads little; results go back in input order.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    tch::no_grad(|| {
        for batch in order.chunks(opts.batch_size.max(1)) {
            greedy_batch(model, prompts, batch, opts, stop, &mut out);
        }
    });
    out
}

fn greedy_batch(
    model: &DeepseekV3,
    prompts: &[Vec<i64>],
    batch: &[usize],
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[i64]) -> bool,
    out: &mut [Vec<i64>],
) {
    let device = model.device();
    let b = batch.len() as i64;
    let t = batch.iter().map(|&i| prompts[i].len()).max().unwrap() as i64;
    let mut ids = vec![0i64; (b * t) as usize];
    let mut valid = vec![false; (b * t) as usize];
    for (r, &i) in batch.iter().enumerate() {
        let row = (r as i64 * t) as usize + (t as usize - prompts[i].len());
        ids[row..row + prompts[i].len()].copy_from_slice(&prompts[i]);
        valid[row..row + prompts[i].len()].fill(true);
    }
    let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
    let mut valid = Tensor::from_slice(&valid).view([b, t]).to_device(device);
    let positions = positions_of(&valid);
    let mut cache = KvCache::new(model, b, t + opts.max_new_tokens as i64);
    let hidden = model.hidden_masked(&ids, &positions, &valid, Some(&mut cache));
    let mut next = model.head(&hidden.select(1, -1)).argmax(-1, false);
    let mut next_pos = positions.select(1, -1) + 1;
    // Which prompts (indices into `prompts`) the batch rows still hold.
    let mut active: Vec<usize> = batch.to_vec();
    loop {
        let tokens = Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu)).unwrap();
        let mut keep = Vec::with_capacity(active.len());
        for (r, (&i, &tok)) in active.iter().zip(&tokens).enumerate() {
            if opts.eos.contains(&tok) {
                continue;
            }
            out[i].push(tok);
            let stopped = stop(i, &out[i]);
            if !stopped && out[i].len() < opts.max_new_tokens {
                keep.push(r as i64);
            }
        }
        if keep.is_empty() {
            return;
        }
        if keep.len() < active.len() {
            let rows = Tensor::from_slice(&keep).to_device(device);
            cache.keep_rows(&rows);
            valid = valid.index_select(0, &rows);
            next = next.index_select(0, &rows);
            next_pos = next_pos.index_select(0, &rows);
            active = keep.iter().map(|&r| active[r as usize]).collect();
        }
        let n = active.len() as i64;
        valid = Tensor::cat(&[&valid, &valid.ones_like().narrow(1, 0, 1)], 1);
        let hidden = model.hidden_masked(&next.view([n, 1]), &next_pos.view([n, 1]), &valid, Some(&mut cache));
        next = model.head(&hidden.select(1, 0)).argmax(-1, false);
        next_pos += 1;
    }
}
