//! Running an evaluation: build each task's requests, hand them to a model [`Backend`], score
//! them, and store each task's record (`tasks/<task>.json`, with every item's details) as soon as
//! it finishes, so that a killed run resumes at the task where it stopped. At the end the records
//! become `results.json` (per task metric, value, stderr, n; the 12-number table and its mean;
//! model path and hash, tool version, seeds, options, timings) and `details.h5`.

use std::path::PathBuf;
use std::time::Instant;

use openseek_common::provenance::Provenance;
use openseek_common::{write_json_file, ExitCode, Failure};
use openseek_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::metrics::TaskResult;
use crate::record::{read_record, record_path, TaskRecord};
use crate::requests::{ChoiceItem, GenerateItem, Item, Options};
use crate::table;
use crate::tasks::{self, Task, TaskSpec};
use crate::Output;

/// A stop check: `Err` (exit 75) once the run should stop, polled between batches.
pub type StopCheck<'a> = &'a dyn Fn() -> Result<(), Failure>;

/// What runs the model: summed continuation log-probs for multiple-choice items, greedy text for
/// generative ones. Items come a task (or all subjects of one benchmark) at a time; the backend
/// batches as it likes and calls `check` between batches, returning its error.
pub trait Backend {
    /// For each item, one summed log-likelihood per request (choice), in order.
    fn loglikelihoods(&mut self, items: &[&ChoiceItem], check: StopCheck) -> Result<Vec<Vec<f64>>, Failure>;
    /// For each item, the greedy continuation of `context_ids` (at most `max_new_tokens`, stopped
    /// at EOS or, optionally, at a stop string).
    fn generate(&mut self, items: &[&GenerateItem], check: StopCheck) -> Result<Vec<String>, Failure>;
}

/// One evaluation run.
pub struct RunConfig {
    pub model_dir: PathBuf,
    /// Identity of the weights (see [`crate::record::model_hash`]).
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

/// What a finished run produced.
pub struct RunSummary {
    pub records: Vec<TaskRecord>,
    pub table: table::Table,
    /// Tasks taken from an earlier, interrupted or identical run.
    pub reused: usize,
    pub results: Value,
}

/// The runs of consecutive tasks evaluated together: the subjects of one benchmark (MMLU, CMMLU,
/// C-Eval) in one backend call, so that their questions share batches; every other task alone.
fn units(tasks: &[&Task]) -> Vec<usize> {
    let family = |t: &Task| t.subject().map(|_| t.spec.name);
    let mut sizes: Vec<usize> = Vec::new();
    for (k, t) in tasks.iter().enumerate() {
        match (k.checked_sub(1).map(|p| family(tasks[p])), family(t)) {
            (Some(Some(a)), Some(b)) if a == b => *sizes.last_mut().unwrap() += 1,
            _ => sizes.push(1),
        }
    }
    sizes
}

/// Run every task of `cfg` (reusing stored records whose fingerprint matches), then write
/// `results.json` and `details.h5` and return the summary. `stop` is polled before each task and
/// between the backend's batches: a stop request ends the run with its error (exit 75); the
/// finished tasks' records are stored, a task in progress is evaluated again on the next run.
pub fn run(cfg: &RunConfig, tokenizer: &Tokenizer, backend: &mut dyn Backend, stop: StopCheck) -> Result<RunSummary, Failure> {
    let started = Instant::now();
    let tasks_dir = cfg.output_dir.join("tasks");
    std::fs::create_dir_all(&tasks_dir).map_err(|e| Failure::io_at(&tasks_dir, "cannot create", &e).context("output directory"))?;
    let fingerprint = cfg.fingerprint();
    let mut stored: Vec<Option<TaskRecord>> = cfg
        .tasks
        .iter()
        .map(|task| read_record(&record_path(&cfg.output_dir, &task.name)).filter(|r| r.fingerprint == fingerprint && r.task == task.name))
        .collect();
    let reused = stored.iter().filter(|r| r.is_some()).count();
    let todo: Vec<usize> = (0..cfg.tasks.len()).filter(|&k| stored[k].is_none()).collect();
    let todo_tasks: Vec<&Task> = todo.iter().map(|&k| &cfg.tasks[k]).collect();
    let mut at = 0;
    for size in units(&todo_tasks) {
        let unit = &todo[at..at + size];
        at += size;
        stop()?;
        let t0 = Instant::now();
        let items: Vec<Vec<Item>> = unit.iter().map(|&k| crate::build_requests(&cfg.tasks[k], &cfg.data_dir, tokenizer, &cfg.options)).collect::<Result<_, _>>()?;
        let first = &cfg.tasks[unit[0]].name;
        let name = if size == 1 { first.clone() } else { format!("{} ({size} subjects)", first.split(':').next().unwrap_or(first)) };
        if cfg.verbose {
            eprintln!("os-eval: [{}/{}] {name}: {} items ...", unit[0] + 1, cfg.tasks.len(), items.iter().map(Vec::len).sum::<usize>());
        }
        let t1 = Instant::now();
        let all: Vec<&Item> = items.iter().flatten().collect();
        let mut outputs = run_items(backend, &all, stop).map_err(|e| e.context(format!("task {name}")))?.into_iter();
        let model_seconds = t1.elapsed().as_secs_f64();
        let total_items = all.len().max(1) as f64;
        let seconds = t0.elapsed().as_secs_f64();
        for (&k, items) in unit.iter().zip(&items) {
            let task = &cfg.tasks[k];
            let outputs: Vec<Output> = outputs.by_ref().take(items.len()).collect();
            let result = crate::score(task, items, &outputs)?;
            // Subjects evaluated together share the unit's time by their number of items.
            let share = items.len() as f64 / total_items;
            let record = TaskRecord::new(task, items, &outputs, &result, fingerprint.clone(), seconds * share, model_seconds * share);
            write_json_file(&record_path(&cfg.output_dir, &task.name), &record)?;
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
            stored[k] = Some(record);
        }
    }
    let records: Vec<TaskRecord> = stored.into_iter().map(|r| r.expect("every task evaluated or reused")).collect();
    let results_list: Vec<TaskResult> = records.iter().map(TaskRecord::result).collect();
    let tbl = table::table(&results_list);
    let results = results_json(cfg, &records, &tbl, reused, started.elapsed().as_secs_f64());
    let attrs = [
        ("model_path", cfg.model_dir.display().to_string()),
        ("model_sha256", cfg.model_hash.clone()),
        ("tool", cfg.provenance.tool.clone()),
        ("tool_version", cfg.provenance.version.clone()),
        ("harness", cfg.options.harness.name().to_string()),
    ];
    crate::details::write(&cfg.output_dir.join("details.h5"), &attrs, &records)?;
    write_json_file(&cfg.output_dir.join("results.json"), &results)?;
    Ok(RunSummary { records, table: tbl, reused, results })
}

/// Ask the backend for the items' outputs, checking it answered every item.
fn run_items(backend: &mut dyn Backend, items: &[&Item], stop: StopCheck) -> Result<Vec<Output>, Failure> {
    let choice: Vec<&ChoiceItem> = items.iter().filter_map(|i| if let Item::Choice(c) = i { Some(c) } else { None }).collect();
    let generate: Vec<&GenerateItem> = items.iter().filter_map(|i| if let Item::Generate(g) = i { Some(g) } else { None }).collect();
    let mut lls = if choice.is_empty() { vec![] } else { backend.loglikelihoods(&choice, stop)? }.into_iter();
    let mut texts = if generate.is_empty() { vec![] } else { backend.generate(&generate, stop)? }.into_iter();
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
        "results": lighteval_results(records),
        "timings": {
            "total_seconds": seconds,
            "task_seconds": records.iter().map(|r| r.seconds).sum::<f64>(),
            "model_seconds": records.iter().map(|r| r.model_seconds).sum::<f64>(),
            "tasks_reused": reused,
        },
    })
}

/// The records in lighteval's `results` schema, so that lighteval's tooling reads them: one entry
/// per task keyed `custom|<task>|<shots>` (OpenSeek's custom task file; GSM8K 5-shot, the others
/// 0) holding each metric and `<metric>_stderr`, and `all`, each metric's mean over the tasks.
fn lighteval_results(records: &[TaskRecord]) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let mut sums: std::collections::BTreeMap<String, (f64, f64, usize)> = Default::default();
    for r in records {
        let shots = tasks::spec_of(&r.task).map_or(0, TaskSpec::shots);
        let mut entry = serde_json::Map::new();
        for (name, [v, e]) in &r.metrics {
            entry.insert(name.clone(), finite(*v));
            entry.insert(format!("{name}_stderr"), finite(*e));
            let s = sums.entry(name.clone()).or_default();
            *s = (s.0 + v, s.1 + e, s.2 + 1);
        }
        out.insert(format!("custom|{}|{shots}", r.task), Value::Object(entry));
    }
    let mut all = serde_json::Map::new();
    for (name, (v, e, n)) in sums {
        all.insert(name.clone(), finite(v / n as f64));
        all.insert(format!("{name}_stderr"), finite(e / n as f64));
    }
    out.insert("all".into(), Value::Object(all));
    out
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
