//! The model side of an evaluation: openseek-eval's items turned into token ids for
//! openseek-model (shared-context log-likelihoods, greedy generation with stop strings).

use openseek_common::Failure;
use openseek_eval::{Backend, ChoiceItem, GenerateItem, StopCheck, StopStrings};
use openseek_model::generate::{greedy, GenerateOptions};
use openseek_model::score::{choice_loglikelihoods, ChoiceGroup};
use openseek_model::DeepseekV3;
use openseek_tokenizer::Tokenizer;

pub struct ModelBackend<'a> {
    pub model: &'a DeepseekV3,
    pub tokenizer: &'a Tokenizer,
    /// Requests are left-truncated to this many tokens.
    pub max_length: usize,
    /// Tokens per forward pass (log-likelihood).
    pub batch_tokens: usize,
    /// Most sequences decoded together (continuous batching).
    pub generate_batch: usize,
    /// Bound on the generation KV cache (bytes).
    pub cache_bytes: usize,
}

fn go_on() -> Result<(), Failure> {
    Ok(())
}

/// One small question and one short generation, so that CUDA's lazy initialisation (kernel
/// loading, library handles) is done before the first task is timed; on CUDA also a batch of
/// 256 questions (about 25,000 tokens), whose matrix products take the kernels large batches use.
pub fn warm_up(model: &DeepseekV3) {
    let g = ChoiceGroup { context: vec![1, 2, 3, 4], continuations: vec![vec![5, 6], vec![7]] };
    let _ = choice_loglikelihoods(model, &[g], 64, 4096, &go_on);
    if model.device().is_cuda() {
        let vocab = model.config.vocab_size.min(50_000);
        let question = |q: i64| ChoiceGroup {
            context: (0..64 + q % 64).map(|i| (q * 131 + i * 7) % vocab).collect(),
            continuations: (0..4).map(|c| (0..2 + (q + c) % 12).map(|i| (q * 17 + c * 5 + i) % vocab).collect()).collect(),
        };
        let batch: Vec<ChoiceGroup> = (0..256).map(question).collect();
        let _ = choice_loglikelihoods(model, &batch, 4096, 1 << 17, &go_on);
    }
    let opts = GenerateOptions::new(2, vec![], 2);
    let _ = greedy(model, &[vec![1, 2, 3], vec![4]], &opts, &mut |_, _| false, &go_on);
}

fn ids(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

impl Backend for ModelBackend<'_> {
    fn loglikelihoods(&mut self, items: &[&ChoiceItem], check: StopCheck) -> Result<Vec<Vec<f64>>, Failure> {
        // One group per question when its choices share the context ids (always, for lighteval's
        // requests); otherwise one group per choice.
        let mut groups = Vec::new();
        let mut owner = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ctx = item.requests.first().map(|r| &r.context_ids);
            if item.requests.iter().all(|r| Some(&r.context_ids) == ctx) {
                groups.push(ChoiceGroup {
                    context: ctx.map(|c| ids(c)).unwrap_or_default(),
                    continuations: item.requests.iter().map(|r| ids(&r.continuation_ids)).collect(),
                });
                owner.push((i, None));
            } else {
                for (c, r) in item.requests.iter().enumerate() {
                    groups.push(ChoiceGroup { context: ids(&r.context_ids), continuations: vec![ids(&r.continuation_ids)] });
                    owner.push((i, Some(c)));
                }
            }
        }
        let scores = choice_loglikelihoods(self.model, &groups, self.max_length, self.batch_tokens, check)?;
        let mut out: Vec<Vec<f64>> = items.iter().map(|it| vec![0.0; it.requests.len()]).collect();
        for ((i, c), s) in owner.into_iter().zip(scores) {
            match c {
                None => out[i] = s,
                Some(c) => out[i][c] = s[0],
            }
        }
        Ok(out)
    }

    fn generate(&mut self, items: &[&GenerateItem], check: StopCheck) -> Result<Vec<String>, Failure> {
        let eos: Vec<i64> = self.tokenizer.eos_id().map(|e| e as i64).into_iter().collect();
        // lighteval keeps the last (max_length - budget) prompt tokens.
        let prompts: Vec<Vec<i64>> = items
            .iter()
            .map(|g| {
                let keep = self.max_length.saturating_sub(g.max_new_tokens).max(1);
                let p = &g.context_ids;
                if p.is_empty() {
                    vec![self.tokenizer.eos_id().unwrap_or(0) as i64]
                } else {
                    ids(&p[p.len().saturating_sub(keep)..])
                }
            })
            .collect();
        // One decoding run with the largest budget; each sequence stops at its own budget or
        // at one of its stop strings.
        let tok = self.tokenizer;
        let mut stops = StopStrings::new(items.len());
        let mut stop = |k: usize, new: &[i64]| -> bool {
            if new.len() >= items[k].max_new_tokens {
                return true;
            }
            stops.found(tok, k, &new.iter().map(|&t| t as u32).collect::<Vec<_>>(), &items[k].stop)
        };
        let budget = items.iter().map(|g| g.max_new_tokens).max().unwrap_or(0);
        let opts = GenerateOptions { max_new_tokens: budget, eos, batch_size: self.generate_batch, cache_bytes: self.cache_bytes, prefill_tokens: self.batch_tokens };
        greedy(self.model, &prompts, &opts, &mut stop, check)?
            .iter()
            .map(|g| self.tokenizer.decode(&g.iter().map(|&t| t as u32).collect::<Vec<_>>()))
            .collect()
    }
}
