//! Requests as lighteval v0.3.0 builds them. Log-likelihood: the context's trailing whitespace
//! moves to the front of the continuation, context ids = enc(context), continuation ids =
//! enc(context + continuation)[len(enc(context))..], the model input = (context ids +
//! continuation ids) without its last token, left-truncated. Generation: the whole prompt,
//! stop strings and a token budget. Few-shot examples (GSM8K's 5) come from CPython's
//! `random.Random(42)`.

use openseek_common::Failure;
use serde::{Deserialize, Serialize};
use openseek_tokenizer::Tokenizer;

use crate::pyrandom::PyRandom;
use crate::prompts::Doc;
use crate::tasks::Task;
use crate::text::{char_len, py_rstrip};

/// Which evaluation convention builds the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Harness {
    /// lighteval v0.3.0 with OpenSeek's task file (the seeds' numbers).
    Lighteval,
    /// EleutherAI lm-evaluation-harness where it differs (see [`Options::harness`]).
    LmEval,
}

impl Harness {
    pub fn parse(s: &str) -> Result<Harness, Failure> {
        match s {
            "lighteval" => Ok(Harness::Lighteval),
            "lm-eval" | "lm-evaluation-harness" | "lm_eval" => Ok(Harness::LmEval),
            _ => Err(Failure::usage(format!("--harness {s}: expected lighteval or lm-eval"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Harness::Lighteval => "lighteval",
            Harness::LmEval => "lm-eval",
        }
    }
}

/// How requests are built.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model's maximum sequence length (inputs are left-truncated to it). Default 4096.
    pub max_length: usize,
    /// Splits instead of the tasks' defaults: one for every task (`validation`) or per task
    /// (`arc=validation,gsm8k=test`; a benchmark's name covers its subtasks, e.g. `arc`, `mmlu`);
    /// see [`Options::split_for`].
    pub split: Option<String>,
    /// Only the first N documents of each task (after reading; GSM8K shots are still drawn as
    /// for the full split, so the first N prompts equal those of a full run).
    pub limit: Option<usize>,
    /// Reproduce lighteval v0.3.0's generation budget quirk (see [`generation_budget`]).
    pub lighteval_budget_quirk: bool,
    /// Seed of the GSM8K shot sampler (lighteval: 42).
    pub fewshot_seed: u64,
    /// The convention: lighteval (default) or lm-evaluation-harness where it differs.
    pub harness: Harness,
}

impl Default for Options {
    fn default() -> Options {
        Options { max_length: 4096, split: None, limit: None, lighteval_budget_quirk: false, fewshot_seed: 42, harness: Harness::Lighteval }
    }
}

impl Options {
    /// The split `task` reads: from [`Options::split`] (an entry for its name, else for its
    /// benchmark, else a split given for all tasks) or the task's default.
    pub fn split_for(&self, task: &Task) -> Result<String, Failure> {
        let Some(spec) = self.split.as_deref() else { return Ok(task.default_split().to_string()) };
        let entries = parse_splits(spec)?;
        let family = task.name.split(':').next().unwrap_or(&task.name);
        let pick = [Some(task.name.as_str()), Some(family), None].into_iter().find_map(|key| entries.iter().find(|(k, _)| k.as_deref() == key));
        Ok(pick.map_or(task.default_split(), |(_, v)| v.as_str()).to_string())
    }

    /// Check the options before any work: `--limit` at least 1, `--split` well formed with
    /// every task it names known.
    pub fn check(&self) -> Result<(), Failure> {
        if self.limit == Some(0) {
            return Err(Failure::usage("--limit 0: no documents would be evaluated (scores of nothing are NaN); give at least 1"));
        }
        if let Some(spec) = &self.split {
            for (key, _) in parse_splits(spec)? {
                if let Some(k) = key {
                    Task::parse_list(&k).map_err(|e| Failure::usage(format!("--split {spec}: {}", e.message)))?;
                }
            }
        }
        Ok(())
    }
}

/// `validation` → [(None, validation)]; `arc=validation,gsm8k=test` → [(Some(arc), validation), ...].
fn parse_splits(spec: &str) -> Result<Vec<(Option<String>, String)>, Failure> {
    let bad = |why: &str| Failure::usage(format!("--split {spec}: {why}; expected a split (validation) or task=split pairs (arc=validation,gsm8k=test)"));
    if !spec.contains('=') {
        return if spec.trim().is_empty() || spec.contains(',') { Err(bad("not one split name")) } else { Ok(vec![(None, spec.trim().to_string())]) };
    }
    spec.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => Ok((Some(k.trim().to_string()), v.trim().to_string())),
            _ => Err(bad(&format!("{pair:?} is not task=split"))),
        })
        .collect()
}

/// One log-likelihood request: one choice of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct LoglikelihoodRequest {
    /// The context after the whitespace move.
    pub context: String,
    /// The continuation after the whitespace move.
    pub continuation: String,
    pub context_ids: Vec<u32>,
    pub continuation_ids: Vec<u32>,
    /// What acc_norm ("nospace") divides by: code points of the choice, minus 1 when it starts
    /// with a space.
    pub norm_chars: usize,
}

impl LoglikelihoodRequest {
    /// The model input and the index of the first scored position: `input[first..]` are the
    /// positions whose next-token log-probs, gathered at `continuation_ids`, sum to the score.
    /// The input is `(context_ids + continuation_ids)[..len-1]`, keeping its last `max_length`.
    pub fn input(&self, max_length: usize) -> (Vec<u32>, usize) {
        let mut all: Vec<u32> = Vec::with_capacity(self.context_ids.len() + self.continuation_ids.len());
        all.extend_from_slice(&self.context_ids);
        all.extend_from_slice(&self.continuation_ids);
        all.pop();
        let start = all.len().saturating_sub(max_length);
        let input = all[start..].to_vec();
        let first = input.len().saturating_sub(self.continuation_ids.len());
        (input, first)
    }
}

/// A multiple-choice document: one request per choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    pub doc_index: usize,
    pub query: String,
    pub choices: Vec<String>,
    pub gold: Vec<usize>,
    pub requests: Vec<LoglikelihoodRequest>,
}

/// A generative document: greedy decoding of `context_ids` until a stop string, EOS or
/// `max_new_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateItem {
    pub doc_index: usize,
    pub context: String,
    pub context_ids: Vec<u32>,
    /// Stop strings; the generated text is cut before the first one. EOS also stops.
    pub stop: Vec<String>,
    pub max_new_tokens: usize,
    pub golds: Vec<String>,
}

/// What the model is asked for one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Choice(ChoiceItem),
    Generate(GenerateItem),
}

/// lighteval's `tok_encode_pair`; an empty context becomes the EOS token (lighteval's
/// `loglikelihood` does the same), with the choice encoded alone.
pub fn loglikelihood_request(tok: &Tokenizer, context: &str, choice: &str) -> LoglikelihoodRequest {
    let n = char_len(choice);
    let norm_chars = if choice.starts_with(' ') { n - 1 } else { n };
    if context.is_empty() {
        if let Some(eos) = tok.eos_id() {
            return LoglikelihoodRequest {
                context: String::new(),
                continuation: choice.to_string(),
                context_ids: vec![eos],
                continuation_ids: tok.encode(choice),
                norm_chars,
            };
        }
    }
    let kept = py_rstrip(context);
    let (ctx, cont) = (kept.to_string(), format!("{}{choice}", &context[kept.len()..]));
    let whole = tok.encode(&format!("{ctx}{cont}"));
    let context_ids = tok.encode(&ctx);
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or(&[]).to_vec();
    LoglikelihoodRequest { context: ctx, continuation: cont, context_ids, continuation_ids, norm_chars }
}

/// The generation budget. Correct (default): `min(max_new, max_length - prompt tokens)`, at
/// least 1. lighteval v0.3.0 (`quirk`): it measures the prompt in *characters*: a prompt of more
/// than `max_length` characters gets 1 token, otherwise `min(max_new, max_length - chars)`. On
/// GSM8K 5-shot at 4096 this cuts 19 of 1,319 prompts to one token (which then score 0).
/// The budget is per request; lighteval takes it from the first (longest) prompt of each batch
/// and applies it to the whole batch, which agrees at batch size 1.
pub fn generation_budget(max_new: usize, max_length: usize, prompt_tokens: usize, prompt_chars: usize, quirk: bool) -> usize {
    let used = if quirk { prompt_chars } else { prompt_tokens };
    if used > max_length {
        1
    } else {
        max_new.min(max_length - used).max(1)
    }
}

/// lighteval's few-shot sampler: `Random(seed)` shuffles the order of the evaluated documents,
/// then for each document in that order draws `sample(shot_docs, k)`. Returns, per evaluated
/// document (file order), the indices of its shots, and its position in the evaluation order.
pub fn fewshot_indices(n_docs: usize, n_shot_docs: usize, k: usize, seed: u64) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut rng = PyRandom::new(seed);
    let mut order: Vec<usize> = (0..n_docs).collect();
    rng.shuffle(&mut order);
    let mut shots = vec![Vec::new(); n_docs];
    let mut position = vec![0; n_docs];
    for (pos, &doc) in order.iter().enumerate() {
        shots[doc] = rng.sample_indices(n_shot_docs, k);
        position[doc] = pos;
    }
    (shots, position)
}

/// The few-shot prompt: shots "Question: q\nAnswer: a" (query and first gold) joined by a blank
/// line, a blank line, then the query.
pub fn fewshot_prompt(shots: &[&Doc], doc: &Doc) -> String {
    let mut s = String::new();
    for shot in shots {
        s.push_str(&shot.query);
        s.push_str(&shot.gold_texts[0]);
        s.push_str("\n\n");
    }
    s.push_str(&doc.query);
    s
}

/// Build the items of one task from its documents (and, with few-shot examples, the documents
/// of their split).
pub fn items_for(task: &Task, docs: &[Doc], shot_docs: Option<&[Doc]>, tok: &Tokenizer, opts: &Options) -> Result<Vec<Item>, Failure> {
    let n = opts.limit.map_or(docs.len(), |l| l.min(docs.len()));
    let mut items = Vec::with_capacity(n);
    match task.spec.generation {
        Some(generation) => {
            let shots = match generation.fewshot {
                Some(fewshot) => {
                    let shot_docs = shot_docs.ok_or_else(|| Failure::software(format!("{} needs its {} split for the shots", task.name, fewshot.split)))?;
                    if shot_docs.len() < fewshot.shots {
                        return Err(Failure::data(format!(
                            "{}: the {} split has {} rows; {k} shots need at least {k}",
                            task.name,
                            fewshot.split,
                            shot_docs.len(),
                            k = fewshot.shots
                        )));
                    }
                    Some((shot_docs, fewshot_indices(docs.len(), shot_docs.len(), fewshot.shots, opts.fewshot_seed).0))
                }
                None => None,
            };
            for (i, d) in docs[..n].iter().enumerate() {
                let prompt = match &shots {
                    Some((shot_docs, indices)) => fewshot_prompt(&indices[i].iter().map(|&j| &shot_docs[j]).collect::<Vec<&Doc>>(), d),
                    None => d.query.clone(),
                };
                items.push(generate_item(i, prompt, generation.stop, generation.max_new_tokens, d.gold_texts.clone(), tok, opts));
            }
        }
        None => {
            for (i, d) in docs[..n].iter().enumerate() {
                let requests = d
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(k, c)| loglikelihood_request(tok, d.contexts.get(k).unwrap_or(&d.query), c))
                    .collect();
                items.push(Item::Choice(ChoiceItem {
                    doc_index: i,
                    query: d.query.clone(),
                    // With one context per choice (lm-eval's Winogrande) the details show each whole text.
                    choices: if d.contexts.is_empty() { d.choices.clone() } else { d.contexts.iter().zip(&d.choices).map(|(c, t)| format!("{c}{t}")).collect() },
                    gold: d.gold.clone(),
                    requests,
                }));
            }
        }
    }
    Ok(items)
}

fn generate_item(i: usize, context: String, stop: &[&str], max_new: usize, golds: Vec<String>, tok: &Tokenizer, opts: &Options) -> Item {
    let context_ids = tok.encode(&context);
    let max_new_tokens = generation_budget(max_new, opts.max_length, context_ids.len(), char_len(&context), opts.lighteval_budget_quirk);
    Item::Generate(GenerateItem {
        doc_index: i,
        context,
        context_ids,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        max_new_tokens,
        golds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_drops_last_token_and_left_truncates() {
        let r = LoglikelihoodRequest {
            context: String::new(),
            continuation: String::new(),
            context_ids: vec![1, 2, 3, 4],
            continuation_ids: vec![5, 6],
            norm_chars: 0,
        };
        let (input, first) = r.input(100);
        assert_eq!(input, vec![1, 2, 3, 4, 5]);
        assert_eq!(first, 3); // positions 3 and 4 predict 5 and 6
        let (input, first) = r.input(3);
        assert_eq!(input, vec![3, 4, 5]);
        assert_eq!(first, 1);
    }

    #[test]
    fn budget_correct_and_quirk() {
        // 1000 tokens, 5000 characters: correct budget 256, lighteval's 1.
        assert_eq!(generation_budget(256, 4096, 1000, 5000, false), 256);
        assert_eq!(generation_budget(256, 4096, 1000, 5000, true), 1);
        assert_eq!(generation_budget(256, 4096, 1000, 4000, true), 96);
        assert_eq!(generation_budget(256, 4096, 4000, 4000, false), 96);
        assert_eq!(generation_budget(256, 4096, 5000, 100, false), 1);
        assert_eq!(generation_budget(256, 4096, 4096, 100, false), 1);
    }

    #[test]
    fn splits_per_task_and_for_all() {
        let task = |n: &str| Task::parse_list(n).unwrap().remove(0);
        let with = |s: &str| Options { split: Some(s.into()), ..Options::default() };
        let o = with("arc=validation,gsm8k=train,mmlu:anatomy=dev");
        assert_eq!(o.split_for(&task("arc:easy")).unwrap(), "validation");
        assert_eq!(o.split_for(&task("gsm8k")).unwrap(), "train");
        assert_eq!(o.split_for(&task("mmlu:anatomy")).unwrap(), "dev");
        assert_eq!(o.split_for(&task("mmlu:virology")).unwrap(), "test");
        assert_eq!(o.split_for(&task("hellaswag")).unwrap(), "validation");
        assert_eq!(with("train").split_for(&task("ceval:law")).unwrap(), "train");
        assert_eq!(Options::default().split_for(&task("ceval:law")).unwrap(), "val");
        assert!(o.check().is_ok());
        for bad in ["arc=", "nope=test", "a,b", "arc=validation,test"] {
            assert!(with(bad).check().is_err(), "{bad}");
        }
        assert!(Options { limit: Some(0), ..Options::default() }.check().is_err());
    }

    #[test]
    fn fewshot_prompt_joins_shots() {
        let d = |q: &str, a: &str| Doc { query: format!("Question: {q}\nAnswer:"), choices: vec![], gold: vec![], gold_texts: vec![format!(" {a}")], contexts: vec![] };
        let (a, b, q) = (d("1+1?", "2"), d("2+2?", "4"), d("3+3?", "6"));
        assert_eq!(fewshot_prompt(&[&a, &b], &q), "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 4\n\nQuestion: 3+3?\nAnswer:");
    }
}
