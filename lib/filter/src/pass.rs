//! One streaming pass of a recipe over the inputs: records are read in batches, every filter of
//! the recipe is applied to each document in order on the worker threads (the first that drops
//! it decides), and kept documents are written in input order, so the output is the same for any
//! worker count. Each input file is one part, committed with its counts; the manifest
//! (`OUTPUT.json`: per-filter counts, reasons and sampled dropped documents) is written when every
//! part is done, so parts can run as Slurm array tasks and a killed one re-runs alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use openseek_common::provenance::Provenance;
use openseek_common::{AtomicOutputs, Failure};
use openseek_corpus::inputs::Input;
use openseek_corpus::records::{record_text, Payload, Problem, Record};
use openseek_dedup::documents::{bad_record_failure, check_output_names, describe, output_name, read_batches, BadRecord, DocWriter};
use openseek_corpus::options::OnError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use unicode_general_category::{get_general_category, GeneralCategory as G};

use crate::recipe::{Action, Filter, Missing};

pub struct FilterJob {
    pub inputs: Vec<Input>,
    pub shard: Option<(usize, usize)>,
    pub output: PathBuf,
    pub recipe: PathBuf,
    pub filters: Vec<Filter>,
    pub text_key: String,
    pub on_error: OnError,
    pub workers: usize,
    pub force: bool,
    pub quiet: bool,
}

/// What happened to one document.
enum Outcome {
    Keep { text: Option<String>, flags: Vec<(String, Value)>, modified_by: Vec<usize>, flagged_by: Vec<usize> },
    Drop { filter: usize, reason: String, text: String, modified_by: Vec<usize> },
    Bad(Problem),
}

const EXAMPLES_PER_FILTER: usize = 5;
const EXAMPLE_CHARS: usize = 300;

/// One filter's counts over a part or the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilterCounts {
    pub name: String,
    /// Documents that reached this filter (not dropped before it).
    pub seen: u64,
    pub dropped: u64,
    pub modified: u64,
    pub flagged: u64,
    pub reasons: BTreeMap<String, u64>,
    pub dropped_examples: Vec<DroppedExample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DroppedExample {
    pub location: String,
    pub reason: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartReport {
    pub part: usize,
    pub input: String,
    pub sha256: String,
    pub output: String,
    pub records: u64,
    pub kept: u64,
    pub skipped: BTreeMap<String, u64>,
    pub skipped_examples: Vec<BadRecord>,
    pub filters: Vec<FilterCounts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilterReport {
    pub format: &'static str,
    pub provenance: Provenance,
    pub recipe: String,
    pub recipe_text: String,
    pub filters: Vec<Value>,
    pub text_key: String,
    pub on_error: OnError,
    pub documents: u64,
    pub kept: u64,
    pub counts: Vec<FilterCounts>,
    pub parts: Vec<PartReport>,
    pub wall_seconds: f64,
}

fn mean_sentence_length(text: &str) -> Option<f64> {
    let sentences: Vec<usize> = text
        .split(['.', '!', '?', '。', '！', '？', ';', '；', '\n'])
        .map(|s| s.trim().chars().count())
        .filter(|&n| n > 0)
        .collect();
    (!sentences.is_empty()).then(|| sentences.iter().sum::<usize>() as f64 / sentences.len() as f64)
}

fn symbol_ratio(text: &str) -> f64 {
    let (mut total, mut symbols) = (0usize, 0usize);
    for c in text.chars() {
        total += 1;
        let symbol = matches!(
            get_general_category(c),
            G::ConnectorPunctuation | G::DashPunctuation | G::OpenPunctuation | G::ClosePunctuation | G::InitialPunctuation
                | G::FinalPunctuation | G::OtherPunctuation | G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol
        );
        symbols += usize::from(symbol);
    }
    if total == 0 {
        0.0
    } else {
        symbols as f64 / total as f64
    }
}

fn out_of(value: f64, min: Option<f64>, max: Option<f64>) -> Option<String> {
    if min.is_some_and(|m| value < m) {
        Some("below_min".into())
    } else if max.is_some_and(|m| value > m) {
        Some("above_max".into())
    } else {
        None
    }
}

fn record_id(record: &Record, key: &str) -> Option<String> {
    let Payload::JsonLine(raw) = &record.payload else { return None };
    match serde_json::from_slice::<Value>(raw).ok()?.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Apply the recipe to one record.
fn apply(filters: &[Filter], record: &Record, key: &str) -> Outcome {
    let original = match record_text(record, key) {
        Ok(t) => t,
        Err(problem) => return Outcome::Bad(problem),
    };
    let mut text: Option<String> = None;
    let (mut flags, mut modified_by, mut flagged_by) = (Vec::new(), Vec::new(), Vec::new());
    for (i, filter) in filters.iter().enumerate() {
        let current: &str = text.as_deref().unwrap_or(&original);
        let mut flag = |found: Value| {
            flags.push((filter.name().to_string(), found));
            flagged_by.push(i);
        };
        let mut converted: Option<String> = None;
        let verdict: Option<String> = match filter {
            Filter::CharLength { min, max } => out_of(current.chars().count() as f64, min.map(|m| m as f64), max.map(|m| m as f64)),
            Filter::MeanSentenceLength { min, max } => match mean_sentence_length(current) {
                Some(mean) => out_of(mean, *min, *max),
                None => Some("no_sentences".into()),
            },
            Filter::SymbolRatio { max } => (symbol_ratio(current) > *max).then(|| "above_max".into()),
            Filter::GopherQuality(q) => q.check(current).map(String::from),
            Filter::GopherRepetition(r) => r.check(current),
            Filter::AverageLineLength(r) => r.check(current),
            Filter::SpecialCharacters(r) => r.check(current),
            Filter::WordRepetition(r) => r.check(current),
            Filter::Language { lid, action } => {
                let found = lid.identify(current);
                match (found.accepted, action) {
                    (true, _) => None,
                    (false, Action::Drop) => Some(found.reason(lid)),
                    (false, Action::Flag) => {
                        flag(serde_json::json!({ "language": found.language, "score": found.score }));
                        None
                    }
                }
            }
            Filter::TraditionalToSimplified(cc) => {
                let new_text = cc.convert(current);
                if new_text != current {
                    converted = Some(new_text);
                    modified_by.push(i);
                }
                None
            }
            Filter::WordList { words, max_hits, action, .. } => {
                let hits: Vec<String> = words.find_iter(current).map(|m| current[m.range()].to_string()).collect();
                if hits.len() > *max_hits {
                    match action {
                        Action::Drop => Some(format!("listed_word:{}", hits[0].to_lowercase())),
                        Action::Flag => {
                            flag(Value::from(hits));
                            None
                        }
                    }
                } else {
                    None
                }
            }
            Filter::Decontaminate { index, action } => match index.first_match(current) {
                Some(source) => match action {
                    Action::Drop => Some(format!("shares_ngram_with:{source}")),
                    Action::Flag => {
                        flag(Value::from(source));
                        None
                    }
                },
                None => None,
            },
            Filter::Score { scores, id_key, min, max, missing, .. } => match record_id(record, id_key).and_then(|id| scores.get(&id)) {
                Some(&score) => out_of(score, *min, *max),
                None if *missing == Missing::Drop => Some("no_score".into()),
                None => None,
            },
        };
        if let Some(reason) = verdict {
            return Outcome::Drop { filter: i, reason, text: current.chars().take(EXAMPLE_CHARS).collect(), modified_by };
        }
        if converted.is_some() {
            text = converted;
        }
    }
    Outcome::Keep { text, flags, modified_by, flagged_by }
}

fn parts_dir(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".parts");
    PathBuf::from(p)
}

fn manifest_path(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

fn part_path(output: &Path, part: usize) -> PathBuf {
    parts_dir(output).join(format!("{part:05}.json"))
}

impl FilterJob {
    pub fn run(&self) -> Result<Option<FilterReport>, Failure> {
        let start = Instant::now();
        let provenance = Provenance::capture("os-filter", env!("CARGO_PKG_VERSION"));
        let stop = openseek_common::signals::watch();
        check_output_names(&self.inputs)?;
        let manifest = manifest_path(&self.output);
        if manifest.exists() && !self.force {
            return Err(Failure::cant_create(format!("{} already exists (a finished earlier run); pass --force to redo it", manifest.display())));
        }
        for dir in [&self.output, &parts_dir(&self.output)] {
            std::fs::create_dir_all(dir).map_err(|e| Failure::cant_create(format!("{}: cannot create directory: {e}", dir.display())))?;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers.max(1))
            .build()
            .map_err(|e| Failure::software(format!("cannot start {} worker threads: {e}", self.workers)))?;
        let parts: Vec<usize> = match self.shard {
            Some((index, of)) => (0..self.inputs.len()).filter(|p| p % of == index).collect(),
            None => (0..self.inputs.len()).collect(),
        };
        for part in parts {
            if part_path(&self.output, part).exists() && !self.force {
                continue;
            }
            self.filter_part(part, &pool, &stop)?;
        }
        if (0..self.inputs.len()).any(|p| !part_path(&self.output, p).exists()) {
            return Ok(None);
        }
        let parts: Vec<PartReport> = (0..self.inputs.len())
            .map(|p| {
                let path = part_path(&self.output, p);
                let bytes = std::fs::read(&path).map_err(|e| Failure::io_at(&path, "cannot read", &e))?;
                serde_json::from_slice(&bytes).map_err(|e| Failure::data(format!("{}: unreadable ({e}); delete it to redo that part", path.display())))
            })
            .collect::<Result<_, _>>()?;
        let mut counts: Vec<FilterCounts> = self.filters.iter().map(|f| FilterCounts { name: f.name().into(), ..Default::default() }).collect();
        for part in &parts {
            for (total, c) in counts.iter_mut().zip(&part.filters) {
                total.seen += c.seen;
                total.dropped += c.dropped;
                total.modified += c.modified;
                total.flagged += c.flagged;
                for (reason, n) in &c.reasons {
                    *total.reasons.entry(reason.clone()).or_default() += n;
                }
                for example in &c.dropped_examples {
                    if total.dropped_examples.len() < EXAMPLES_PER_FILTER {
                        total.dropped_examples.push(example.clone());
                    }
                }
            }
        }
        let report = FilterReport {
            format: "openseek-filter",
            provenance,
            recipe: self.recipe.display().to_string(),
            recipe_text: std::fs::read_to_string(&self.recipe).unwrap_or_default(),
            filters: self.filters.iter().map(|f| serde_json::json!({ "kind": f.name(), "parameters": f.describe() })).collect(),
            text_key: self.text_key.clone(),
            on_error: self.on_error,
            documents: parts.iter().map(|p| p.records).sum(),
            kept: parts.iter().map(|p| p.kept).sum(),
            counts,
            parts,
            wall_seconds: start.elapsed().as_secs_f64(),
        };
        let mut outputs = AtomicOutputs::new();
        outputs.write_json(&manifest, &report)?;
        outputs.commit()?;
        Ok(Some(report))
    }

    fn filter_part(&self, part: usize, pool: &rayon::ThreadPool, stop: &openseek_common::signals::StopSignal) -> Result<(), Failure> {
        let input = &self.inputs[part];
        let out_path = self.output.join(output_name(input));
        if out_path.exists() && !self.force {
            return Err(Failure::cant_create(format!("{} already exists; pass --force to replace it", out_path.display())));
        }
        let mut outputs = AtomicOutputs::new();
        let mut writer = DocWriter::create(&out_path, input.compression, &self.text_key, &mut outputs)?;
        let mut counts: Vec<FilterCounts> = self.filters.iter().map(|f| FilterCounts { name: f.name().into(), ..Default::default() }).collect();
        let mut kept = 0u64;
        let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
        let mut skipped_examples = Vec::new();
        let key = self.text_key.as_str();
        let stats = read_batches(input, key, (1 << 20) * self.workers.max(1), stop, &mut |batch: Vec<Record>, _first| {
            let outcomes: Vec<Outcome> = pool.install(|| batch.par_iter().map(|r| apply(&self.filters, r, key)).collect());
            for (record, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Outcome::Keep { text, flags, modified_by, flagged_by } => {
                        for c in counts.iter_mut() {
                            c.seen += 1;
                        }
                        modified_by.iter().for_each(|&i| counts[i].modified += 1);
                        flagged_by.iter().for_each(|&i| counts[i].flagged += 1);
                        match (text, flags.is_empty()) {
                            (None, true) => writer.write(record, &record_text(record, key).unwrap_or_default())?,
                            (text, _) => {
                                let text = text.unwrap_or_else(|| record_text(record, key).unwrap_or_default().into_owned());
                                writer.write_edited(record, &text, &flags)?
                            }
                        }
                        kept += 1;
                    }
                    Outcome::Drop { filter, reason, text, modified_by } => {
                        for c in &mut counts[..=filter] {
                            c.seen += 1;
                        }
                        modified_by.iter().for_each(|&i| counts[i].modified += 1);
                        let c = &mut counts[filter];
                        c.dropped += 1;
                        if c.dropped_examples.len() < EXAMPLES_PER_FILTER {
                            c.dropped_examples.push(DroppedExample { location: describe(input, record), reason: reason.clone(), text });
                        }
                        let reason = reason.split(':').next().unwrap_or_default().to_string();
                        *c.reasons.entry(reason).or_default() += 1;
                    }
                    Outcome::Bad(problem) => {
                        if self.on_error == OnError::Fail {
                            return Err(bad_record_failure(input, record, &problem));
                        }
                        *skipped.entry(problem.kind().to_string()).or_default() += 1;
                        if skipped_examples.len() < 20 {
                            skipped_examples.push(BadRecord { input: input.display(), location: describe(input, record), problem: problem.to_string() });
                        }
                    }
                }
            }
            Ok(())
        })?;
        writer.finish()?;
        let report = PartReport {
            part,
            input: input.display(),
            sha256: stats.sha256,
            output: out_path.display().to_string(),
            records: stats.records,
            kept,
            skipped,
            skipped_examples,
            filters: counts,
        };
        outputs.write_json(&part_path(&self.output, part), &report)?;
        outputs.commit()?;
        if !self.quiet {
            eprintln!("os-filter: {}: {} of {} documents kept", input.display(), kept, report.records);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_lengths_and_symbol_ratio() {
        assert_eq!(mean_sentence_length("Ab cd. Efgh!\n\nIj"), Some((5.0 + 4.0 + 2.0) / 3.0));
        assert_eq!(mean_sentence_length("..."), None);
        assert!((symbol_ratio("a#b$") - 0.5).abs() < 1e-12);
    }
}
