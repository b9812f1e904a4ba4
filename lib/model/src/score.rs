//! Scoring: log p(t_i | t_<i) of every token after the first, for batches of sequences.
//! Sequences are right-padded into batches (exact for a causal model) and the LM head runs in
//! chunks of positions so the [T, vocab] logits of long sequences never sit in memory at once.

use crate::model::DeepseekV3;
use tch::{Kind, Tensor};

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
