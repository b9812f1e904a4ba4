//! Scoring: log p(t_i | t_<i) of every token after the first, for batches of sequences, and the
//! summed log-likelihoods of continuations that evaluation needs. Sequences are right-padded into
//! batches (exact for a causal model) and the LM head runs only where a score is read, in chunks
//! of positions so [tokens, vocab] logits never sit in memory at once. Multiple-choice questions
//! share their context: it runs once, its KV cache is copied to each choice, and only the
//! continuations run after it.

use crate::attention::MlaCache;
use crate::generate::KvCache;
use crate::model::DeepseekV3;
use tch::{Device, Kind, Tensor};

/// Per-token log-probs of each sequence (length n-1 for n tokens; empty for n < 2).
/// `batch_tokens` bounds padded tokens per forward pass.
pub fn token_logprobs(model: &DeepseekV3, seqs: &[Vec<i64>], batch_tokens: usize) -> Vec<Vec<f64>> {
    tch::no_grad(|| {
        let mut out = vec![Vec::new(); seqs.len()];
        // Longest first so each batch pads little; results go back in input order.
        let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].len() >= 2).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut start = 0;
        while start < order.len() {
            let t = seqs[order[start]].len();
            let rows = (batch_tokens / t).max(1).min(order.len() - start);
            let batch = &order[start..start + rows];
            let mut flat = vec![0i64; rows * t];
            for (r, &i) in batch.iter().enumerate() {
                flat[r * t..r * t + seqs[i].len()].copy_from_slice(&seqs[i]);
            }
            let ids = Tensor::from_slice(&flat).view([rows as i64, t as i64]).to_device(model.device());
            let hidden = model.hidden(&ids);
            for (r, &i) in batch.iter().enumerate() {
                out[i] = sequence_logprobs(model, &hidden.get(r as i64), &ids.get(r as i64), seqs[i].len());
            }
            start += rows;
        }
        out
    })
}

/// Log-probs of ids[1..n] from hidden states [T, H], the head applied 1024 positions at a time.
fn sequence_logprobs(model: &DeepseekV3, hidden: &Tensor, ids: &Tensor, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n - 1);
    let chunk = 1024;
    let mut p = 0;
    while p < n - 1 {
        let len = chunk.min(n - 1 - p) as i64;
        let logits = model.head(&hidden.narrow(0, p as i64, len)).to_kind(Kind::Float);
        let targets = ids.narrow(0, p as i64 + 1, len).unsqueeze(1);
        let lp = logits.log_softmax(-1, Kind::Float).gather(1, &targets, false).squeeze_dim(1).to_kind(Kind::Double);
        out.extend(Vec::<f64>::try_from(&lp.to_device(tch::Device::Cpu)).unwrap());
        p += len as usize;
    }
    out
}

/// One log-likelihood request as token ids: the score is the sum of log p(continuation[j] |
/// context, continuation[..j]). lighteval's input is `(context + continuation)[..-1]`, left-truncated
/// to the model's length; [`Request::window`] gives that.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub context: Vec<i64>,
    pub continuation: Vec<i64>,
}

impl Request {
    /// The model input (`(context + continuation)[..-1]`, its last `max_length` tokens) and the
    /// index of the first position whose next-token log-prob is scored.
    pub fn window(&self, max_length: usize) -> (Vec<i64>, usize) {
        let mut all: Vec<i64> = self.context.iter().chain(&self.continuation).copied().collect();
        all.pop();
        let start = all.len().saturating_sub(max_length);
        let input = all.split_off(start);
        let first = input.len().saturating_sub(self.continuation.len());
        (input, first)
    }
}

/// Summed continuation log-probs of independent requests (inputs from [`Request::window`]):
/// longest first, right-padded batches of at most `batch_tokens` padded tokens, the head only at
/// the scored positions. Empty continuations score 0.
pub fn loglikelihoods(model: &DeepseekV3, requests: &[Request], max_length: usize, batch_tokens: usize) -> Vec<f64> {
    let windows: Vec<(Vec<i64>, usize)> = requests.iter().map(|r| r.window(max_length)).collect();
    let mut out = vec![0.0; requests.len()];
    let mut order: Vec<usize> = (0..requests.len()).filter(|&i| !requests[i].continuation.is_empty()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(windows[i].0.len()));
    let device = model.device();
    tch::no_grad(|| {
        let mut start = 0;
        while start < order.len() {
            let t = windows[order[start]].0.len().max(1);
            let rows = (batch_tokens / t).max(1).min(order.len() - start);
            let batch = &order[start..start + rows];
            let mut flat = vec![0i64; rows * t];
            let (mut at, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
            for (r, &i) in batch.iter().enumerate() {
                let (input, first) = &windows[i];
                flat[r * t..r * t + input.len()].copy_from_slice(input);
                let cont = &requests[i].continuation;
                // Positions first.. predict the last (input.len() - first) continuation tokens.
                let scored = input.len() - first;
                for (k, p) in (*first..input.len()).enumerate() {
                    at.push((r * t + p) as i64);
                    targets.push(cont[cont.len() - scored + k]);
                    owner.push(i);
                }
            }
            let ids = Tensor::from_slice(&flat).view([rows as i64, t as i64]).to_device(device);
            let hidden = model.hidden(&ids);
            let h = hidden.view([(rows * t) as i64, -1]).index_select(0, &Tensor::from_slice(&at).to_device(device));
            let ident: Vec<usize> = (0..targets.len()).collect();
            let lp = Vec::<f64>::try_from(&head_logprobs(model, &h, &ident, &targets).to_device(Device::Cpu)).unwrap();
            for (i, v) in owner.into_iter().zip(lp) {
                out[i] += v;
            }
            start += rows;
        }
    });
    out
}

/// A multiple-choice question as token ids: one context, several continuations.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceGroup {
    pub context: Vec<i64>,
    pub continuations: Vec<Vec<i64>>,
}

/// A batch stops taking questions once its padded contexts exceed this many times their real
/// tokens, provided it holds at least [`MIN_BATCH_TOKENS`] tokens (padding is compute thrown away;
/// very small batches leave the GPU waiting on kernel launches).
const MAX_PADDING: f64 = 1.25;
const MIN_BATCH_TOKENS: usize = 4096;

/// Summed continuation log-probs of multiple-choice questions, the shared context computed once:
/// a batch of contexts runs with a KV cache, the cache rows are copied to each choice, and the
/// continuations (without their last token) run against it. Equal, up to rounding, to
/// [`loglikelihoods`] of each (context, continuation). Questions whose context + continuation
/// exceed `max_length`, or with an empty context or continuation, go through [`loglikelihoods`].
/// Batches hold questions of similar context length and their choices run in groups of similar
/// continuation length; the scores stay on the device until the end (one transfer, no host waits).
pub fn choice_loglikelihoods(model: &DeepseekV3, groups: &[ChoiceGroup], max_length: usize, batch_tokens: usize) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = groups.iter().map(|g| vec![0.0; g.continuations.len()]).collect();
    let fits = |g: &ChoiceGroup| {
        !g.context.is_empty()
            && !g.continuations.is_empty()
            && g.continuations.iter().all(|c| !c.is_empty() && g.context.len() + c.len() - 1 <= max_length)
    };
    let (mut shared, mut single) = (Vec::new(), Vec::new());
    for (i, g) in groups.iter().enumerate() {
        if fits(g) {
            shared.push(i)
        } else {
            single.push(i)
        }
    }
    let requests: Vec<(usize, usize, Request)> = single
        .iter()
        .flat_map(|&i| groups[i].continuations.iter().enumerate().map(move |(c, cont)| (i, c, Request { context: groups[i].context.clone(), continuation: cont.clone() })))
        .collect();
    let plain: Vec<Request> = requests.iter().map(|r| r.2.clone()).collect();
    for ((i, c, _), v) in requests.iter().zip(loglikelihoods(model, &plain, max_length, batch_tokens)) {
        out[*i][*c] = v;
    }
    if shared.is_empty() {
        return out;
    }
    // Each choice's slot in one flat score vector that stays on the device.
    let mut slot = vec![0usize; groups.len()];
    let mut total = 0;
    for &i in &shared {
        slot[i] = total;
        total += groups[i].continuations.len();
    }
    let device = model.device();
    let mut scores = Tensor::zeros([total as i64], (Kind::Double, device));
    // Longest context first; a batch holds questions while its padded contexts plus continuation
    // tokens stay within batch_tokens and the context padding within MAX_PADDING.
    let cont_len = |g: &ChoiceGroup| g.continuations.iter().map(Vec::len).max().unwrap_or(0);
    shared.sort_by_key(|&i| std::cmp::Reverse((groups[i].context.len(), cont_len(&groups[i]))));
    tch::no_grad(|| {
        let mut start = 0;
        while start < shared.len() {
            let t = groups[shared[start]].context.len();
            let (mut end, mut real, mut conts) = (start, 0, 0);
            while end < shared.len() {
                let g = &groups[shared[end]];
                let (r, c) = (real + g.context.len(), conts + g.continuations.iter().map(Vec::len).sum::<usize>());
                let padded = (end - start + 1) * t;
                if end > start && (padded + c > batch_tokens || (padded + c > MIN_BATCH_TOKENS && padded as f64 > MAX_PADDING * r as f64)) {
                    break;
                }
                (real, conts) = (r, c);
                end += 1;
            }
            shared_batch(model, groups, &shared[start..end], &slot, &mut scores, batch_tokens);
            start = end;
        }
    });
    let flat = Vec::<f64>::try_from(&scores.to_device(Device::Cpu)).unwrap();
    for &i in &shared {
        out[i].copy_from_slice(&flat[slot[i]..slot[i] + groups[i].continuations.len()]);
    }
    out
}

/// A host vector on the device without waiting for it: copied through pinned memory,
/// asynchronously on CUDA.
fn upload<T: tch::kind::Element>(v: &[T], device: Device) -> Tensor {
    let t = Tensor::from_slice(v);
    if device.is_cuda() {
        t.pin_memory(device).to_device_(device, T::KIND, true, false)
    } else {
        t
    }
}

/// Log-probs [P] (f64, on the device) of `targets[p]` after hidden state `hidden[row[p]]`
/// ([M, H]), `row` non-decreasing: the head and its log-softmax (fp32) run once per row, however
/// many targets read it (the first token of every choice of a question reads one row).
fn head_logprobs(model: &DeepseekV3, hidden: &Tensor, row: &[usize], targets: &[i64]) -> Tensor {
    let device = hidden.device();
    let m = hidden.size()[0] as usize;
    let chunk = 2048;
    let mut parts = Vec::new();
    let (mut p, mut k) = (0, 0);
    while p < m {
        let len = chunk.min(m - p);
        let k_end = k + row[k..].iter().take_while(|&&r| r < p + len).count();
        if k_end > k {
            let lp = model.head(&hidden.narrow(0, p as i64, len as i64)).log_softmax(-1, Kind::Float);
            let vocab = lp.size()[1];
            let flat: Vec<i64> = row[k..k_end].iter().zip(&targets[k..k_end]).map(|(&r, &t)| (r - p) as i64 * vocab + t).collect();
            parts.push(lp.view([-1]).index_select(0, &upload(&flat, device)).to_kind(Kind::Double));
        }
        (p, k) = (p + len, k_end);
    }
    if parts.is_empty() {
        Tensor::zeros([0], (Kind::Double, device))
    } else {
        Tensor::cat(&parts, 0)
    }
}

/// One batch of [`choice_loglikelihoods`]: contexts right-padded to T with a KV cache, then the
/// choices (without their last token), longest first, in groups right-padded to their longest,
/// each against a copy of its questions' cache rows (at most 4 × `batch_tokens` cached plus new
/// positions per group). Scores are added at `slot[question] + choice`.
fn shared_batch(model: &DeepseekV3, groups: &[ChoiceGroup], batch: &[usize], slot: &[usize], scores: &mut Tensor, batch_tokens: usize) {
    let device = model.device();
    let b = batch.len();
    let t = batch.iter().map(|&i| groups[i].context.len()).max().unwrap();
    let s = batch.iter().flat_map(|&i| groups[i].continuations.iter().map(Vec::len)).max().unwrap();
    let mut ids = vec![0i64; b * t];
    let mut valid = vec![false; b * t];
    for (r, &i) in batch.iter().enumerate() {
        let ctx = &groups[i].context;
        ids[r * t..r * t + ctx.len()].copy_from_slice(ctx);
        valid[r * t..r * t + ctx.len()].fill(true);
    }
    let ids = upload(&ids, device).view([b as i64, t as i64]);
    let valid = upload(&valid, device).view([b as i64, t as i64]);
    let positions = Tensor::arange(t as i64, (Kind::Int64, device)).unsqueeze(0).expand([b as i64, t as i64], false);
    let mut cache = KvCache::new(model, b as i64, (t + s - 1) as i64);
    let hidden = model.hidden_masked(&ids, &positions, &valid, Some(&mut cache));

    // The first continuation token of each choice is predicted at its context's last position.
    let (mut last, mut row, mut first_targets, mut first_slots, mut choices) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, &i) in batch.iter().enumerate() {
        last.push((r * t + groups[i].context.len() - 1) as i64);
        for (c, cont) in groups[i].continuations.iter().enumerate() {
            row.push(r);
            first_targets.push(cont[0]);
            first_slots.push((slot[i] + c) as i64);
            choices.push((r, c));
        }
    }
    let h = hidden.view([(b * t) as i64, -1]).index_select(0, &upload(&last, device));
    let _ = scores.index_add_(0, &upload(&first_slots, device), &head_logprobs(model, &h, &row, &first_targets));

    // The rest: choices with more than one token, longest first, in groups of similar length.
    let cont = |&(r, c): &(usize, usize)| &groups[batch[r]].continuations[c];
    choices.retain(|k| cont(k).len() > 1);
    choices.sort_by_key(|k| std::cmp::Reverse(cont(k).len()));
    let mut start = 0;
    while start < choices.len() {
        let sm = cont(&choices[start]).len() - 1;
        let (mut end, mut real) = (start, 0);
        while end < choices.len() {
            let (r, padded) = (real + cont(&choices[end]).len() - 1, (end - start + 1) * sm);
            if end > start && ((end - start + 1) * (t + sm) > 4 * batch_tokens || (padded > MIN_BATCH_TOKENS && padded as f64 > MAX_PADDING * r as f64)) {
                break;
            }
            real = r;
            end += 1;
        }
        let part = &choices[start..end];
        let n = part.len();
        let (mut cids, mut cvalid, mut cpos) = (vec![0i64; n * sm], vec![false; n * sm], vec![0i64; n * sm]);
        let (mut at, mut targets, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (k, &(r, c)) in part.iter().enumerate() {
            let g = &groups[batch[r]];
            let cont = &g.continuations[c];
            for j in 0..sm {
                cpos[k * sm + j] = (g.context.len() + j) as i64;
            }
            for j in 0..cont.len() - 1 {
                cids[k * sm + j] = cont[j];
                cvalid[k * sm + j] = true;
                at.push(k * sm + j);
                targets.push(cont[j + 1]);
                slots.push((slot[batch[r]] + c) as i64);
            }
        }
        let rows = upload(&part.iter().map(|&(r, _)| r as i64).collect::<Vec<_>>(), device);
        let mut copy = KvCache {
            layers: cache.layers.iter().map(|l| MlaCache { latent: l.latent.index_select(0, &rows), k_rot: l.k_rot.index_select(0, &rows), len: l.len }).collect(),
        };
        let cids = upload(&cids, device).view([n as i64, sm as i64]);
        let cvalid = upload(&cvalid, device).view([n as i64, sm as i64]);
        let cpos = upload(&cpos, device).view([n as i64, sm as i64]);
        let all_valid = Tensor::cat(&[&valid.index_select(0, &rows), &cvalid], 1);
        let hidden = model.hidden_masked(&cids, &cpos, &all_valid, Some(&mut copy));
        // Every scored position is its own head row (no sharing): `row` is the identity.
        let h = hidden.view([(n * sm) as i64, -1]).index_select(0, &upload(&at.iter().map(|&a| a as i64).collect::<Vec<_>>(), device));
        let ident: Vec<usize> = (0..at.len()).collect();
        let _ = scores.index_add_(0, &upload(&slots, device), &head_logprobs(model, &h, &ident, &targets));
        start = end;
    }
}

/// Text to token ids.
pub type Encoder<'a> = &'a dyn Fn(&str) -> Vec<i64>;

/// Read one sequence per line of a JSONL file: `{"tokens": [ids]}`, or `{"text": "…"}` turned into
/// ids by `encode` (None: token input expected). Ids must be below `vocab`.
pub fn read_sequences(
    path: &std::path::Path,
    encode: Option<Encoder>,
    vocab: i64,
) -> Result<Vec<Vec<i64>>, openseek_common::Failure> {
    use openseek_common::Failure;
    let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read", &e))?;
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| Failure::data(format!("{}:{}: {what}", path.display(), n + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("not a JSON object: {e}")))?;
        let ids: Vec<i64> = match encode {
            None => v["tokens"]
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_i64()).collect())
                .ok_or_else(|| at("expected {\"tokens\": [integer ids]}".into()))?,
            Some(encode) => encode(v["text"].as_str().ok_or_else(|| at("expected {\"text\": \"...\"}".into()))?),
        };
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(at(format!("token id {bad} is outside the model's vocabulary (0..{vocab})")));
        }
        out.push(ids);
    }
    Ok(out)
}

/// One output line: `{"sum_logprob": …, "token_logprobs": [...]}`.
pub fn score_line(logprobs: &[f64]) -> String {
    serde_json::json!({"sum_logprob": logprobs.iter().sum::<f64>(), "token_logprobs": logprobs}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::expected_shapes;
    use crate::config::Config;

    fn tiny_model() -> DeepseekV3 {
        let cfg = Config::from_json(serde_json::json!({
            "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
            "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "n_shared_experts": 1, "n_routed_experts": 4, "num_experts_per_tok": 2, "routed_scaling_factor": 2.5,
            "kv_lora_rank": 16, "q_lora_rank": null, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
            "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "rope_theta": 10000.0, "hidden_act": "silu"
        }))
        .unwrap();
        tch::manual_seed(3);
        let w = expected_shapes(&cfg)
            .into_iter()
            .map(|(n, s)| {
                let t = if s.len() == 1 && n.ends_with("norm.weight") {
                    Tensor::ones(s.as_slice(), (Kind::Float, Device::Cpu))
                } else {
                    Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)) / (*s.last().unwrap() as f64).sqrt()
                };
                (n, t)
            })
            .collect();
        DeepseekV3::from_weights(cfg, w)
    }

    #[test]
    fn shared_context_equals_one_forward_per_request() {
        let model = tiny_model();
        let seq = |seed: i64, n: usize| -> Vec<i64> { (0..n as i64).map(|i| (seed * 31 + i * 17) % 97).collect() };
        let groups = vec![
            ChoiceGroup { context: seq(1, 12), continuations: vec![seq(2, 3), seq(3, 1), seq(4, 6), seq(5, 2)] },
            ChoiceGroup { context: seq(6, 5), continuations: vec![seq(7, 4), seq(8, 4)] },
            ChoiceGroup { context: seq(9, 1), continuations: vec![seq(10, 1), seq(11, 9)] },
            // Longer than max_length: left-truncated, one request at a time.
            ChoiceGroup { context: seq(12, 60), continuations: vec![seq(13, 8), seq(14, 2)] },
            // An empty continuation scores 0.
            ChoiceGroup { context: seq(15, 7), continuations: vec![vec![], seq(16, 2)] },
        ];
        // Tiny batches too: several batches of questions, one question per batch.
        for batch_tokens in [4096, 30, 1] {
            let got = choice_loglikelihoods(&model, &groups, 64, batch_tokens);
            for (g, scores) in groups.iter().zip(&got) {
                let reqs: Vec<Request> = g.continuations.iter().map(|c| Request { context: g.context.clone(), continuation: c.clone() }).collect();
                let want = loglikelihoods(&model, &reqs, 64, 1);
                for (a, b) in scores.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "batch_tokens {batch_tokens}: {a} vs {b}");
                }
            }
            assert_eq!(got[4][0], 0.0);
            assert!(got[0][0] < -1.0);
        }
        // Many questions of mixed lengths: batches split by padding and by size, choices grouped by length.
        let mut rng = 7u64;
        let mut next = |n: u64| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let many: Vec<ChoiceGroup> = (0..300)
            .map(|q| ChoiceGroup {
                context: seq(q, 1 + next(40) as usize),
                continuations: (0..1 + next(4)).map(|c| seq(q * 5 + c as i64, 1 + next(12) as usize)).collect(),
            })
            .collect();
        let reqs: Vec<Request> = many.iter().flat_map(|g| g.continuations.iter().map(|c| Request { context: g.context.clone(), continuation: c.clone() })).collect();
        let want = loglikelihoods(&model, &reqs, 64, 1 << 20);
        for batch_tokens in [1 << 20, 5000] {
            let got: Vec<f64> = choice_loglikelihoods(&model, &many, 64, batch_tokens).concat();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "batch_tokens {batch_tokens}: {a} vs {b}");
            }
        }
        // The plain path equals summing `token_logprobs` of the whole window.
        let r = Request { context: seq(1, 12), continuation: seq(2, 3) };
        let (input, _) = r.window(64);
        let mut full = input.clone();
        full.push(*r.continuation.last().unwrap());
        let all = token_logprobs(&model, &[full], 4096).remove(0);
        let want: f64 = all[all.len() - 3..].iter().sum();
        assert!((loglikelihoods(&model, &[r], 64, 4096)[0] - want).abs() < 1e-6);
    }
}
