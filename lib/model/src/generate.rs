//! Inference for evaluation: the forward pass over left-padded batches with an attention mask
//! (positions and masking as transformers derives them from `attention_mask`), and greedy
//! decoding with continuous batching: a KV cache of fixed rows (one sequence each, MLA's
//! compressed latent and rotated shared key per layer), prompts prefilled into free rows,
//! every row decoded one token per step, finished sequences leaving their row to the next prompt.

use crate::attention::{Attention, DecodeStep, MlaCache};
use crate::model::DeepseekV3;
use crate::moe::AuxCoefficients;
use openseek_common::Failure;
use openseek_kernels::CudaGraph;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

pub struct GenerateOptions {
    /// At most this many new tokens per prompt.
    pub max_new_tokens: usize,
    /// Token ids that end a sequence (not included in the output).
    pub eos: Vec<i64>,
    /// Most sequences decoded together (rows of the KV cache).
    pub batch_size: usize,
    /// Bound on the KV cache (bytes): fewer rows than `batch_size` when the longest prompt plus
    /// the budget would not fit.
    pub cache_bytes: usize,
    /// Prompt tokens (right-padded, longest first) per prefill forward.
    pub prefill_tokens: usize,
}

impl GenerateOptions {
    /// `batch_size` rows, a 2 GiB cache bound and prefills of up to 16,384 tokens.
    pub fn new(max_new_tokens: usize, eos: Vec<i64>, batch_size: usize) -> GenerateOptions {
        GenerateOptions { max_new_tokens, eos, batch_size, cache_bytes: 2 << 30, prefill_tokens: 16384 }
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
        let device = self.device();
        let t = ids.size()[1];
        let idx = Tensor::arange(t, (Kind::Int64, device));
        let (query, key) = (idx.unsqueeze(1), idx.unsqueeze(0));
        // A token always sees itself, so that padding rows attend to something (no NaN); real
        // tokens never see padding.
        let mask = key.le_tensor(&query).logical_and(&valid.unsqueeze(1)).logical_or(&key.eq_tensor(&query)).unsqueeze(1);
        let (mut x, cos, sin) = self.embed(ids, Some(&positions_of(&valid)));
        for layer in &self.layers {
            let mut attend = |a: &Attention, h: &Tensor| a.forward_masked(h, &self.rope, &cos, &sin, &mask);
            x = layer.forward_around(&x, &mut attend, &AuxCoefficients::default()).0;
        }
        self.head(&self.norm.forward(&x))
    }
}

/// The KV cache of continuous batching: every layer's [`MlaCache`] with the same rows; row r
/// holds one sequence's tokens at positions 0..len. On CUDA in bf16 (fast path `decode_graph`) the
/// decoding step is a CUDA graph per number of cache entries read (`keys`), captured on first use
/// and replayed: one launch instead of hundreds, the host's work per step reduced to copying the
/// rows' tokens and lengths in and the next tokens out.
pub struct KvCache {
    pub layers: Vec<MlaCache>,
    capacity: i64,
    graphs: Option<DecodeGraphs>,
}

/// Cache entries a decoding step reads: the longest row's length + 1 rounded up to a multiple of
/// this (at most the capacity), so that steps share shapes, and CUDA graphs.
const KEY_BLOCK: i64 = 128;

/// The captured decoding steps of a cache's rows: the input they read ([2, rows] int64: each row's
/// token and position) and, per number of keys, the graph and the next tokens [rows] it writes.
struct DecodeGraphs {
    input: Tensor,
    by_keys: HashMap<i64, (CudaGraph, Tensor)>,
}

impl KvCache {
    /// An empty cache of `rows` sequences of up to `capacity` tokens (prompt and new tokens).
    pub fn new(model: &DeepseekV3, rows: i64, capacity: i64) -> KvCache {
        let layers = model.layers.iter().map(|l| l.self_attn.new_cache(rows, capacity, model.compute_kind, model.device())).collect();
        KvCache { layers, capacity, graphs: None }
    }

    /// Bytes one row of `capacity` tokens takes.
    pub fn row_bytes(model: &DeepseekV3, capacity: usize) -> usize {
        let c = &model.config;
        let elem = if model.compute_kind == Kind::Float { 4 } else { 2 };
        capacity * (c.kv_lora_rank + c.qk_rope_head_dim) as usize * elem * model.layers.len()
    }

    fn rows(&self) -> i64 {
        self.layers.first().map_or(0, |c| c.latent.size()[0])
    }

    /// Keep only the rows `rows` (int64 indices), in that order (the graphs, made for the old
    /// rows, are dropped).
    fn keep_rows(&mut self, rows: &[i64], device: Device) {
        let rows = Tensor::from_slice(rows).to_device(device);
        for c in &mut self.layers {
            c.keep_rows(&rows);
        }
        self.graphs = None;
    }

    /// Run `prompts` (each at most the capacity) through the model into the cache rows `rows`;
    /// returns each prompt's last hidden state [n, hidden]. Right-padded causal batch: a token's
    /// output never sees the padding after it.
    pub fn prefill(&mut self, model: &DeepseekV3, prompts: &[&[i64]], rows: &[i64]) -> Tensor {
        let device = model.device();
        let (n, t) = (prompts.len() as i64, prompts.iter().map(|p| p.len()).max().unwrap_or(1) as i64);
        let mut ids = vec![0i64; (n * t) as usize];
        for (r, p) in prompts.iter().enumerate() {
            ids[r * t as usize..r * t as usize + p.len()].copy_from_slice(p);
        }
        let ids = Tensor::from_slice(&ids).view([n, t]).to_device(device);
        let rows = Tensor::from_slice(rows).to_device(device);
        let (mut x, cos, sin) = model.embed(&ids, None);
        for (layer, cache) in model.layers.iter().zip(&mut self.layers) {
            let mut attend = |a: &Attention, h: &Tensor| a.forward_prefill(h, &model.rope, &cos, &sin, cache, &rows);
            x = layer.forward_around(&x, &mut attend, &AuxCoefficients::default()).0;
        }
        let last: Vec<i64> = prompts.iter().enumerate().map(|(r, p)| r as i64 * t + p.len() as i64 - 1).collect();
        let x = x.view([n * t, -1]).index_select(0, &Tensor::from_slice(&last).to_device(device));
        model.norm.forward(&x)
    }

    /// The rows' tokens and lengths as one [2, rows] int64 tensor on the model's device, and the
    /// cache entries the step reads.
    fn step_input(&self, model: &DeepseekV3, tokens: &[i64], lens: &[i64]) -> (Tensor, i64) {
        assert_eq!(tokens.len() as i64, self.rows(), "one token per cache row");
        let longest = lens.iter().max().map_or(1, |m| m + 1);
        assert!(longest <= self.capacity, "KV cache full: position {} >= capacity {}", longest - 1, self.capacity);
        let keys = ((longest + KEY_BLOCK - 1) / KEY_BLOCK * KEY_BLOCK).min(self.capacity);
        let input = Tensor::from_slice(&[tokens, lens].concat()).view([2, tokens.len() as i64]).to_device(model.device());
        (input, keys)
    }

    /// One decoding step of every row: `tokens[r]` at position `lens[r]` (stored there); returns
    /// the last hidden states [rows, hidden]. Each row sees its own positions 0..=lens[r].
    pub fn decode(&mut self, model: &DeepseekV3, tokens: &[i64], lens: &[i64]) -> Tensor {
        let (input, keys) = self.step_input(model, tokens, lens);
        decode_step(model, &mut self.layers, &input, keys, self.capacity)
    }

    /// One decoding step of every row (as [`KvCache::decode`]) and each row's greedy next token
    /// (argmax of the logits), through the step's CUDA graph where the model takes that path.
    pub fn decode_greedy(&mut self, model: &DeepseekV3, tokens: &[i64], lens: &[i64]) -> Result<Vec<i64>, Failure> {
        let (input, keys) = self.step_input(model, tokens, lens);
        let graphed = model.device().is_cuda() && model.compute_kind == Kind::BFloat16 && model.norm.fast.decode_graph;
        if !graphed {
            return Ok(to_vec(&next_tokens(model, &decode_step(model, &mut self.layers, &input, keys, self.capacity))));
        }
        let graphs = self.graphs.get_or_insert_with(|| DecodeGraphs { input: input.zeros_like(), by_keys: HashMap::new() });
        graphs.input.copy_(&input);
        if let Some((graph, next)) = graphs.by_keys.get(&keys) {
            graph.replay().map_err(|e| Failure::software(format!("replaying the decoding step's CUDA graph: {e}")))?;
            return Ok(to_vec(next));
        }
        let (layers, capacity, input) = (&mut self.layers, self.capacity, graphs.input.shallow_clone());
        let device = match model.device() {
            Device::Cuda(d) => d,
            _ => unreachable!("graphs run on CUDA"),
        };
        let (graph, now, next) = CudaGraph::capture(device, || next_tokens(model, &decode_step(model, layers.as_mut_slice(), &input, keys, capacity)))
            .map_err(|e| Failure::software(format!("capturing the decoding step as a CUDA graph ({keys} keys): {e}")))?;
        graphs.by_keys.insert(keys, (graph, next));
        Ok(to_vec(&now))
    }
}

/// The decoding step of every cache row: `input` [2, rows] holds each row's token and its
/// position (where its latent is stored); attention reads the first `keys` entries of each row,
/// masked to the row's own positions. Returns the last hidden states [rows, hidden]. Only device
/// work: a CUDA graph can capture it.
fn decode_step(model: &DeepseekV3, layers: &mut [MlaCache], input: &Tensor, keys: i64, capacity: i64) -> Tensor {
    let device = model.device();
    let n = input.size()[1];
    let (ids, positions) = (input.get(0).view([n, 1]), input.get(1).view([n, 1]));
    let step = DecodeStep {
        at: Tensor::arange(n, (Kind::Int64, device)) * capacity + input.get(1),
        keys,
        mask: Tensor::arange(keys, (Kind::Int64, device)).unsqueeze(0).le_tensor(&positions).view([n, 1, 1, keys]),
    };
    let (mut x, cos, sin) = model.embed(&ids, Some(&positions));
    for (layer, cache) in model.layers.iter().zip(layers) {
        let mut attend = |a: &Attention, h: &Tensor| a.forward_decode(h, &model.rope, &cos, &sin, cache, &step);
        x = layer.forward_around(&x, &mut attend, &AuxCoefficients::default()).0;
    }
    model.norm.forward(&x.select(1, 0))
}

/// Greedy next tokens [rows] int64 from last hidden states [rows, hidden].
fn next_tokens(model: &DeepseekV3, hidden: &Tensor) -> Tensor {
    model.head(hidden).argmax(-1, false)
}

/// A sequence in a cache row.
struct Slot {
    prompt: usize,
    /// Tokens stored in the row (prompt and fed new tokens); the next token goes there.
    len: i64,
    /// The last token produced, fed at the next step.
    next: i64,
}

/// Greedy continuation of each prompt with continuous batching. `stop(i, new_tokens_so_far)`
/// returns true when sequence i is finished (os-eval decodes and checks stop strings); it is
/// called after every new token, the last one included. A sequence also ends at an EOS token
/// (left out of the output) or after `max_new_tokens`. `check` is called before every forward
/// pass; its error ends decoding (e.g. a stop signal). Returns only the new tokens, in input
/// order. Each row's tokens depend on its own prompt only, so the output does not depend on
/// `batch_size` (up to rounding of the batched kernels). Prompts must not be empty.
pub fn greedy(
    model: &DeepseekV3,
    prompts: &[Vec<i64>],
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[i64]) -> bool,
    check: &dyn Fn() -> Result<(), Failure>,
) -> Result<Vec<Vec<i64>>, Failure> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Failure::software(format!("greedy: prompt {i} is empty (a continuation needs at least one token)")));
    }
    let mut out = vec![Vec::new(); prompts.len()];
    if opts.max_new_tokens == 0 || prompts.is_empty() {
        return Ok(out);
    }
    let device = model.device();
    let capacity = prompts.iter().map(Vec::len).max().unwrap() + opts.max_new_tokens;
    let by_memory = (opts.cache_bytes / KvCache::row_bytes(model, capacity).max(1)).max(1);
    let rows = opts.batch_size.max(1).min(by_memory).min(prompts.len());
    // Longest first, so that a prefill pads little; results go back in input order.
    let mut waiting: Vec<usize> = (0..prompts.len()).collect();
    waiting.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut waiting = waiting.into_iter().peekable();
    tch::no_grad(|| {
        let mut cache = KvCache::new(model, rows as i64, capacity as i64);
        let mut slots: Vec<Option<Slot>> = (0..rows).map(|_| None).collect();
        // Whether sequence i may go on after producing `tok`.
        let mut take = |i: usize, tok: i64, out: &mut [Vec<i64>]| -> bool {
            if opts.eos.contains(&tok) {
                return false;
            }
            out[i].push(tok);
            !stop(i, &out[i]) && out[i].len() < opts.max_new_tokens
        };
        loop {
            // Refill free rows once half of them (or all active ones) are free: a prefill costs
            // many decoding steps (launches, not arithmetic), and free rows cost little.
            let free: Vec<usize> = (0..slots.len()).filter(|&r| slots[r].is_none()).collect();
            let active = slots.len() - free.len();
            if waiting.peek().is_some() && !free.is_empty() && (free.len() * 2 >= slots.len() || active == 0) {
                let mut free = free.into_iter();
                loop {
                    // One prefill: waiting prompts for free rows, within the token bound.
                    let mut batch: Vec<(usize, usize)> = Vec::new();
                    while let Some(&i) = waiting.peek() {
                        let longest = batch.first().map_or(prompts[i].len(), |&(j, _)| prompts[j].len());
                        if free.len() == 0 || (!batch.is_empty() && (batch.len() + 1) * longest > opts.prefill_tokens) {
                            break;
                        }
                        batch.push((i, free.next().expect("a free row")));
                        waiting.next();
                    }
                    if batch.is_empty() {
                        break;
                    }
                    check()?;
                    let seqs: Vec<&[i64]> = batch.iter().map(|&(i, _)| prompts[i].as_slice()).collect();
                    let rows: Vec<i64> = batch.iter().map(|&(_, r)| r as i64).collect();
                    let hidden = cache.prefill(model, &seqs, &rows);
                    let first_tokens = to_vec(&next_tokens(model, &hidden));
                    for (&(i, r), tok) in batch.iter().zip(first_tokens) {
                        if take(i, tok, &mut out) {
                            slots[r] = Some(Slot { prompt: i, len: prompts[i].len() as i64, next: tok });
                        }
                    }
                }
                continue;
            }
            if active == 0 {
                if waiting.peek().is_none() {
                    return Ok(out);
                }
                continue;
            }
            // Nothing left to admit: shrink the cache when at most half its rows are busy.
            if waiting.peek().is_none() && active * 2 <= slots.len() && slots.len() > 1 {
                let keep: Vec<i64> = (0..slots.len() as i64).filter(|&r| slots[r as usize].is_some()).collect();
                cache.keep_rows(&keep, device);
                slots.retain(Option::is_some);
            }
            check()?;
            // Free rows decode a dummy token at their last position (masked, overwritten later).
            let tokens: Vec<i64> = slots.iter().map(|s| s.as_ref().map_or(0, |s| s.next)).collect();
            let lens: Vec<i64> = slots.iter().map(|s| s.as_ref().map_or(0, |s| s.len)).collect();
            let next = cache.decode_greedy(model, &tokens, &lens)?;
            for (slot, tok) in slots.iter_mut().zip(next) {
                if let Some(s) = slot {
                    s.len += 1;
                    s.next = tok;
                    if !take(s.prompt, tok, &mut out) {
                        *slot = None;
                    }
                }
            }
        }
    })
}

fn to_vec(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_device(Device::Cpu)).expect("int64 tokens")
}
