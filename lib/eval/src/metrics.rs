//! Metrics as lighteval v0.3.0 computes them: acc and acc_norm ("nospace") over summed
//! continuation log-probs, TriviaQA's quasi exact match, GSM8K's `#### number` match, the
//! sample standard error of a mean, and the OpenSeek table (12 numbers + their mean).

use crate::text::{py_lower, py_strip, remove_punctuation};

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
