//! The benchmark tasks in one table: for each task its name, folder and file layout, default
//! split, subjects, prompt functions, generation settings, metric and table column
//! ([`TASKS`]); the [`Task`]s a `--tasks` list names, and reading a task's rows and documents.

use std::path::Path;

use openseek_common::Failure;

use crate::data::{self, RowRef, Rows};
use crate::prompts::{self, Doc, LmEvalPrompt, Prompt};
use crate::subjects::{self, Subjects};

/// The metric a task reports in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Acc,
    AccNorm,
    QuasiExactMatch,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::QuasiExactMatch => "quasi_exact_match",
        }
    }
}

/// How a task's split lies in its folder (the crate docs show every task's).
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// `<folder>/<split>` in any form [`data::find_split`] reads.
    Split,
    /// One of several sets sharing the folder (ARC): `<folder>/<set>_<split>`, or
    /// `<folder>/<set>/<split>`.
    Set(&'static str),
    /// `<folder>/<split>`, or the original PIQA release: `valid.jsonl` + `valid-labels.lst`
    /// (`train`, `tests` alike).
    LabelsFile,
    /// One file per subject: `<folder>/<split>/<subject>`, one of `csv` there (`{subject}` and
    /// `{split}` filled in), or `<folder>/<subject>/<split>`.
    Subjects { csv: &'static [&'static str] },
}

/// How a generative task's answer is generated and compared with its golds.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    /// The generated text is cut before the first of these.
    pub stop: &'static [&'static str],
    pub max_new_tokens: usize,
    /// Shots drawn from another split and written before the query; `None`: zero-shot.
    pub fewshot: Option<Fewshot>,
    pub answer: Answer,
}

/// Few-shot examples: `shots` documents of `split`, drawn by lighteval's sampler (see
/// crate::requests::fewshot_indices).
#[derive(Debug, Clone, Copy)]
pub struct Fewshot {
    pub split: &'static str,
    pub shots: usize,
}

/// How a generated answer matches a gold (crate::metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// TriviaQA: the stripped answer, lower-cased without ASCII punctuation, equals a gold alias.
    Alias,
    /// GSM8K: the number after the first `#### ` equals the gold's.
    FinalNumber,
}

/// Everything about one benchmark task (a subject benchmark: about each of its subjects).
#[derive(Debug)]
pub struct TaskSpec {
    /// lighteval's name; a subject benchmark's tasks are `<name>:<subject>`.
    pub name: &'static str,
    /// Its folder under the data directory, and how its files lie there.
    pub folder: &'static str,
    pub layout: Layout,
    /// The split OpenSeek's lighteval task file evaluates.
    pub split: &'static str,
    pub subjects: Option<Subjects>,
    pub prompt: Prompt,
    /// lm-evaluation-harness's prompt where it differs from lighteval's (`--harness lm-eval`);
    /// `None`: lighteval's. (lm-eval's MMLU default is the lettered format, not this cloze table;
    /// GSM8K and TriviaQA keep lighteval's.)
    pub lm_eval_prompt: Option<LmEvalPrompt>,
    /// Generative tasks; `None`: multiple choice, one log-likelihood per choice.
    pub generation: Option<Generation>,
    /// The metric reported in the table.
    pub metric: Metric,
    /// The column of the OpenSeek table (crate::table::COLUMNS) it counts in; `None`: not in it.
    pub column: Option<&'static str>,
}

impl TaskSpec {
    /// The few-shot examples per document (0: zero-shot).
    pub fn shots(&self) -> usize {
        self.generation.and_then(|g| g.fewshot).map_or(0, |f| f.shots)
    }
}

/// Every task, in the order of the OpenSeek table (its columns), then the tasks outside it.
pub static TASKS: [TaskSpec; 14] = [
    TaskSpec {
        name: "hellaswag",
        folder: "hellaswag",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::hellaswag,
        lm_eval_prompt: Some(prompts::hellaswag_lm_eval),
        generation: None,
        metric: Metric::AccNorm,
        column: Some("HellaSwag"),
    },
    TaskSpec {
        name: "arc:challenge",
        folder: "arc",
        layout: Layout::Set("ARC-Challenge"),
        split: "test",
        subjects: None,
        prompt: prompts::arc,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("ARC(Average)"),
    },
    TaskSpec {
        name: "arc:easy",
        folder: "arc",
        layout: Layout::Set("ARC-Easy"),
        split: "test",
        subjects: None,
        prompt: prompts::arc,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("ARC(Average)"),
    },
    TaskSpec {
        name: "piqa",
        folder: "piqa",
        layout: Layout::LabelsFile,
        split: "validation",
        subjects: None,
        prompt: prompts::piqa,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("PIQA"),
    },
    TaskSpec {
        name: "mmlu",
        folder: "mmlu",
        layout: Layout::Subjects { csv: &[] },
        split: "test",
        subjects: Some(Subjects::Named(&subjects::MMLU)),
        prompt: prompts::mmlu,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("MMLU(cloze)"),
    },
    TaskSpec {
        name: "commonsense_qa",
        folder: "commonsense_qa",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::commonsense_qa,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::Acc,
        column: Some("CommonsenseQA"),
    },
    TaskSpec {
        name: "triviaqa",
        folder: "triviaqa",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::triviaqa,
        lm_eval_prompt: None,
        generation: Some(Generation { stop: &["\n", ".", ","], max_new_tokens: 20, fewshot: None, answer: Answer::Alias }),
        metric: Metric::QuasiExactMatch,
        column: Some("TriviaQA"),
    },
    TaskSpec {
        name: "winogrande",
        folder: "winogrande",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::winogrande,
        lm_eval_prompt: Some(prompts::winogrande_lm_eval),
        generation: None,
        metric: Metric::AccNorm,
        column: Some("Winogrande"),
    },
    TaskSpec {
        name: "openbookqa",
        folder: "openbookqa",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::openbookqa,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("OpenBookQA"),
    },
    TaskSpec {
        name: "gsm8k",
        folder: "gsm8k",
        layout: Layout::Split,
        split: "test",
        subjects: None,
        prompt: prompts::gsm8k,
        lm_eval_prompt: None,
        generation: Some(Generation {
            stop: &["Question:", "Question"],
            max_new_tokens: 256,
            fewshot: Some(Fewshot { split: "train", shots: 5 }),
            answer: Answer::FinalNumber,
        }),
        metric: Metric::QuasiExactMatch,
        column: Some("GSM8K"),
    },
    TaskSpec {
        name: "siqa",
        folder: "siqa",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::siqa,
        lm_eval_prompt: Some(prompts::siqa_lm_eval),
        generation: None,
        metric: Metric::AccNorm,
        column: Some("SIQA"),
    },
    TaskSpec {
        name: "ceval",
        folder: "ceval",
        layout: Layout::Subjects { csv: &["{subject}_{split}.csv", "{subject}.csv"] },
        split: "val",
        subjects: Some(Subjects::Chinese(&subjects::CEVAL)),
        prompt: prompts::ceval,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("CEval"),
    },
    TaskSpec {
        name: "cmmlu",
        folder: "cmmlu",
        layout: Layout::Subjects { csv: &["{subject}.csv"] },
        split: "test",
        subjects: Some(Subjects::Chinese(&subjects::CMMLU)),
        prompt: prompts::cmmlu,
        lm_eval_prompt: None,
        generation: None,
        metric: Metric::AccNorm,
        column: Some("CMMLU"),
    },
    TaskSpec {
        name: "boolq",
        folder: "boolq",
        layout: Layout::Split,
        split: "validation",
        subjects: None,
        prompt: prompts::boolq,
        lm_eval_prompt: Some(prompts::boolq_lm_eval),
        generation: None,
        metric: Metric::AccNorm,
        column: None,
    },
];

/// The spec a task name belongs to: `hellaswag`, `arc:easy`, or a subject benchmark's
/// `mmlu:<subject>` (the subject is not checked).
pub fn spec_of(task_name: &str) -> Option<&'static TaskSpec> {
    TASKS.iter().find(|s| s.name == task_name).or_else(|| {
        let (benchmark, _) = task_name.split_once(':')?;
        TASKS.iter().find(|s| s.name == benchmark && s.subjects.is_some())
    })
}

/// One task, named as lighteval names it (`hellaswag`, `arc:easy`, `mmlu:anatomy`, ...).
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub spec: &'static TaskSpec,
    /// A subject benchmark's subject.
    subject: Option<&'static str>,
}

impl PartialEq for Task {
    fn eq(&self, other: &Task) -> bool {
        self.name == other.name
    }
}

impl Eq for Task {}

impl Task {
    /// The task of a spec without subjects, or every subject's task.
    fn all_of(spec: &'static TaskSpec) -> Vec<Task> {
        match spec.subjects {
            None => vec![Task { name: spec.name.to_string(), spec, subject: None }],
            Some(list) => list.names().into_iter().map(|s| Task { name: format!("{}:{s}", spec.name), spec, subject: Some(s) }).collect(),
        }
    }

    /// The tasks of a comma-separated list. Groups: `openseek` (the 12-number table's tasks),
    /// a subject benchmark's name (`mmlu`, `cmmlu`, `ceval`: all subjects), `arc` (easy +
    /// challenge), `all` (every task).
    pub fn parse_list(list: &str) -> Result<Vec<Task>, Failure> {
        let mut out: Vec<Task> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            for t in Task::expand(name)? {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        if out.is_empty() {
            return Err(Failure::usage("no tasks given; try --tasks openseek"));
        }
        Ok(out)
    }

    fn expand(name: &str) -> Result<Vec<Task>, Failure> {
        let tasks: Vec<Task> = match name {
            "openseek" => TASKS.iter().filter(|s| s.column.is_some()).flat_map(Task::all_of).collect(),
            "all" => TASKS.iter().flat_map(Task::all_of).collect(),
            _ => match TASKS.iter().find(|s| s.name == name) {
                Some(spec) => Task::all_of(spec),
                // A family of tasks (`arc`), or one subject (`mmlu:anatomy`).
                None => TASKS
                    .iter()
                    .filter(|s| s.name.split_once(':').is_some_and(|(family, _)| family == name))
                    .flat_map(Task::all_of)
                    .chain(Task::subject_task(name))
                    .collect(),
            },
        };
        if tasks.is_empty() {
            return Err(Failure::usage(format!("unknown task {name:?}; tasks: openseek, all, {}", Task::names().join(", "))));
        }
        Ok(tasks)
    }

    /// `<benchmark>:<subject>` of a listed subject.
    fn subject_task(name: &str) -> Option<Task> {
        let (benchmark, subject) = name.split_once(':')?;
        let spec = TASKS.iter().find(|s| s.name == benchmark)?;
        let subject = spec.subjects?.find(subject)?;
        Some(Task { name: name.to_string(), spec, subject: Some(subject) })
    }

    /// The names `--tasks` takes besides the groups, for error messages.
    fn names() -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for spec in &TASKS {
            if let Some((family, _)) = spec.name.split_once(':') {
                if !names.iter().any(|n| n == family) {
                    names.push(family.to_string());
                }
            }
            names.push(if spec.subjects.is_some() { format!("{}[:subject]", spec.name) } else { spec.name.to_string() });
        }
        names
    }

    /// A subject benchmark's subject.
    pub fn subject(&self) -> Option<&'static str> {
        self.subject
    }

    /// The split lighteval evaluates (OpenSeek's task file).
    pub fn default_split(&self) -> &'static str {
        self.spec.split
    }

    /// The metric reported in the table.
    pub fn metric(&self) -> Metric {
        self.spec.metric
    }

    /// Few-shot examples, for generative tasks that have them.
    pub fn fewshot(&self) -> Option<Fewshot> {
        self.spec.generation.and_then(|g| g.fewshot)
    }

    /// Read the task's rows for `split` from `data_dir` (layout in the crate docs).
    pub fn read_rows(&self, data_dir: &Path, split: &str) -> Result<Rows, Failure> {
        let dir = data_dir.join(self.spec.folder);
        match (self.spec.layout, self.subject) {
            (Layout::Split, _) => data::read_rows(&data::find_split(&dir, &[split])?),
            (Layout::Set(set), _) => match data::find_split(&dir, &[&format!("{set}_{split}")]) {
                Ok(files) => data::read_rows(&files),
                Err(e) => match data::find_split(&dir.join(set), &[split]) {
                    Ok(files) => data::read_rows(&files),
                    Err(_) => Err(e),
                },
            },
            (Layout::LabelsFile, _) => read_with_labels_file(&dir, split),
            (Layout::Subjects { csv }, Some(subject)) => {
                let csv: Vec<String> = csv.iter().map(|c| c.replace("{subject}", subject).replace("{split}", split)).collect();
                read_subject(&dir, split, subject, &csv)
            }
            (Layout::Subjects { .. }, None) => Err(Failure::software(format!("task {}: a subject benchmark's task without a subject", self.name))),
        }
    }

    /// The prompt function: one row → one [`Doc`].
    pub fn doc(&self, row: RowRef) -> Result<Doc, Failure> {
        let topic = match (self.spec.subjects, self.subject) {
            (Some(list), Some(subject)) => list.topic(subject),
            _ => "",
        };
        (self.spec.prompt)(row, topic)
    }

    /// The prompt function of EleutherAI's lm-evaluation-harness where it differs from
    /// lighteval's (`--harness lm-eval`; [`TaskSpec::lm_eval_prompt`]), else lighteval's.
    pub fn lm_eval_doc(&self, row: RowRef) -> Result<Doc, Failure> {
        let doc = self.doc(row)?;
        match self.spec.lm_eval_prompt {
            Some(prompt) => prompt(row, doc),
            None => Ok(doc),
        }
    }
}

/// A split in HF form (`{split}.jsonl|parquet` with `label`) or as the original PIQA release
/// (`valid.jsonl` + `valid-labels.lst`, `train.jsonl` + `train-labels.lst`).
fn read_with_labels_file(dir: &Path, split: &str) -> Result<Rows, Failure> {
    if let Ok(files) = data::find_split(dir, &[split]) {
        return data::read_rows(&files);
    }
    let orig = match split {
        "validation" | "valid" => "valid",
        "train" => "train",
        "test" => "tests",
        other => other,
    };
    let jsonl = dir.join(format!("{orig}.jsonl"));
    let labels = dir.join(format!("{orig}-labels.lst"));
    if !jsonl.is_file() {
        return Err(data::missing_split(dir, &[split, orig], &["jsonl", "parquet"]));
    }
    let mut rows = data::read_rows(std::slice::from_ref(&jsonl))?;
    if labels.is_file() {
        let text = std::fs::read_to_string(&labels).map_err(|e| Failure::io_at(&labels, "cannot read", &e))?;
        let ls: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if ls.len() != rows.len() {
            return Err(Failure::data(format!("{}: {} labels for {} rows in {}", labels.display(), ls.len(), rows.len(), jsonl.display())));
        }
        for (r, l) in rows.rows.iter_mut().zip(ls) {
            r.insert("label".into(), serde_json::Value::String(l.to_string()));
        }
        rows.source = format!("{} + {}", jsonl.display(), labels.display());
    }
    Ok(rows)
}

/// Subject files: `{dir}/{split}/{subject}.{jsonl,parquet}` or one of `extra_csv` there,
/// or `{dir}/{subject}/{split}.{jsonl,parquet}`.
fn read_subject(dir: &Path, split: &str, subject: &str, extra_csv: &[String]) -> Result<Rows, Failure> {
    let split_dir = dir.join(split);
    if let Ok(files) = data::find_split(&split_dir, &[subject]) {
        return data::read_rows(&files);
    }
    for name in extra_csv {
        let p = split_dir.join(name);
        if p.is_file() {
            return data::read_rows(&[p]);
        }
    }
    if let Ok(files) = data::find_split(&dir.join(subject), &[split]) {
        return data::read_rows(&files);
    }
    let mut tried: Vec<String> = vec![format!("{split}/{subject}.jsonl"), format!("{split}/{subject}.parquet")];
    tried.extend(extra_csv.iter().map(|c| format!("{split}/{c}")));
    tried.push(format!("{subject}/{split}.jsonl|parquet"));
    Err(Failure::no_input(format!("{}: subject {subject:?}, split {split:?} not found: looked for {}", dir.display(), tried.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand_in_table_order() {
        let t = Task::parse_list("openseek").unwrap();
        assert_eq!(t.len(), 1 + 2 + 1 + 57 + 1 + 1 + 1 + 1 + 1 + 1 + 52 + 67);
        assert_eq!(t[0].name, "hellaswag");
        assert_eq!(t[1].name, "arc:challenge");
        assert!(Task::parse_list("mmlu:nope").is_err());
        assert_eq!(Task::parse_list("gsm8k,gsm8k").unwrap().len(), 1);
        assert_eq!(Task::parse_list("ceval:law").unwrap()[0].default_split(), "val");
    }

    /// The crate docs' data-layout table is written by hand: every task of [`TASKS`] has its row
    /// there, naming the task, its folder (and ARC's set) and the default split it evaluates.
    #[test]
    fn the_crate_docs_layout_table_matches_the_task_table() {
        let rows: Vec<Vec<String>> = include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | "))
            .map(|l| l.trim_end_matches(" |").split(" | ").map(str::to_owned).collect())
            .filter(|cells: &Vec<String>| cells.len() == 3 && cells[0] != "task" && !cells[0].starts_with("---"))
            .collect();
        for spec in &TASKS {
            let name = if spec.subjects.is_some() { format!("{}:<subject>", spec.name) } else { spec.name.to_owned() };
            let row = rows
                .iter()
                .find(|r| r[0].split(", ").any(|n| n == name))
                .unwrap_or_else(|| panic!("{name} has no row in lib.rs's data-layout table"));
            assert!(row[1].contains(&format!("`{}/", spec.folder)), "{name}: the table's files {} do not name the folder {}", row[1], spec.folder);
            if let Layout::Set(set) = spec.layout {
                assert!(row[1].contains(set), "{name}: the table's files {} do not name the set {set}", row[1]);
            }
            assert_eq!(row[2], spec.split, "{name}: the table's default split");
        }
    }

    #[test]
    fn lm_eval_prompts_where_they_differ() {
        let rows = |v: serde_json::Value| data::Rows { source: "t".into(), rows: vec![v.as_object().unwrap().clone()] };
        let task = |n: &str| Task::parse_list(n).unwrap().remove(0);
        let hs = rows(serde_json::json!({"activity_label": "Roof", "ctx_a": "A man climbs.", "ctx_b": "he", "endings": ["sits [title] down", "x"], "label": "0"}));
        let (l, m) = (task("hellaswag").doc(hs.get(0)).unwrap(), task("hellaswag").lm_eval_doc(hs.get(0)).unwrap());
        assert_eq!((l.query.as_str(), l.choices[0].as_str()), ("Roof: A man climbs. He ", " sits. down"));
        assert_eq!((m.query.as_str(), m.choices[0].as_str()), ("Roof: A man climbs. He", " sits. down"));
        let wg = rows(serde_json::json!({"sentence": "The cup fell because _ was heavy.", "option1": "cup", "option2": "table", "answer": "2"}));
        let m = task("winogrande").lm_eval_doc(wg.get(0)).unwrap();
        assert_eq!(m.contexts, vec!["The cup fell because cup", "The cup fell because table"]);
        assert_eq!(m.choices, vec![" was heavy.", " was heavy."]);
        assert_eq!(m.gold, vec![1]);
        let si = rows(serde_json::json!({"context": "Ann ran.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c", "label": "3"}));
        let m = task("siqa").lm_eval_doc(si.get(0)).unwrap();
        assert_eq!((m.query.as_str(), m.gold[0]), ("Q: Ann ran. Why?\nA:", 2));
        let bq = rows(serde_json::json!({"passage": "P.", "question": "is it", "answer": true}));
        let m = task("boolq").lm_eval_doc(bq.get(0)).unwrap();
        assert_eq!((m.query.as_str(), m.choices[1].as_str(), m.gold[0]), ("P.\nQuestion: is it?\nAnswer:", " yes", 1));
        let pq = rows(serde_json::json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 1}));
        assert_eq!(task("piqa").lm_eval_doc(pq.get(0)).unwrap(), task("piqa").doc(pq.get(0)).unwrap());
    }

    #[test]
    fn the_table_is_consistent() {
        for spec in &TASKS {
            assert_eq!(spec.subjects.is_some(), matches!(spec.layout, Layout::Subjects { .. }), "{}", spec.name);
            assert_eq!(spec.generation.is_some(), spec.metric == Metric::QuasiExactMatch, "{}", spec.name);
            assert!(std::ptr::eq(spec_of(spec.name).unwrap(), spec));
        }
        assert_eq!(spec_of("mmlu:anatomy").unwrap().name, "mmlu");
        assert!(spec_of("hellaswag:x").is_none() && spec_of("arc").is_none());
        let e = Task::parse_list("arc:nope").unwrap_err().message;
        assert!(e.contains("hellaswag, arc, arc:challenge, arc:easy, piqa, mmlu[:subject]") && e.ends_with("boolq"), "{e}");
        assert_eq!(Task::parse_list("all").unwrap().len(), Task::parse_list("openseek").unwrap().len() + 1);
    }
}
