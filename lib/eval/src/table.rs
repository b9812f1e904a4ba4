//! Scoring a task's outputs into a [`TaskResult`] and aggregating results into the OpenSeek
//! table: HellaSwag, ARC (mean of Challenge and Easy), PIQA, MMLU (mean over its subjects),
//! CommonsenseQA, TriviaQA, Winogrande, OpenBookQA, GSM8K, SIQA, C-Eval, CMMLU (means over
//! subjects), ×100, and the plain mean of the 12.

use openseek_common::Failure;

use crate::metrics;
use crate::requests::Item;
use crate::tasks::{Kind, Task};
use crate::Output;

/// One item's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemScore {
    pub doc_index: usize,
    /// Multiple choice: argmax of the raw and of the normalised log-probs.
    pub prediction: Option<usize>,
    pub prediction_norm: Option<usize>,
    /// Generative: the text after cutting at the stop strings.
    pub generated: Option<String>,
    pub acc: Option<f64>,
    pub acc_norm: Option<f64>,
    pub exact_match: Option<f64>,
}

/// A task's score.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub task: String,
    /// The metric the table reports for this task, its mean (0..1) and sample stderr.
    pub metric: &'static str,
    pub value: f64,
    pub stderr: f64,
    pub n: usize,
    /// Every metric computed: (name, mean, stderr).
    pub metrics: Vec<(&'static str, f64, f64)>,
    pub items: Vec<ItemScore>,
}

/// Score items against outputs: acc and acc_norm for multiple choice, quasi exact match for
/// TriviaQA / GSM8K. Errors when an output does not fit its item.
pub fn score(task: &Task, items: &[Item], outputs: &[Output]) -> Result<TaskResult, Failure> {
    if items.len() != outputs.len() {
        return Err(Failure::software(format!("task {}: {} items but {} outputs", task.name, items.len(), outputs.len())));
    }
    let mut scores = Vec::with_capacity(items.len());
    for (item, out) in items.iter().zip(outputs) {
        scores.push(match (item, out) {
            (Item::Choice(c), Output::LogLikelihoods(lp)) => {
                if lp.len() != c.requests.len() {
                    return Err(Failure::software(format!(
                        "task {} doc {}: {} log-likelihoods for {} choices",
                        task.name,
                        c.doc_index,
                        lp.len(),
                        c.requests.len()
                    )));
                }
                let norms: Vec<usize> = c.requests.iter().map(|r| r.norm_chars).collect();
                let normed: Vec<f64> = lp.iter().zip(&norms).map(|(&l, &n)| l / n as f64).collect();
                ItemScore {
                    doc_index: c.doc_index,
                    prediction: Some(metrics::argmax(lp)),
                    prediction_norm: Some(metrics::argmax(&normed)),
                    generated: None,
                    acc: Some(metrics::acc(lp, &c.gold)),
                    acc_norm: Some(metrics::acc_norm(lp, &norms, &c.gold)),
                    exact_match: None,
                }
            }
            (Item::Generate(g), Output::Text(text)) => {
                let cut = metrics::cut_at_stops(text, &g.stop);
                let em = match task.kind {
                    Kind::Gsm8k => metrics::gsm8k_match(cut, &g.golds),
                    _ => metrics::triviaqa_match(cut, &g.golds),
                };
                ItemScore {
                    doc_index: g.doc_index,
                    prediction: None,
                    prediction_norm: None,
                    generated: Some(cut.to_string()),
                    acc: None,
                    acc_norm: None,
                    exact_match: Some(em),
                }
            }
            _ => return Err(Failure::software(format!("task {}: an output of the wrong kind for its item", task.name))),
        });
    }
    let collect = |f: &dyn Fn(&ItemScore) -> Option<f64>| -> Option<Vec<f64>> { scores.iter().map(f).collect() };
    let mut all = Vec::new();
    if let Some(v) = collect(&|s| s.acc) {
        all.push(("acc", metrics::mean(&v), metrics::mean_stderr(&v)));
    }
    if let Some(v) = collect(&|s| s.acc_norm) {
        all.push(("acc_norm", metrics::mean(&v), metrics::mean_stderr(&v)));
    }
    if let Some(v) = collect(&|s| s.exact_match) {
        all.push(("quasi_exact_match", metrics::mean(&v), metrics::mean_stderr(&v)));
    }
    let metric = task.metric().name();
    let (value, stderr) = all.iter().find(|m| m.0 == metric).map(|m| (m.1, m.2)).unwrap_or((f64::NAN, f64::NAN));
    Ok(TaskResult { task: task.name.clone(), metric, value, stderr, n: items.len(), metrics: all, items: scores })
}

/// The table's column names, in the seeds' order.
pub const COLUMNS: [&str; 12] = [
    "HellaSwag", "ARC(Average)", "PIQA", "MMLU(cloze)", "CommonsenseQA", "TriviaQA", "Winogrande",
    "OpenBookQA", "GSM8K", "SIQA", "CEval", "CMMLU",
];

/// The 12 numbers (×100; `None` where a task was not run) and their mean (when all 12 are there).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// (column, value ×100, stderr ×100, number of tasks averaged)
    pub columns: Vec<(&'static str, Option<f64>, Option<f64>, usize)>,
    pub mean: Option<f64>,
}

fn column_of(name: &str) -> Option<usize> {
    let prefix = name.split(':').next().unwrap_or(name);
    Some(match prefix {
        "hellaswag" => 0,
        "arc" => 1,
        "piqa" => 2,
        "mmlu" => 3,
        "commonsense_qa" => 4,
        "triviaqa" => 5,
        "winogrande" => 6,
        "openbookqa" => 7,
        "gsm8k" => 8,
        "siqa" => 9,
        "ceval" => 10,
        "cmmlu" => 11,
        _ => return None,
    })
}

/// Aggregate task results into the table. A column averaging several tasks (ARC, MMLU, C-Eval,
/// CMMLU) is the unweighted mean of their values; its stderr is √(Σ se²)/k.
pub fn table(results: &[TaskResult]) -> Table {
    let mut groups: Vec<Vec<&TaskResult>> = vec![Vec::new(); 12];
    for r in results {
        if let Some(c) = column_of(&r.task) {
            groups[c].push(r);
        }
    }
    let columns: Vec<_> = COLUMNS
        .iter()
        .zip(&groups)
        .map(|(name, g)| {
            if g.is_empty() {
                (*name, None, None, 0)
            } else {
                let vals: Vec<f64> = g.iter().map(|r| r.value).collect();
                let ses: Vec<f64> = g.iter().map(|r| r.stderr).collect();
                (*name, Some(100.0 * metrics::mean(&vals)), Some(100.0 * metrics::mean_of_stderrs(&ses)), g.len())
            }
        })
        .collect();
    let mean = if columns.iter().all(|c| c.1.is_some()) {
        Some(columns.iter().map(|c| c.1.unwrap()).sum::<f64>() / 12.0)
    } else {
        None
    };
    Table { columns, mean }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::{ChoiceItem, GenerateItem, LoglikelihoodRequest};

    fn req(norm: usize) -> LoglikelihoodRequest {
        LoglikelihoodRequest { context: String::new(), continuation: String::new(), context_ids: vec![1], continuation_ids: vec![2], norm_chars: norm }
    }

    fn result(task: &str, value: f64) -> TaskResult {
        TaskResult { task: task.into(), metric: "acc_norm", value, stderr: 0.01, n: 10, metrics: vec![], items: vec![] }
    }

    #[test]
    fn scores_choice_items() {
        let task = Task::parse_list("hellaswag").unwrap().remove(0);
        let items = vec![
            Item::Choice(ChoiceItem { doc_index: 0, query: String::new(), choices: vec![], gold: vec![0], requests: vec![req(10), req(1)] }),
            Item::Choice(ChoiceItem { doc_index: 1, query: String::new(), choices: vec![], gold: vec![1], requests: vec![req(10), req(1)] }),
        ];
        let outs = vec![Output::LogLikelihoods(vec![-5.0, -1.0]), Output::LogLikelihoods(vec![-5.0, -1.0])];
        let r = score(&task, &items, &outs).unwrap();
        // raw: choice 1 both times → acc 0.5; normalised: -0.5 vs -1 → choice 0 → acc_norm 0.5
        assert_eq!(r.metrics[0], ("acc", 0.5, metrics::mean_stderr(&[0.0, 1.0])));
        assert_eq!(r.value, 0.5);
        assert_eq!(r.items[0].prediction_norm, Some(0));
        assert!(score(&task, &items, &outs[..1]).is_err());
        assert!(score(&task, &items[..1], &[Output::LogLikelihoods(vec![1.0])]).is_err());
    }

    #[test]
    fn scores_generation_items_cutting_stops() {
        let task = Task::parse_list("triviaqa").unwrap().remove(0);
        let items = vec![Item::Generate(GenerateItem {
            doc_index: 0,
            context: String::new(),
            context_ids: vec![],
            stop: vec!["\n".into(), ".".into(), ",".into()],
            max_new_tokens: 20,
            golds: vec!["paris".into()],
        })];
        let r = score(&task, &items, &[Output::Text(" Paris, France".into())]).unwrap();
        assert_eq!(r.value, 1.0);
        assert_eq!(r.items[0].generated.as_deref(), Some(" Paris"));
    }

    #[test]
    fn table_averages_groups_and_means() {
        let mut rs: Vec<TaskResult> = ["hellaswag", "piqa", "commonsense_qa", "triviaqa", "winogrande", "openbookqa", "gsm8k", "siqa"]
            .iter()
            .map(|t| result(t, 0.5))
            .collect();
        rs.push(result("arc:challenge", 0.2));
        rs.push(result("arc:easy", 0.4));
        rs.push(result("mmlu:anatomy", 0.1));
        rs.push(result("mmlu:virology", 0.3));
        let t = table(&rs);
        assert_eq!(t.columns[1].0, "ARC(Average)");
        assert!((t.columns[1].1.unwrap() - 30.0).abs() < 1e-9);
        assert!((t.columns[3].1.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(t.columns[3].3, 2);
        assert_eq!(t.mean, None); // C-Eval and CMMLU missing
        rs.push(result("ceval:law", 0.6));
        rs.push(result("cmmlu:arts", 0.6));
        let t = table(&rs);
        let expect = (50.0 * 8.0 + 30.0 + 20.0 + 60.0 + 60.0) / 12.0;
        assert!((t.mean.unwrap() - expect).abs() < 1e-9);
    }

    #[test]
    fn seeds_baseline_mean() {
        // EVAL.md: the baseline's 12 numbers average to 36.60.
        let v = [51.51, 43.85, 72.91, 32.7, 29.89, 15.28, 52.64, 34.2, 2.27, 42.12, 31.18, 30.63];
        let rs: Vec<TaskResult> = ["hellaswag", "arc:easy", "piqa", "mmlu:anatomy", "commonsense_qa", "triviaqa", "winogrande", "openbookqa", "gsm8k", "siqa", "ceval:law", "cmmlu:arts"]
            .iter()
            .zip(v)
            .map(|(t, x)| result(t, x / 100.0))
            .collect();
        assert_eq!(format!("{:.2}", table(&rs).mean.unwrap()), "36.60");
    }
}
