//! Metrics as lighteval v0.3.0 computes them: acc and acc_norm ("nospace") over summed
//! continuation log-probs, TriviaQA's quasi exact match, GSM8K's `#### number` match, the
//! sample standard error of a mean, and the scoring of a task's outputs with them into a
//! [`TaskResult`] (the table aggregates those: crate::table).

use openseek_common::Failure;

use crate::requests::Item;
use crate::tasks::{Answer, Task};
use crate::text::{py_lower, py_strip, remove_punctuation};
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
                    prediction: Some(argmax(lp)),
                    prediction_norm: Some(argmax(&normed)),
                    generated: None,
                    acc: Some(acc(lp, &c.gold)),
                    acc_norm: Some(acc_norm(lp, &norms, &c.gold)),
                    exact_match: None,
                }
            }
            (Item::Generate(g), Output::Text(text)) => {
                let Some(generation) = task.spec.generation else {
                    return Err(Failure::software(format!("task {}: a generation item for a multiple-choice task", task.name)));
                };
                let cut = cut_at_stops(text, &g.stop);
                let em = match generation.answer {
                    Answer::Alias => triviaqa_match(cut, &g.golds),
                    Answer::FinalNumber => gsm8k_match(cut, &g.golds),
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
        all.push(("acc", mean(&v), mean_stderr(&v)));
    }
    if let Some(v) = collect(&|s| s.acc_norm) {
        all.push(("acc_norm", mean(&v), mean_stderr(&v)));
    }
    if let Some(v) = collect(&|s| s.exact_match) {
        all.push(("quasi_exact_match", mean(&v), mean_stderr(&v)));
    }
    let metric = task.metric().name();
    let (value, stderr) = all.iter().find(|m| m.0 == metric).map(|m| (m.1, m.2)).unwrap_or((f64::NAN, f64::NAN));
    Ok(TaskResult { task: task.name.clone(), metric, value, stderr, n: items.len(), metrics: all, items: scores })
}


/// The first index of the maximum (numpy `argmax`: ties go to the lowest index; NaN never wins
/// unless all are NaN).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

/// acc: is the highest-scoring choice a gold one?
pub fn acc(logprobs: &[f64], gold: &[usize]) -> f64 {
    gold.contains(&argmax(logprobs)) as u8 as f64
}

/// acc_norm "nospace": scores divided by `norm_chars` (code points of the choice, minus 1 when
/// it starts with a space; lighteval divides by zero too, giving ±inf/NaN, kept here).
pub fn acc_norm(logprobs: &[f64], norm_chars: &[usize], gold: &[usize]) -> f64 {
    let normed: Vec<f64> = logprobs.iter().zip(norm_chars).map(|(&l, &n)| l / n as f64).collect();
    gold.contains(&argmax(&normed)) as u8 as f64
}

/// The text the model produced, cut before the first stop string (lighteval splits on each).
pub fn cut_at_stops<'a>(text: &'a str, stops: &[String]) -> &'a str {
    let end = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min().unwrap_or(text.len());
    &text[..end]
}

/// lighteval's `harness_triviaqa_normalizer`: lower-case, drop ASCII punctuation.
pub fn triviaqa_normalize(text: &str) -> String {
    remove_punctuation(&py_lower(text))
}

/// TriviaQA quasi exact match (`ExactMatches(strip_strings=True, normalize_pred=...)`): an
/// empty prediction scores 0; else the stripped, normalised prediction must equal a stripped gold.
pub fn triviaqa_match(prediction: &str, golds: &[String]) -> f64 {
    if prediction.is_empty() {
        return 0.0;
    }
    let pred = triviaqa_normalize(py_strip(prediction));
    golds.iter().any(|g| py_strip(g) == pred) as u8 as f64
}

/// lighteval's `gsm8k_normalizer`: the first match of `#### (\-?[0-9\.\,]+)`, commas removed;
/// `[invalid]` when there is none.
pub fn gsm8k_extract(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(off) = text[from..].find("#### ") {
        let start = from + off + 5;
        let mut end = start;
        if bytes.get(end) == Some(&b'-') {
            end += 1;
        }
        let digits_start = end;
        while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.' || bytes[end] == b',') {
            end += 1;
        }
        if end > digits_start {
            return text[start..end].replace(',', "");
        }
        from = from + off + 1;
    }
    "[invalid]".to_string()
}

/// GSM8K quasi exact match (`ExactMatches(strip_strings=True, normalize_gold=normalize_pred=
/// gsm8k_normalizer)`): an empty prediction scores 0.
pub fn gsm8k_match(prediction: &str, golds: &[String]) -> f64 {
    if prediction.is_empty() {
        return 0.0;
    }
    let pred = gsm8k_extract(py_strip(prediction));
    golds.iter().any(|g| gsm8k_extract(py_strip(g)) == pred) as u8 as f64
}

/// The mean of per-item scores.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// lighteval's `mean_stderr`: sample standard deviation (n − 1) over √n. NaN below 2 items.
pub fn mean_stderr(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 2 {
        return f64::NAN;
    }
    let mu = mean(xs);
    let var = xs.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (n - 1) as f64;
    (var / n as f64).sqrt()
}

/// The stderr of an unweighted mean of k independent estimates: √(Σ se²) / k.
pub fn mean_of_stderrs(ses: &[f64]) -> f64 {
    if ses.is_empty() {
        return f64::NAN;
    }
    ses.iter().map(|s| s * s).sum::<f64>().sqrt() / ses.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::{ChoiceItem, GenerateItem, LoglikelihoodRequest};

    fn req(norm: usize) -> LoglikelihoodRequest {
        LoglikelihoodRequest { context: String::new(), continuation: String::new(), context_ids: vec![1], continuation_ids: vec![2], norm_chars: norm }
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
        assert_eq!(r.metrics[0], ("acc", 0.5, mean_stderr(&[0.0, 1.0])));
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
    fn acc_and_acc_norm() {
        // Choice 1 has the best raw score; per character choice 0 wins.
        let lp = [-10.0, -9.0];
        assert_eq!(acc(&lp, &[1]), 1.0);
        assert_eq!(acc_norm(&lp, &[20, 5], &[0]), 1.0);
        assert_eq!(acc_norm(&lp, &[20, 5], &[1]), 0.0);
        // ties go to the first index, like numpy
        assert_eq!(argmax(&[-1.0, -1.0]), 0);
        assert_eq!(argmax(&[f64::NAN, -3.0]), 1);
    }

    #[test]
    fn acc_norm_uses_code_points_for_cjk() {
        // " 土地" is 2 code points after the space (6 bytes); " land" is 4 (4 bytes).
        let n = |c: &str| c.chars().count() - c.starts_with(' ') as usize;
        assert_eq!((n(" 土地"), n(" land"), n(" 农业生产工具")), (2, 4, 6));
        // Per code point: -4/2 = -2 vs -3/4 = -0.75 picks choice 1; per byte it would pick 0.
        assert_eq!(acc_norm(&[-4.0, -3.0], &[2, 4], &[1]), 1.0);
    }

    #[test]
    fn triviaqa_normalisation_and_match() {
        let golds = vec!["sunset blvd".to_string(), "sunset boulevard".to_string()];
        assert_eq!(triviaqa_match(" Sunset Boulevard", &golds), 1.0);
        assert_eq!(triviaqa_match("Sunset Blvd.", &golds), 1.0);
        assert_eq!(triviaqa_match(" sunset-boulevard", &golds), 0.0);
        assert_eq!(triviaqa_match("", &golds), 0.0);
        assert_eq!(triviaqa_match("   ", &["".to_string()]), 1.0);
        assert_eq!(triviaqa_normalize("O'Neill & Sons!"), "oneill  sons");
        assert_eq!(cut_at_stops(" Paris, France.", &[",".into(), ".".into(), "\n".into()]), " Paris");
    }

    #[test]
    fn gsm8k_extraction() {
        assert_eq!(gsm8k_extract("so 5+5=10\n#### 1,000"), "1000");
        assert_eq!(gsm8k_extract("#### -3.5 dollars"), "-3.5");
        assert_eq!(gsm8k_extract("The answer is 18"), "[invalid]");
        assert_eq!(gsm8k_extract("#### x\n#### 7"), "7");
        assert_eq!(gsm8k_extract("####  7"), "[invalid]");
        let gold = vec![" Janet sells 9 eggs.\n#### 18".to_string()];
        assert_eq!(gsm8k_match(" 16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18\n\n", &gold), 1.0);
        assert_eq!(gsm8k_match(" #### 18.0", &gold), 0.0);
        assert_eq!(gsm8k_match("", &gold), 0.0);
    }

    #[test]
    fn stderr_is_sample_stderr() {
        let xs = [1.0, 0.0, 1.0, 1.0];
        // numpy: np.std(xs, ddof=1) / sqrt(4) = 0.25
        assert!((mean_stderr(&xs) - 0.25).abs() < 1e-12);
        assert!(mean_stderr(&[1.0]).is_nan());
        assert!((mean_of_stderrs(&[0.3, 0.4]) - 0.25).abs() < 1e-12);
    }
}
