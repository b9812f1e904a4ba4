//! Aggregating task results ([`TaskResult`], made by [`crate::metrics::score`]) into the OpenSeek
//! table: HellaSwag, ARC (mean of Challenge and Easy), PIQA, MMLU (mean over its subjects),
//! CommonsenseQA, TriviaQA, Winogrande, OpenBookQA, GSM8K, SIQA, C-Eval, CMMLU (means over
//! subjects), ×100, and the plain mean of the 12.

use crate::metrics::{self, TaskResult};
use crate::tasks;

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

/// The column a task counts in (its spec's).
fn column_of(task_name: &str) -> Option<usize> {
    let column = tasks::spec_of(task_name)?.column?;
    COLUMNS.iter().position(|c| *c == column)
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

    fn result(task: &str, value: f64) -> TaskResult {
        TaskResult { task: task.into(), metric: "acc_norm", value, stderr: 0.01, n: 10, metrics: vec![], items: vec![] }
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
    fn every_column_has_tasks_and_every_task_column_is_one() {
        for spec in &tasks::TASKS {
            assert!(spec.column.is_none_or(|c| COLUMNS.contains(&c)), "{}", spec.name);
        }
        for column in COLUMNS {
            assert!(tasks::TASKS.iter().any(|s| s.column == Some(column)), "{column}");
        }
        assert_eq!((column_of("arc:easy"), column_of("cmmlu:arts"), column_of("boolq"), column_of("nope")), (Some(1), Some(11), None, None));
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
