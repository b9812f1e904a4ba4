//! Scoring: log p(t_i | t_<i) of every token after the first, for batches of sequences, and the
//! summed log-likelihoods of continuations that evaluation needs. Sequences are right-padded into
//! batches (exact for a causal model) and the LM head runs only where a score is read, in chunks
//! of positions so [tokens, vocab] logits never sit in memory at once. Multiple-choice questions
//! share their context: it runs once, packed with the choices and no padding (crate::packed).

use crate::model::DeepseekV3;
use crate::packed::TokenGroups;
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

/// Log-probs of `targets[i]` given hidden states `hidden[i]` ([M, H] → M values), the head applied
/// `chunk` rows at a time, returned on the CPU.
fn gather_logprobs(model: &DeepseekV3, hidden: &Tensor, targets: &Tensor) -> Vec<f64> {
    let m = hidden.size()[0];
    let chunk = 2048;
    let mut out = Vec::with_capacity(m as usize);
    let mut p = 0;
    while p < m {
        let len = chunk.min(m - p);
        let logits = model.head(&hidden.narrow(0, p, len)).to_kind(Kind::Float);
        let lp = logits.log_softmax(-1, Kind::Float).gather(1, &targets.narrow(0, p, len).unsqueeze(1), false).squeeze_dim(1);
        out.extend(Vec::<f64>::try_from(&lp.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap());
        p += len;
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
            let lp = gather_logprobs(model, &h, &Tensor::from_slice(&targets).to_device(device));
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
    // Longest first; a batch holds questions while their packed tokens stay within batch_tokens
    // and, padded per question for attention, within twice that.
    shared.sort_by_key(|&i| std::cmp::Reverse(groups[i].packed_len()));
    tch::no_grad(|| {
        let mut start = 0;
        while start < shared.len() {
            let longest = groups[shared[start]].packed_len();
            let (mut end, mut tokens) = (start, 0);
            while end < shared.len() {
                let n = groups[shared[end]].packed_len();
                if end > start && (tokens + n > batch_tokens || (end - start + 1) * longest > 2 * batch_tokens) {
                    break;
                }
                tokens += n;
                end += 1;
            }
            let batch = &shared[start..end];
            for (i, v) in batch.iter().zip(packed_batch(model, groups, batch)) {
                out[*i] = v;
            }
            start = end;
        }
    });
    out
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
            for j in 1..cont.len() {
                at.push((start + j - 1) as i64);
                targets.push(cont[j]);
                owner.push((r, c));
            }
            ids.extend_from_slice(&cont[..cont.len() - 1]);
            segment.push(cont.len() - 1);
        }
        segments.push(segment);
    }
    let layout = TokenGroups::new(&segments, device);
    let hidden = model.hidden_grouped(&ids, &layout);
    let h = hidden.index_select(0, &Tensor::from_slice(&at).to_device(device));
    let lp = gather_logprobs(model, &h, &Tensor::from_slice(&targets).to_device(device));
    let mut out: Vec<Vec<f64>> = batch.iter().map(|&i| vec![0.0; groups[i].continuations.len()]).collect();
    for (&(r, c), v) in owner.iter().zip(lp) {
        out[r][c] += v;
    }
    out
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
