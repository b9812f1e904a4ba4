//! Running an evaluation: build each task's requests, hand them to a model [`Backend`], score
//! them, and store each task's record (`tasks/<task>.json`, with every item's details) as soon as
//! it finishes, so that a killed run resumes at the task where it stopped. At the end the records
//! become `results.json` (per task metric, value, stderr, n; the 12-number table and its mean;
//! model path and hash, tool version, seeds, options, timings) and `details.h5`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use openseek_common::provenance::Provenance;
use openseek_common::{AtomicOutputs, ExitCode, Failure};
use openseek_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::requests::{ChoiceItem, GenerateItem, Item, Options};
pub use crate::requests::Harness;
use crate::table::{self, TaskResult};
use crate::tasks::Task;
use crate::Output;

/// What runs the model: summed continuation log-probs for multiple-choice items, greedy text for
/// generative ones. Items come a whole task at a time; the backend batches as it likes.
pub trait Backend {
    /// For each item, one summed log-likelihood per request (choice), in order.
    fn loglikelihoods(&mut self, items: &[&ChoiceItem]) -> Result<Vec<Vec<f64>>, Failure>;
    /// For each item, the greedy continuation of `context_ids` (at most `max_new_tokens`, stopped
    /// at EOS or, optionally, at a stop string).
    fn generate(&mut self, items: &[&GenerateItem]) -> Result<Vec<String>, Failure>;
}

/// One evaluation run.
pub struct RunConfig {
    pub model_dir: PathBuf,
    /// Identity of the weights (see [`model_hash`]).
    pub model_hash: String,
    pub data_dir: PathBuf,
    pub output_dir: PathBuf,
    pub tasks: Vec<Task>,
    pub options: Options,
    /// How the backend runs (device, dtype, batch size ...), recorded and part of the fingerprint.
    pub backend: Value,
    pub provenance: Provenance,
    /// Print progress to stderr.
    pub verbose: bool,
}

impl RunConfig {
    /// What a stored task record must match to be reused: the model's hash, the request options
    /// and the backend settings.
    pub fn fingerprint(&self) -> Value {
        let o = &self.options;
        json!({
            "model_sha256": self.model_hash,
            "harness": o.harness.name(),
            "split": o.split,
            "limit": o.limit,
            "max_length": o.max_length,
            "lighteval_budget_quirk": o.lighteval_budget_quirk,
            "fewshot_seed": o.fewshot_seed,
            "backend": self.backend,
        })
    }
}

/// One item's details as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub doc_index: usize,
    /// The prompt (multiple choice: the query; generative: the full context).
    pub query: String,
    /// Multiple choice: the choices, their summed log-probs and acc_norm lengths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub norm_chars: Vec<usize>,
    /// Multiple choice: gold indices; argmax of raw and of normalised scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gold: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_norm: Option<usize>,
    /// Generative: the text after cutting at stop strings, and the gold answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub golds: Vec<String>,
    /// Per-item metrics (acc, acc_norm or quasi_exact_match).
    pub metrics: BTreeMap<String, f64>,
}

/// A finished task as stored in `tasks/<task>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: String,
    pub fingerprint: Value,
    pub metric: String,
    pub value: f64,
    pub stderr: f64,
    pub n: usize,
    /// Every metric computed: name → [mean, stderr].
    pub metrics: BTreeMap<String, [f64; 2]>,
    /// Wall time of the task, and the part of it spent in the model backend.
    pub seconds: f64,
    #[serde(default)]
    pub model_seconds: f64,
    pub items: Vec<ItemRecord>,
}

impl TaskRecord {
    fn new(task: &Task, items: &[Item], outputs: &[Output], result: &TaskResult, fingerprint: Value, seconds: f64, model_seconds: f64) -> TaskRecord {
        let records = items
            .iter()
            .zip(outputs)
            .zip(&result.items)
            .map(|((item, out), s)| {
                let mut metrics = BTreeMap::new();
                for (k, v) in [("acc", s.acc), ("acc_norm", s.acc_norm), ("quasi_exact_match", s.exact_match)] {
                    if let Some(v) = v {
                        metrics.insert(k.to_string(), v);
                    }
                }
                match (item, out) {
                    (Item::Choice(c), Output::LogLikelihoods(lp)) => ItemRecord {
                        doc_index: c.doc_index,
                        query: c.query.clone(),
                        choices: c.choices.clone(),
                        logprobs: lp.clone(),
                        norm_chars: c.requests.iter().map(|r| r.norm_chars).collect(),
                        gold: c.gold.clone(),
                        prediction: s.prediction,
                        prediction_norm: s.prediction_norm,
                        generated: None,
                        golds: vec![],
                        metrics,
                    },
                    (Item::Generate(g), _) => ItemRecord {
                        doc_index: g.doc_index,
                        query: g.context.clone(),
                        choices: vec![],
                        logprobs: vec![],
                        norm_chars: vec![],
                        gold: vec![],
                        prediction: None,
                        prediction_norm: None,
                        generated: s.generated.clone(),
                        golds: g.golds.clone(),
                        metrics,
                    },
                    _ => unreachable!("score() checked that outputs fit their items"),
                }
            })
            .collect();
        TaskRecord {
            task: task.name.clone(),
            fingerprint,
            metric: result.metric.to_string(),
            value: result.value,
            stderr: result.stderr,
            n: result.n,
            metrics: result.metrics.iter().map(|(k, v, e)| (k.to_string(), [*v, *e])).collect(),
            seconds,
            model_seconds,
            items: records,
        }
    }

    /// The record as a [`TaskResult`] (without items) for the table.
    pub fn result(&self) -> TaskResult {
        let metric = ["acc", "acc_norm", "quasi_exact_match"].into_iter().find(|m| *m == self.metric).unwrap_or("acc");
        TaskResult { task: self.task.clone(), metric, value: self.value, stderr: self.stderr, n: self.n, metrics: vec![], items: vec![] }
    }
}

/// The record file of a task: `:` (not portable in file names) becomes `__`.
pub fn record_path(output_dir: &Path, task: &str) -> PathBuf {
    output_dir.join("tasks").join(format!("{}.json", task.replace(':', "__")))
}

/// Read a stored task record; None when absent or unreadable (a torn file is recomputed).
pub fn read_record(path: &Path) -> Option<TaskRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Write a JSON value atomically (temp + rename).
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Failure> {
    let mut out = AtomicOutputs::new();
    let mut f = std::io::BufWriter::new(out.create(path)?);
    serde_json::to_writer_pretty(&mut f, value).map_err(|e| Failure::io(format!("{}: cannot write: {e}", path.display())))?;
    f.write_all(b"\n").and_then(|_| f.flush()).map_err(|e| Failure::io_at(path, "cannot write", &e))?;
    drop(f);
    out.commit()
}

/// What a finished run produced.
pub struct RunSummary {
    pub records: Vec<TaskRecord>,
    pub table: table::Table,
    /// Tasks taken from an earlier, interrupted or identical run.
    pub reused: usize,
    pub results: Value,
}

/// The identity of a model directory: SHA-256 over `config.json` and every `*.safetensors` file
/// (names sorted), each file hashed and the list `name sha256` hashed again.
pub fn model_hash(dir: &Path) -> Result<String, Failure> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Failure::io_at(dir, "cannot list the model directory", &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json" || n.ends_with(".safetensors")
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Failure::no_input(format!("{}: no config.json or *.safetensors: not a Hugging Face model directory", dir.display())));
    }
    let hashes: Vec<Result<String, Failure>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|p| s.spawn(move || openseek_common::hash::sha256_file(p).map_err(|e| Failure::io_at(p, "cannot read", &e))))
            .collect();
        handles.into_iter().map(|h| h.join().expect("hash thread")).collect()
    });
    let mut listing = String::new();
    for (p, h) in names.iter().zip(hashes) {
        listing.push_str(&format!("{} {}\n", p.file_name().unwrap().to_string_lossy(), h?));
    }
    Ok(openseek_common::hash::sha256_bytes(listing.as_bytes()))
}

/// Run every task of `cfg` (reusing stored records whose fingerprint matches), then write
/// `results.json` and `details.h5` and return the summary. `stop` is polled between tasks: a
/// stop request ends the run with exit 75 after the current task's record is stored.
pub fn run(cfg: &RunConfig, tokenizer: &Tokenizer, backend: &mut dyn Backend, stop: &dyn Fn() -> Result<(), Failure>) -> Result<RunSummary, Failure> {
    let started = Instant::now();
    let tasks_dir = cfg.output_dir.join("tasks");
    std::fs::create_dir_all(&tasks_dir).map_err(|e| Failure::io_at(&tasks_dir, "cannot create", &e).context("output directory"))?;
    let fingerprint = cfg.fingerprint();
    let mut records = Vec::with_capacity(cfg.tasks.len());
    let mut reused = 0;
    for (k, task) in cfg.tasks.iter().enumerate() {
        let path = record_path(&cfg.output_dir, &task.name);
        if let Some(r) = read_record(&path).filter(|r| r.fingerprint == fingerprint && r.task == task.name) {
            reused += 1;
            records.push(r);
            continue;
        }
        stop()?;
        let t0 = Instant::now();
        let items = crate::build_requests(task, &cfg.data_dir, tokenizer, &cfg.options)?;
        let t1 = Instant::now();
        let outputs = run_items(backend, &items).map_err(|e| e.context(format!("task {}", task.name)))?;
        let model_seconds = t1.elapsed().as_secs_f64();
        let result = crate::score(task, &items, &outputs)?;
        let record = TaskRecord::new(task, &items, &outputs, &result, fingerprint.clone(), t0.elapsed().as_secs_f64(), model_seconds);
        write_json(&path, &record)?;
        if cfg.verbose {
            eprintln!(
                "os-eval: [{}/{}] {} {} = {:.4} ± {:.4} (n={}, {:.1}s)",
                k + 1,
                cfg.tasks.len(),
                task.name,
                record.metric,
                record.value,
                record.stderr,
                record.n,
                record.seconds
            );
        }
        records.push(record);
    }
    let results_list: Vec<TaskResult> = records.iter().map(TaskRecord::result).collect();
    let tbl = table::table(&results_list);
    let results = results_json(cfg, &records, &tbl, reused, started.elapsed().as_secs_f64());
    crate::details::write(&cfg.output_dir.join("details.h5"), cfg, &records)?;
    write_json(&cfg.output_dir.join("results.json"), &results)?;
    Ok(RunSummary { records, table: tbl, reused, results })
}

/// Ask the backend for one task's outputs, checking it answered every item.
fn run_items(backend: &mut dyn Backend, items: &[Item]) -> Result<Vec<Output>, Failure> {
    let choice: Vec<&ChoiceItem> = items.iter().filter_map(|i| if let Item::Choice(c) = i { Some(c) } else { None }).collect();
    let generate: Vec<&GenerateItem> = items.iter().filter_map(|i| if let Item::Generate(g) = i { Some(g) } else { None }).collect();
    let mut lls = if choice.is_empty() { vec![] } else { backend.loglikelihoods(&choice)? }.into_iter();
    let mut texts = if generate.is_empty() { vec![] } else { backend.generate(&generate)? }.into_iter();
    if lls.len() != choice.len() || texts.len() != generate.len() {
        return Err(Failure::new(ExitCode::Software, "the model backend returned the wrong number of outputs"));
    }
    Ok(items
        .iter()
        .map(|i| match i {
            Item::Choice(_) => Output::LogLikelihoods(lls.next().unwrap()),
            Item::Generate(_) => Output::Text(texts.next().unwrap()),
        })
        .collect())
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// `results.json`.
fn results_json(cfg: &RunConfig, records: &[TaskRecord], tbl: &table::Table, reused: usize, seconds: f64) -> Value {
    let tasks: serde_json::Map<String, Value> = records
        .iter()
        .map(|r| {
            let metrics: serde_json::Map<String, Value> =
                r.metrics.iter().map(|(k, [v, e])| (k.clone(), json!({"value": finite(*v), "stderr": finite(*e)}))).collect();
            (
                r.task.clone(),
                json!({"metric": r.metric, "value": finite(r.value), "stderr": finite(r.stderr), "n": r.n, "metrics": metrics, "seconds": r.seconds, "model_seconds": r.model_seconds}),
            )
        })
        .collect();
    let columns: Vec<Value> = tbl
        .columns
        .iter()
        .map(|(name, v, e, k)| json!({"name": name, "value": v.map(finite), "stderr": e.map(finite), "tasks": k}))
        .collect();
    let o = &cfg.options;
    json!({
        "tool": cfg.provenance,
        "model": {"path": cfg.model_dir.display().to_string(), "sha256": cfg.model_hash},
        "data": cfg.data_dir.display().to_string(),
        "harness": o.harness.name(),
        "options": {
            "split": o.split, "limit": o.limit, "max_length": o.max_length,
            "lighteval_budget_quirk": o.lighteval_budget_quirk,
        },
        "seeds": {"fewshot": o.fewshot_seed},
        "backend": cfg.backend,
        "tasks": tasks,
        "table": {"columns": columns, "mean": tbl.mean.map(finite)},
        "timings": {
            "total_seconds": seconds,
            "task_seconds": records.iter().map(|r| r.seconds).sum::<f64>(),
            "model_seconds": records.iter().map(|r| r.model_seconds).sum::<f64>(),
            "tasks_reused": reused,
        },
    })
}

/// The table as text: one line per column (×100, two decimals, `-` where not run), then the mean.
pub fn format_table(tbl: &table::Table) -> String {
    let mut s = String::new();
    for (name, v, e, k) in &tbl.columns {
        match v {
            Some(v) => s.push_str(&format!("{name:<14} {v:>6.2}  ± {:.2}{}\n", e.unwrap_or(f64::NAN), if *k > 1 { format!("  ({k} tasks)") } else { String::new() })),
            None => s.push_str(&format!("{name:<14}      -\n")),
        }
    }
    match tbl.mean {
        Some(m) => s.push_str(&format!("{:<14} {m:>6.2}\n", "Mean")),
        None => s.push_str(&format!("{:<14}      -  (not all 12 columns were run)\n", "Mean")),
    }
    s
}
