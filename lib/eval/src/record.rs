//! What a run stores: each finished task's record (`tasks/<task>.json`, every item's details), the
//! identity of the evaluated weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::TaskResult;
use crate::requests::Item;
use crate::tasks::Task;
use crate::Output;

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
    pub fn new(task: &Task, items: &[Item], outputs: &[Output], result: &TaskResult, fingerprint: Value, seconds: f64, model_seconds: f64) -> TaskRecord {
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
