//! The benchmark tasks: names, default splits, where their files lie, and the prompt functions
//! (lighteval v0.3.0 `tasks_prompt_formatting.py` + OpenSeek's `lighteval_tasks_v3.py`) that
//! turn a row into a [`Doc`]: query, choices and gold.

use std::path::Path;

use openseek_common::Failure;

use crate::data::{self, RowRef, Rows};
use crate::subjects;
use crate::text::{hellaswag_preprocess, py_capitalize, py_lower, py_strip, remove_punctuation};

/// Which benchmark a task is (subject tasks carry their subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Hellaswag,
    Winogrande,
    Piqa,
    Siqa,
    OpenBookQa,
    ArcEasy,
    ArcChallenge,
    CommonsenseQa,
    Mmlu(String),
    Cmmlu(String),
    Ceval(String),
    TriviaQa,
    Gsm8k,
    Boolq,
}

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

/// One task, named as lighteval names it (`hellaswag`, `arc:easy`, `mmlu:anatomy`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub name: String,
    pub kind: Kind,
}

/// One evaluated document: what the prompt function made of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub query: String,
    /// Multiple choice: the scored continuations. Generative: empty.
    pub choices: Vec<String>,
    /// Multiple choice: the gold choice indices.
    pub gold: Vec<usize>,
    /// Generative: the gold answers (TriviaQA: normalised aliases; GSM8K: " " + answer).
    pub gold_texts: Vec<String>,
    /// Multiple choice with one context per choice (lm-eval's Winogrande): the contexts, the
    /// same continuation in `choices`. Empty: every choice continues `query`.
    pub contexts: Vec<String>,
}

impl Task {
    fn new(name: impl Into<String>, kind: Kind) -> Task {
        Task { name: name.into(), kind }
    }

    /// The tasks of a comma-separated list. Groups: `openseek` (the 12-number table's tasks),
    /// `mmlu`, `cmmlu`, `ceval` (all subjects), `arc` (easy + challenge), `all` (openseek + boolq).
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
        let one = |k: Kind| Ok(vec![Task::new(name, k)]);
        match name {
            "openseek" => {
                let mut v = Vec::new();
                for n in ["hellaswag", "arc", "piqa", "mmlu", "commonsense_qa", "triviaqa", "winogrande", "openbookqa", "gsm8k", "siqa", "ceval", "cmmlu"] {
                    v.extend(Task::expand(n)?);
                }
                Ok(v)
            }
            "all" => {
                let mut v = Task::expand("openseek")?;
                v.extend(Task::expand("boolq")?);
                Ok(v)
            }
            "arc" => Ok(vec![Task::new("arc:challenge", Kind::ArcChallenge), Task::new("arc:easy", Kind::ArcEasy)]),
            "mmlu" => Ok(subjects::MMLU.iter().map(|s| Task::new(format!("mmlu:{s}"), Kind::Mmlu(s.to_string()))).collect()),
            "cmmlu" => Ok(subjects::CMMLU.iter().map(|(s, _)| Task::new(format!("cmmlu:{s}"), Kind::Cmmlu(s.to_string()))).collect()),
            "ceval" => Ok(subjects::CEVAL.iter().map(|(s, _)| Task::new(format!("ceval:{s}"), Kind::Ceval(s.to_string()))).collect()),
            "hellaswag" => one(Kind::Hellaswag),
            "winogrande" => one(Kind::Winogrande),
            "piqa" => one(Kind::Piqa),
            "siqa" => one(Kind::Siqa),
            "openbookqa" => one(Kind::OpenBookQa),
            "arc:easy" => one(Kind::ArcEasy),
            "arc:challenge" => one(Kind::ArcChallenge),
            "commonsense_qa" => one(Kind::CommonsenseQa),
            "triviaqa" => one(Kind::TriviaQa),
            "gsm8k" => one(Kind::Gsm8k),
            "boolq" => one(Kind::Boolq),
            _ => {
                if let Some(s) = name.strip_prefix("mmlu:") {
                    if subjects::MMLU.contains(&s) {
                        return one(Kind::Mmlu(s.into()));
                    }
                } else if let Some(s) = name.strip_prefix("cmmlu:") {
                    if subjects::cmmlu_chinese(s).is_some() {
                        return one(Kind::Cmmlu(s.into()));
                    }
                } else if let Some(s) = name.strip_prefix("ceval:") {
                    if subjects::ceval_chinese(s).is_some() {
                        return one(Kind::Ceval(s.into()));
                    }
                }
                Err(Failure::usage(format!(
                    "unknown task {name:?}; tasks: openseek, all, hellaswag, winogrande, piqa, siqa, openbookqa, arc, arc:easy, arc:challenge, commonsense_qa, mmlu[:subject], cmmlu[:subject], ceval[:subject], triviaqa, gsm8k, boolq"
                )))
            }
        }
    }

    /// The split lighteval evaluates (OpenSeek's task file): validation, except ARC / MMLU /
    /// CMMLU / GSM8K `test` and C-Eval `val`.
    pub fn default_split(&self) -> &'static str {
        match self.kind {
            Kind::ArcEasy | Kind::ArcChallenge | Kind::Mmlu(_) | Kind::Cmmlu(_) | Kind::Gsm8k => "test",
            Kind::Ceval(_) => "val",
            _ => "validation",
        }
    }

    pub fn is_generative(&self) -> bool {
        matches!(self.kind, Kind::TriviaQa | Kind::Gsm8k)
    }

    /// The metric reported in the table.
    pub fn metric(&self) -> Metric {
        match self.kind {
            Kind::CommonsenseQa => Metric::Acc,
            Kind::TriviaQa | Kind::Gsm8k => Metric::QuasiExactMatch,
            _ => Metric::AccNorm,
        }
    }

    /// Read the task's rows for `split` from `data_dir` (layout in the crate docs).
    pub fn read_rows(&self, data_dir: &Path, split: &str) -> Result<Rows, Failure> {
        let simple = |folder: &str| -> Result<Rows, Failure> {
            let dir = data_dir.join(folder);
            data::read_rows(&data::find_split(&dir, &[split])?)
        };
        match &self.kind {
            Kind::Hellaswag => simple("hellaswag"),
            Kind::Winogrande => simple("winogrande"),
            Kind::Siqa => simple("siqa"),
            Kind::OpenBookQa => simple("openbookqa"),
            Kind::CommonsenseQa => simple("commonsense_qa"),
            Kind::TriviaQa => simple("triviaqa"),
            Kind::Boolq => simple("boolq"),
            Kind::Gsm8k => simple("gsm8k"),
            Kind::Piqa => read_piqa(&data_dir.join("piqa"), split),
            Kind::ArcEasy | Kind::ArcChallenge => {
                let sub = if self.kind == Kind::ArcEasy { "ARC-Easy" } else { "ARC-Challenge" };
                let dir = data_dir.join("arc");
                match data::find_split(&dir, &[&format!("{sub}_{split}")]) {
                    Ok(files) => data::read_rows(&files),
                    Err(e) => match data::find_split(&dir.join(sub), &[split]) {
                        Ok(files) => data::read_rows(&files),
                        Err(_) => Err(e),
                    },
                }
            }
            Kind::Mmlu(s) => read_subject(&data_dir.join("mmlu"), split, s, &[]),
            Kind::Cmmlu(s) => read_subject(&data_dir.join("cmmlu"), split, s, &[format!("{s}.csv")]),
            Kind::Ceval(s) => read_subject(&data_dir.join("ceval"), split, s, &[format!("{s}_{split}.csv"), format!("{s}.csv")]),
        }
    }

    /// The prompt function: one row → one [`Doc`].
    pub fn doc(&self, row: RowRef) -> Result<Doc, Failure> {
        let mc = |query: String, choices: Vec<String>, gold: usize| -> Result<Doc, Failure> {
            if gold >= choices.len() {
                return Err(Failure::data(format!(
                    "{}: row {}: gold index {gold} but only {} choices",
                    row.source,
                    row.index,
                    choices.len()
                )));
            }
            Ok(Doc { query, choices, gold: vec![gold], gold_texts: vec![], contexts: vec![] })
        };
        let spaced = |v: Vec<String>| -> Vec<String> { v.into_iter().map(|c| format!(" {c}")).collect() };
        match &self.kind {
            Kind::Hellaswag => {
                let ctx = format!("{} {} ", row.str("ctx_a")?, py_capitalize(row.str("ctx_b")?));
                let query = hellaswag_preprocess(&format!("{}: {ctx}", row.str("activity_label")?));
                let choices = row.str_list("endings")?.iter().map(|e| format!(" {}", hellaswag_preprocess(e))).collect();
                mc(query, choices, index_label(row, "label", 0)?)
            }
            Kind::Winogrande => {
                let sentence = row.str("sentence")?;
                let parts: Vec<&str> = sentence.split('_').collect();
                if parts.len() != 2 {
                    return Err(Failure::data(format!(
                        "{}: row {}: the winogrande sentence must hold exactly one `_`: {sentence:?}",
                        row.source, row.index
                    )));
                }
                let end = py_strip(parts[1]);
                let choices = vec![format!("{} {end}", row.label("option1")?), format!("{} {end}", row.label("option2")?)];
                mc(parts[0].to_string(), choices, index_label(row, "answer", 1)?)
            }
            Kind::Piqa => {
                let query = format!("Question: {}\nAnswer:", row.str("goal")?);
                mc(query, vec![format!(" {}", row.str("sol1")?), format!(" {}", row.str("sol2")?)], index_label(row, "label", 0)?)
            }
            Kind::Siqa => {
                let query = format!("{} {}", row.str("context")?, row.str("question")?);
                let choices = spaced(vec![row.str("answerA")?.into(), row.str("answerB")?.into(), row.str("answerC")?.into()]);
                mc(query, choices, index_label(row, "label", 1)?)
            }
            Kind::OpenBookQa => {
                let ch = row.object("choices")?;
                let key = row.str("answerKey")?;
                mc(row.str("question_stem")?.to_string(), spaced(ch.str_list("text")?), letter_index(row, py_strip(key), 5)?)
            }
            Kind::ArcEasy | Kind::ArcChallenge => {
                let ch = row.object("choices")?;
                let labels = ch.str_list("label")?;
                let key = row.str("answerKey")?;
                let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                    Failure::data(format!("{}: row {}: answerKey {key:?} is not among the labels {labels:?}", row.source, row.index))
                })?;
                mc(format!("Question: {}\nAnswer:", row.str("question")?), spaced(ch.str_list("text")?), gold)
            }
            Kind::CommonsenseQa => {
                let ch = row.object("choices")?;
                let key = row.str("answerKey")?;
                mc(row.str("question")?.to_string(), spaced(ch.str_list("text")?), letter_index(row, py_strip(key), 26)?)
            }
            Kind::Mmlu(subject) => {
                let topic = if row.has("subject") { row.str("subject")?.to_string() } else { subject.clone() };
                let query = format!("The following are questions about {}.\nQuestion: {}\nAnswer:", topic.replace('_', " "), row.str("question")?);
                let (choices, gold) = choices_and_answer(row)?;
                mc(query, spaced(choices), gold)
            }
            Kind::Cmmlu(subject) => {
                let topic = subjects::cmmlu_chinese(subject).unwrap_or(subject);
                let (q, choices, gold) = chinese_row(row)?;
                let query = format!("以下是关于{}的单项选择题，请直接给出正确答案的选项。\n题目：{q}\n答案是：", topic.replace('_', " "));
                mc(query, spaced(choices), gold)
            }
            Kind::Ceval(subject) => {
                let topic = subjects::ceval_chinese(subject).unwrap_or(subject);
                let (q, choices, gold) = chinese_row(row)?;
                let query = format!("以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n题目：{q}\n答案：", topic.replace('_', " "));
                mc(query, spaced(choices), gold)
            }
            Kind::Boolq => {
                let query = format!("{}\nQuestion: {}?\nAnswer:", row.str("passage")?, py_capitalize(row.str("question")?));
                let gold = if row.has("label") { index_label(row, "label", 0)? } else { row.bool("answer")? as usize };
                mc(query, vec![" No".into(), " Yes".into()], gold)
            }
            Kind::TriviaQa => {
                let aliases = row.object("answer")?.str_list("aliases")?;
                if aliases.is_empty() {
                    return Err(Failure::data(format!("{}: row {}: answer.aliases is empty", row.source, row.index)));
                }
                Ok(Doc {
                    query: format!("Question: {}\nAnswer:", row.str("question")?),
                    choices: vec![],
                    gold: vec![],
                    gold_texts: triviaqa_golds(aliases),
                    contexts: vec![],
                })
            }
            Kind::Gsm8k => Ok(Doc {
                query: format!("Question: {}\nAnswer:", row.str("question")?),
                choices: vec![],
                gold: vec![],
                gold_texts: vec![format!(" {}", row.str("answer")?)],
                contexts: vec![],
            }),
        }
    }
}

impl Task {
    /// The prompt function of EleutherAI's lm-evaluation-harness where it differs from
    /// lighteval's (`--harness lm-eval`): HellaSwag without the trailing space of the query (so no
    /// doubled space before each ending), Winogrande by partial evaluation (one context per option
    /// — the sentence up to the blank with the option filled in — and the rest of the sentence as
    /// the common continuation), SIQA as "Q: {context} {question}\nA:", BoolQ with the question as
    /// written and " no" / " yes". Every other task is built as lighteval builds it (lm-eval's MMLU
    /// default is the lettered format, not this cloze table; GSM8K and TriviaQA keep lighteval's).
    pub fn lm_eval_doc(&self, row: RowRef) -> Result<Doc, Failure> {
        let doc = self.doc(row)?;
        let gold = doc.gold.clone();
        let mc = |query: String, choices: Vec<String>, contexts: Vec<String>| Doc { query, choices, gold: gold.clone(), gold_texts: vec![], contexts };
        Ok(match &self.kind {
            Kind::Hellaswag => {
                let ctx = format!("{} {}", row.str("ctx_a")?, py_capitalize(row.str("ctx_b")?));
                // lm-eval's preprocess strips first, then rewrites.
                let query = hellaswag_preprocess(py_strip(&format!("{}: {ctx}", row.str("activity_label")?)));
                let choices = row.str_list("endings")?.iter().map(|e| format!(" {}", hellaswag_preprocess(py_strip(e)))).collect();
                mc(query, choices, vec![])
            }
            Kind::Winogrande => {
                let sentence = row.str("sentence")?;
                let blank = sentence.find('_').expect("doc() checked the blank");
                let target = format!(" {}", py_strip(&sentence[blank + 1..]));
                let contexts = vec![format!("{}{}", &sentence[..blank], row.label("option1")?), format!("{}{}", &sentence[..blank], row.label("option2")?)];
                mc(sentence[..blank].to_string(), vec![target.clone(), target], contexts)
            }
            Kind::Siqa => mc(format!("Q: {} {}\nA:", row.str("context")?, row.str("question")?), doc.choices, vec![]),
            Kind::Boolq => mc(format!("{}\nQuestion: {}?\nAnswer:", row.str("passage")?, row.str("question")?), vec![" no".into(), " yes".into()], vec![]),
            _ => doc,
        })
    }
}

/// TriviaQA golds as lighteval builds them: aliases sorted (code point order), an alias dropped
/// when it starts with the last kept one, then lower-cased with ASCII punctuation removed.
pub fn triviaqa_golds(mut aliases: Vec<String>) -> Vec<String> {
    aliases.sort();
    let mut kept: Vec<String> = Vec::new();
    for a in aliases {
        if kept.last().is_none_or(|last| !a.starts_with(last.as_str())) {
            kept.push(a);
        }
    }
    kept.iter().map(|a| remove_punctuation(&py_lower(a))).collect()
}

/// A 0- or 1-based integer label column as a 0-based index.
fn index_label(row: RowRef, key: &str, base: i64) -> Result<usize, Failure> {
    let v = row.int(key)?;
    if v < base {
        return Err(Failure::data(format!("{}: row {}: {key} = {v} is not a valid label (test rows without labels cannot be scored)", row.source, row.index)));
    }
    Ok((v - base) as usize)
}

fn letter_index(row: RowRef, key: &str, n: usize) -> Result<usize, Failure> {
    let mut cs = key.chars();
    match (cs.next(), cs.next()) {
        (Some(c @ 'A'..='Z'), None) if ((c as u8 - b'A') as usize) < n => Ok((c as u8 - b'A') as usize),
        _ => Err(Failure::data(format!("{}: row {}: answerKey {key:?} is not a letter A..", row.source, row.index))),
    }
}

/// HF schema (`choices` list + `answer` index or letter) for MMLU-style rows.
fn choices_and_answer(row: RowRef) -> Result<(Vec<String>, usize), Failure> {
    let choices = row.str_list("choices")?;
    let answer = row.label("answer")?;
    let gold = match answer.parse::<usize>() {
        Ok(i) => i,
        Err(_) => letter_index(row, py_strip(&answer), choices.len())?,
    };
    Ok((choices, gold))
}

/// CMMLU / C-Eval rows: the original CSV (`Question|question`, `A`..`D`, `Answer|answer` letter)
/// or the HF lighteval schema (`question`, `choices`, `answer`).
fn chinese_row(row: RowRef) -> Result<(String, Vec<String>, usize), Failure> {
    if row.has("choices") {
        let (choices, gold) = choices_and_answer(row)?;
        return Ok((row.str("question")?.to_string(), choices, gold));
    }
    let q = if row.has("Question") { row.str("Question")? } else { row.str("question")? };
    let choices: Vec<String> = ["A", "B", "C", "D"].iter().map(|k| row.label(k)).collect::<Result<_, _>>()?;
    let ans = if row.has("Answer") { row.str("Answer")? } else { row.str("answer")? };
    Ok((q.to_string(), choices, letter_index(row, py_strip(ans), 4)?))
}

/// PIQA: HF (`{split}.jsonl|parquet` with `label`) or the original release (`valid.jsonl` +
/// `valid-labels.lst`, `train.jsonl` + `train-labels.lst`).
fn read_piqa(dir: &Path, split: &str) -> Result<Rows, Failure> {
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
    fn triviaqa_prefix_removal_uses_last_kept() {
        let g = triviaqa_golds(vec!["Sunset Blvd".into(), "West Sunset Boulevard".into(), "Sunset Boulevard".into(), "Sunset Bulevard".into(), "Sunset Blvd.".into()]);
        assert_eq!(g, vec!["sunset blvd", "sunset boulevard", "sunset bulevard", "west sunset boulevard"]);
        // "ab" is kept after "a"? No: it starts with "a". "b" is kept.
        assert_eq!(triviaqa_golds(vec!["ab".into(), "a".into(), "b".into()]), vec!["a", "b"]);
    }
}
