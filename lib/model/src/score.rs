//! Scoring: log p(t_i | t_<i) of every token after the first, for batches of sequences, and the
//! summed log-likelihoods of continuations that evaluation needs. Sequences run packed, without
//! padding: a batch is one sequence of documents through the projections, norms and experts,
//! attention within each document (on CUDA in 16-bit flash attention's varlen kernels over one row
//! of document segments; else per document, crate::packed); the LM head runs only where a score is
//! read, in chunks of positions so [tokens, vocab] logits never sit in memory at once. Batches are
//! queued on the device without waiting for it ([`queue_token_logprobs`]). Multiple-choice
//! questions share their context: it runs once, packed with the choices.

use crate::device::upload;
use crate::model::DeepseekV3;
use crate::token_groups::TokenGroups;
use openseek_common::Failure;
use tch::{Device, Kind, Tensor};

/// Per-token log-probs of each sequence (length n-1 for n tokens; empty for n < 2): a batch holds
/// sequences (longest first) while their tokens stay within `batch_tokens` and, padded per
/// sequence for attention, within twice that; one sequence longer than that runs alone.
/// `check` is called before every batch; its error ends scoring.
pub fn token_logprobs(model: &DeepseekV3, seqs: &[Vec<i64>], batch_tokens: usize, check: &dyn Fn() -> Result<(), Failure>) -> Result<Vec<Vec<f64>>, Failure> {
    Ok(queue_token_logprobs(model, seqs, batch_tokens, check)?.wait())
}

/// [`token_logprobs`] queued on the device: every batch is launched without waiting for the device
/// (index lists go up through pinned memory, the log-probs stay on the device), so the host can
/// prepare and queue more work (the next chunk of documents) while the device computes;
/// [`QueuedLogprobs::wait`] brings the values back (a copy that waits for all work queued so far).
/// Each batch is one row of whole documents
/// ([`DeepseekV3::hidden_documents`]); the head runs only at the scored positions.
pub fn queue_token_logprobs(model: &DeepseekV3, seqs: &[Vec<i64>], batch_tokens: usize, check: &dyn Fn() -> Result<(), Failure>) -> Result<QueuedLogprobs, Failure> {
    let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].len() >= 2).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let device = model.device();
    let mut parts = Vec::new();
    tch::no_grad(|| -> Result<(), Failure> {
        for batch in packed_batches(&order, |i| seqs[i].len(), batch_tokens) {
            check()?;
            let (mut ids, mut lens, mut at, mut targets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &i in batch {
                let start = ids.len() as i64;
                ids.extend_from_slice(&seqs[i]);
                lens.push(seqs[i].len());
                at.extend(start..start + seqs[i].len() as i64 - 1);
                targets.extend_from_slice(&seqs[i][1..]);
            }
            let hidden = model.hidden_documents(&ids, &lens);
            let h = hidden.index_select(0, &upload(&at, device));
            parts.push(gather_logprobs(model, &h, &upload(&targets, device)));
        }
        Ok(())
    })?;
    Ok(QueuedLogprobs { lens: seqs.iter().map(|s| s.len().saturating_sub(1)).collect(), order, parts })
}

/// Log-probs being computed on the device ([`queue_token_logprobs`]).
pub struct QueuedLogprobs {
    /// Scored tokens of each sequence, in the caller's order.
    lens: Vec<usize>,
    /// The scored sequences in the order of the values.
    order: Vec<usize>,
    /// fp32 log-probs per batch, on the device.
    parts: Vec<Tensor>,
}

impl QueuedLogprobs {
    /// Wait for the device and return each sequence's log-probs, in the caller's order.
    pub fn wait(self) -> Vec<Vec<f64>> {
        let mut out = vec![Vec::new(); self.lens.len()];
        let mut values = to_host(self.parts).into_iter();
        for i in self.order {
            out[i] = values.by_ref().take(self.lens[i]).collect();
        }
        out
    }
}

/// Device log-probs (fp32 tensors) as one host vector, in order (one copy, which waits for the device).
fn to_host(parts: Vec<Tensor>) -> Vec<f64> {
    if parts.is_empty() {
        return Vec::new();
    }
    let values = Vec::<f32>::try_from(&Tensor::cat(&parts, 0).to_device(Device::Cpu)).expect("fp32 log-probs");
    values.into_iter().map(f64::from).collect()
}

/// Consecutive runs of `order` (sorted longest first by `len`) whose lengths sum to at most
/// `batch_tokens` and whose count times the run's longest stays within twice that; a run holds
/// at least one item. The runs are balanced: each takes an equal share of the tokens still to
/// place over the fewest runs of at most `batch_tokens` that can hold them, rather than being
/// filled to the brim with a small run left at the end.
fn packed_batches(order: &[usize], len: impl Fn(usize) -> usize, batch_tokens: usize) -> Vec<&[usize]> {
    let mut remaining: usize = order.iter().map(|&i| len(i)).sum();
    let budget = batch_tokens.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let share = remaining.div_ceil(remaining.div_ceil(budget));
        let longest = len(order[start]);
        let (mut end, mut tokens) = (start, 0);
        while end < order.len() && tokens < share {
            let n = len(order[end]);
            if end > start && (tokens + n > batch_tokens || (end - start + 1) * longest > 2 * batch_tokens) {
                break;
            }
            tokens += n;
            end += 1;
        }
        out.push(&order[start..end]);
        remaining -= tokens;
        start = end;
    }
    out
}

/// Log-probs of `targets[i]` given hidden states `hidden[i]` ([M, H] → M values, fp32, on the
/// device), the head applied to chunks of rows. On CUDA in bf16 (fast path `logprob_kernel`) each
/// chunk's padded bf16 logits go through openseek-kernels' `target_logprobs` (fp32 inside, one read
/// of each row); otherwise fp32 logits and log_softmax.
fn gather_logprobs(model: &DeepseekV3, hidden: &Tensor, targets: &Tensor) -> Tensor {
    let m = hidden.size()[0];
    let kernel = hidden.device().is_cuda() && hidden.kind() == Kind::BFloat16 && model.norm.fast.logprob_kernel;
    let chunk = if kernel { 8192 } else { 2048 };
    let vocab = model.head_weight().size()[0];
    let mut parts = Vec::new();
    let mut p = 0;
    while p < m {
        let len = chunk.min(m - p);
        let (h, t) = (hidden.narrow(0, p, len), targets.narrow(0, p, len));
        parts.push(if kernel {
            let logits = model.head_padded(&h);
            openseek_kernels::target_logprobs(&logits, &t.contiguous(), vocab).expect("log-prob kernel over the head's logits")
        } else {
            let logits = model.head(&h).to_kind(Kind::Float);
            logits.log_softmax(-1, Kind::Float).gather(1, &t.unsqueeze(1), false).squeeze_dim(1)
        });
        p += len;
    }
    if parts.is_empty() {
        return Tensor::zeros([0], (Kind::Float, hidden.device()));
    }
    Tensor::cat(&parts, 0)
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
            let ids = upload(&flat, device).view([rows as i64, t as i64]);
            let hidden = model.hidden(&ids);
            let h = hidden.view([(rows * t) as i64, -1]).index_select(0, &upload(&at, device));
            let lp = to_host(vec![gather_logprobs(model, &h, &upload(&targets, device))]);
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

impl ChoiceGroup {
    /// Tokens the question takes packed: its context, then each continuation without its last token.
    fn packed_len(&self) -> usize {
        self.context.len() + self.continuations.iter().map(|c| c.len() - 1).sum::<usize>()
    }
}

/// Summed continuation log-probs of multiple-choice questions, the shared context computed once
/// and nothing padded: a batch of questions runs as one packed sequence (crate::packed), each
/// choice attending to its question's context and to itself. Equal, up to rounding, to
/// [`loglikelihoods`] of each (context, continuation). Questions whose context + continuation
/// exceed `max_length`, or with an empty context or continuation, go through [`loglikelihoods`].
/// `check` is called before every batch; its error ends scoring.
pub fn choice_loglikelihoods(
    model: &DeepseekV3,
    groups: &[ChoiceGroup],
    max_length: usize,
    batch_tokens: usize,
    check: &dyn Fn() -> Result<(), Failure>,
) -> Result<Vec<Vec<f64>>, Failure> {
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
    // Longest first, packed batches as token_logprobs makes them.
    shared.sort_by_key(|&i| std::cmp::Reverse(groups[i].packed_len()));
    tch::no_grad(|| {
        for batch in packed_batches(&shared, |i| groups[i].packed_len(), batch_tokens) {
            check()?;
            for (i, v) in batch.iter().zip(packed_batch(model, groups, batch)) {
                out[*i] = v;
            }
        }
        Ok(out)
    })
}

/// One batch of [`choice_loglikelihoods`]: per question its context, then each continuation but
/// its last token; the first continuation token is predicted at the context's last token, the
/// others at the continuation's own tokens.
fn packed_batch(model: &DeepseekV3, groups: &[ChoiceGroup], batch: &[usize]) -> Vec<Vec<f64>> {
    let device = model.device();
    let (mut ids, mut segments) = (Vec::new(), Vec::with_capacity(batch.len()));
    let (mut at, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &i) in batch.iter().enumerate() {
        let g = &groups[i];
        ids.extend_from_slice(&g.context);
        let context_last = (ids.len() - 1) as i64;
        let mut segment = vec![g.context.len()];
        for (c, cont) in g.continuations.iter().enumerate() {
            let start = ids.len();
            at.push(context_last);
            targets.push(cont[0]);
            owner.push((r, c));
            for (j, &target) in cont.iter().enumerate().skip(1) {
                at.push((start + j - 1) as i64);
                targets.push(target);
                owner.push((r, c));
            }
            ids.extend_from_slice(&cont[..cont.len() - 1]);
            segment.push(cont.len() - 1);
        }
        segments.push(segment);
    }
    let layout = TokenGroups::new(&segments, device);
    let hidden = model.hidden_grouped(&ids, &layout);
    let h = hidden.index_select(0, &upload(&at, device));
    let lp = to_host(vec![gather_logprobs(model, &h, &upload(&targets, device))]);
    let mut out: Vec<Vec<f64>> = batch.iter().map(|&i| vec![0.0; groups[i].continuations.len()]).collect();
    for (&(r, c), v) in owner.iter().zip(lp) {
        out[r][c] += v;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::expected_shapes;
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
            let got = choice_loglikelihoods(&model, &groups, 64, batch_tokens, &|| Ok(())).unwrap();
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
        // Many questions of mixed lengths, in one batch and in several.
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
            let got: Vec<f64> = choice_loglikelihoods(&model, &many, 64, batch_tokens, &|| Ok(())).unwrap().concat();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "batch_tokens {batch_tokens}: {a} vs {b}");
            }
        }
        // The plain path equals summing `token_logprobs` of the whole window.
        let r = Request { context: seq(1, 12), continuation: seq(2, 3) };
        let (input, _) = r.window(64);
        let mut full = input.clone();
        full.push(*r.continuation.last().unwrap());
        let all = token_logprobs(&model, &[full], 4096, &|| Ok(())).unwrap().remove(0);
        let want: f64 = all[all.len() - 3..].iter().sum();
        assert!((loglikelihoods(&model, &[r], 64, 4096)[0] - want).abs() < 1e-6);
    }

    #[test]
    fn batches_are_balanced_within_the_budget() {
        let lens: Vec<usize> = (0..1000).map(|i| 6 + (i * 37) % 140).collect();
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        let total: usize = lens.iter().sum();
        let sizes = |budget: usize| -> Vec<usize> {
            let batches = packed_batches(&order, |i| lens[i], budget);
            assert_eq!(batches.concat(), order);
            batches.iter().map(|b| b.iter().map(|&i| lens[i]).sum()).collect()
        };
        // With room to spare, the fewest batches, none more than two documents from another.
        for budget in [total / 3, 4096, total] {
            let n = sizes(budget);
            assert_eq!(n.len(), total.div_ceil(budget), "budget {budget}: {n:?}");
            let (lo, hi) = (n.iter().min().unwrap(), n.iter().max().unwrap());
            assert!(n.iter().all(|&x| x <= budget) && hi - lo <= 2 * 145, "budget {budget}: {n:?}");
        }
        // Without (the documents cannot fill 8 batches to the token): one batch more, split evenly
        // with the one before rather than a remainder.
        let n = sizes(total / 8 + 1);
        assert!(n.len() == 9 && n.iter().all(|&x| x <= total / 8 + 1) && *n.iter().min().unwrap() > total / 20, "{n:?}");
        // One item longer than the budget runs alone.
        assert_eq!(packed_batches(&[0, 1], |i| [50, 3][i], 10), vec![&[0][..], &[1][..]]);
    }

    #[test]
    fn packed_token_logprobs_equal_one_forward_per_sequence() {
        let model = tiny_model();
        let seqs: Vec<Vec<i64>> = [5usize, 1, 17, 2, 9, 30, 0, 12].iter().enumerate().map(|(s, &n)| (0..n as i64).map(|i| (s as i64 * 13 + i * 7) % 97).collect()).collect();
        let want: Vec<Vec<f64>> = seqs
            .iter()
            .map(|s| {
                if s.len() < 2 {
                    return vec![];
                }
                let ids = Tensor::from_slice(s).unsqueeze(0);
                let lp = tch::no_grad(|| model.forward(&ids)).squeeze_dim(0).log_softmax(-1, Kind::Float);
                let targets = Tensor::from_slice(&s[1..]).unsqueeze(1);
                Vec::<f64>::try_from(&lp.narrow(0, 0, s.len() as i64 - 1).gather(1, &targets, false).squeeze_dim(1).to_kind(Kind::Double)).unwrap()
            })
            .collect();
        for batch_tokens in [4096, 20, 1] {
            let got = token_logprobs(&model, &seqs, batch_tokens, &|| Ok(())).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), w.len());
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() < 1e-5, "batch_tokens {batch_tokens}: {a} vs {b}");
                }
            }
        }
        // A stop request before a batch ends scoring with its error.
        let e = token_logprobs(&model, &seqs, 20, &|| Err(Failure::usage("stop"))).unwrap_err();
        assert_eq!(e.message, "stop");
    }
}
