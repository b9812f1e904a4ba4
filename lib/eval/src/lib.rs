//! The OpenSeek benchmark suite without a model: task definitions, data readers, requests
//! built exactly as lighteval v0.3.0 with OpenSeek's task file builds them, the metrics, stderr
//! and 12-number table, and the run around a model [`Backend`] (resumable per-task records,
//! `results.json`, `details.h5`), checkpoint sweeps and their charts. The model side
//! (`os-eval`) implements the backend: log-probs and generated text.
//!
//! # Use
//! ```no_run
//! use openseek_eval::{build_requests, score, Item, Options, Output, Task};
//! # fn model(_: &Item) -> Output { unimplemented!() }
//! let tok = openseek_tokenizer::Tokenizer::load("model_dir".as_ref()).unwrap();
//! for task in Task::parse_list("openseek").unwrap() {
//!     let items = build_requests(&task, "data".as_ref(), &tok, &Options::default()).unwrap();
//!     let outputs: Vec<Output> = items.iter().map(model).collect();
//!     let result = score(&task, &items, &outputs).unwrap();
//!     println!("{} {} {:.4} ± {:.4}", result.task, result.metric, result.value, result.stderr);
//! }
//! ```
//! For an [`Item::Choice`] the model returns [`Output::LogLikelihoods`]: per request, the sum of
//! the log-probs of `continuation_ids` given what precedes them (see
//! [`LoglikelihoodRequest::input`]). For an [`Item::Generate`] it returns [`Output::Text`]: the
//! greedy continuation of `context_ids` (no BOS), at most `max_new_tokens`, stopped at EOS or a
//! stop string (cutting it is optional: `score` cuts at the first stop string again).
//!
//! # Data directory layout
//! One folder per benchmark under the data directory (the layout of `shared/eval-dev`). A split
//! is `<split>.jsonl`, `<split>.parquet`, parquet shards `<split>-*.parquet` (the Hub's names,
//! e.g. `validation-00000-of-00001.parquet`), `<split>.arrow`, or a `datasets.save_to_disk`
//! folder `<split>/data-0000N-of-0000M.arrow` (so `DatasetDict.save_to_disk("hellaswag")` is
//! read as is), with the Hugging Face schema lighteval reads:
//!
//! | task | files | split (default) |
//! | --- | --- | --- |
//! | hellaswag | `hellaswag/<split>` | validation |
//! | winogrande | `winogrande/<split>` (winogrande_xl) | validation |
//! | piqa | `piqa/<split>`, or the original `piqa/valid.jsonl` + `piqa/valid-labels.lst` | validation |
//! | siqa | `siqa/<split>` | validation |
//! | openbookqa | `openbookqa/<split>` (main) | validation |
//! | arc:easy, arc:challenge | `arc/ARC-Easy_<split>`, `arc/ARC-Challenge_<split>` (or `arc/ARC-Easy/<split>`) | test |
//! | commonsense_qa | `commonsense_qa/<split>` | validation |
//! | mmlu:<subject> | `mmlu/<split>/<subject>` (question, subject, choices, answer) or `mmlu/<subject>/<split>` | test |
//! | cmmlu:<subject> | `cmmlu/<split>/<subject>.csv` (original CSV) or `.jsonl`/`.parquet` (question, choices, answer) | test |
//! | ceval:<subject> | `ceval/<split>/<subject>_<split>.csv` (original CSV) or `<subject>.jsonl`/`.parquet` | val |
//! | triviaqa | `triviaqa/<split>` (rc.nocontext schema: question, answer.aliases) | validation |
//! | gsm8k | `gsm8k/<split>` and `gsm8k/train` for the shots (original jsonl: question, answer) | test |
//! | boolq | `boolq/<split>` (google/boolq `answer` bool, or super_glue `label`) | validation |
//!
//! A missing split or column is an error naming the file, what was looked for and what is there.
//!
//! # GSM8K generation budget
//! lighteval v0.3.0 compares the generation budget with the prompt length in *characters*, so
//! GSM8K prompts longer than 4096 characters get one new token (19 of 1,319 at 5 shots) and
//! score 0. By default the budget uses tokens (the correct behaviour);
//! [`Options::lighteval_budget_quirk`] reproduces lighteval (see [`requests::generation_budget`]).

pub mod data;
pub mod details;
pub mod metrics;
pub mod plot;
pub mod prompts;
pub mod pyrandom;
pub mod record;
pub mod requests;
pub mod run;
pub mod stops;
pub mod subjects;
pub mod sweep;
pub mod table;
pub mod tasks;
pub mod text;

use std::path::Path;

use openseek_common::Failure;
use openseek_tokenizer::Tokenizer;

pub use requests::{ChoiceItem, GenerateItem, Harness, Item, LoglikelihoodRequest, Options};
pub use record::TaskRecord;
pub use run::{Backend, RunConfig, RunSummary, StopCheck};
pub use stops::StopStrings;
pub use metrics::{score, ItemScore, TaskResult};
pub use table::Table;
pub use prompts::Doc;
pub use tasks::{Metric, Task, TaskSpec, TASKS};

/// What the model produced for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// One summed continuation log-prob per request of a [`ChoiceItem`], in order.
    LogLikelihoods(Vec<f64>),
    /// The generated text of a [`GenerateItem`].
    Text(String),
}

/// Read a task's documents (its default split unless `options.split` names another).
pub fn read_docs(task: &Task, data_dir: &Path, options: &Options) -> Result<Vec<Doc>, Failure> {
    let split = options.split_for(task)?;
    let rows = task.read_rows(data_dir, &split).map_err(|e| e.context(format!("task {}", task.name)))?;
    if rows.is_empty() {
        return Err(Failure::data(format!("task {}: {} holds no rows", task.name, rows.source)));
    }
    (0..rows.len())
        .map(|i| match options.harness {
            Harness::Lighteval => task.doc(rows.get(i)),
            Harness::LmEval => task.lm_eval_doc(rows.get(i)),
        })
        .collect()
}

/// Read every task's documents (and those of its few-shot split) without tokenizing: a data
/// problem stops a sweep before any checkpoint is loaded, instead of failing each one.
pub fn check_data(tasks: &[Task], data_dir: &Path, options: &Options) -> Result<(), Failure> {
    for task in tasks {
        read_docs(task, data_dir, options)?;
        read_shot_rows(task, data_dir)?;
    }
    Ok(())
}

/// The rows of the task's few-shot split, if it has one.
fn read_shot_rows(task: &Task, data_dir: &Path) -> Result<Option<data::Rows>, Failure> {
    let Some(fewshot) = task.fewshot() else { return Ok(None) };
    let rows = task.read_rows(data_dir, fewshot.split).map_err(|e| e.context(format!("task {} (few-shot split {})", task.name, fewshot.split)))?;
    Ok(Some(rows))
}

/// All requests of one task, one [`Item`] per document, in file order.
pub fn build_requests(task: &Task, data_dir: &Path, tokenizer: &Tokenizer, options: &Options) -> Result<Vec<Item>, Failure> {
    let docs = read_docs(task, data_dir, options)?;
    let shot_docs = match read_shot_rows(task, data_dir)? {
        Some(rows) => Some((0..rows.len()).map(|i| task.doc(rows.get(i))).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    requests::items_for(task, &docs, shot_docs.as_deref(), tokenizer, options)
}
