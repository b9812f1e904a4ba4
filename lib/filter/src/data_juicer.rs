//! data-juicer 1.6.1's text rules, computed as its operators compute them, so a recipe keeps what
//! data-juicer keeps: `average_line_length_filter` (characters per `str.splitlines()` line),
//! `special_characters_filter` (share of characters in its SPECIAL_CHARACTERS set: ASCII
//! punctuation, digits and whitespace, a list of other symbols and every single-character emoji
//! of the `emoji` package, dumped by `data/data_juicer_special.py` into
//! `data/data_juicer_special_characters.txt`) and `word_repetition_filter` (share of repeated
//! word n-grams after splitting on spaces, newlines and tabs, lowercasing and stripping special
//! characters). Bounds are inclusive, as there. (Its `text_length_filter` is `char_length`.)

use std::sync::OnceLock;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

/// data-juicer's SPECIAL_CHARACTERS (its single characters: only those can equal one character).
pub fn special_characters() -> &'static FxHashSet<char> {
    static SET: OnceLock<FxHashSet<char>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("../data/data_juicer_special_characters.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| char::from_u32(u32::from_str_radix(l, 16).expect("hex code point")).expect("a code point"))
            .collect()
    })
}

fn is_special(c: char) -> bool {
    special_characters().contains(&c)
}

/// Python's `str.splitlines()` count.
fn line_count(text: &str) -> usize {
    crate::gopher::python_lines(text).len()
}

/// `len(text) / len(text.splitlines())`, 0 without lines.
pub fn average_line_length(text: &str) -> f64 {
    match line_count(text) {
        0 => 0.0,
        n => text.chars().count() as f64 / n as f64,
    }
}

/// Special characters per character, 0 for an empty text.
pub fn special_character_ratio(text: &str) -> f64 {
    let (mut total, mut special) = (0usize, 0usize);
    for c in text.chars() {
        total += 1;
        special += usize::from(is_special(c));
    }
    if total == 0 {
        0.0
    } else {
        special as f64 / total as f64
    }
}

/// data-juicer's `word_repetition_filter` statistic: words split on ' ', '\n' and '\t', lowercased,
/// stripped of special characters at both ends (empty ones dropped); the share of `n`-grams (joined
/// by spaces) that occur more than once, counted with their repeats.
pub fn word_repetition_ratio(text: &str, n: usize) -> f64 {
    let words: Vec<String> = text
        .split([' ', '\n', '\t'])
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().trim_matches(is_special).to_string())
        .filter(|w| !w.is_empty())
        .collect();
    if n == 0 || words.len() < n {
        return 0.0;
    }
    let mut counts: FxHashMap<String, usize> = FxHashMap::default();
    for gram in words.windows(n) {
        *counts.entry(gram.join(" ")).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    let repeated: usize = counts.values().filter(|&&c| c > 1).sum();
    repeated as f64 / total as f64
}

/// `average_line_length_filter`'s parameters and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AverageLineLength {
    #[serde(default = "ten")]
    pub min_len: f64,
    #[serde(default = "unbounded")]
    pub max_len: f64,
}

/// `special_characters_filter`'s parameters and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialCharacters {
    #[serde(default)]
    pub min_ratio: f64,
    #[serde(default = "quarter")]
    pub max_ratio: f64,
}

/// `word_repetition_filter`'s parameters and defaults (without its sentencepiece tokenization).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordRepetition {
    #[serde(default = "ten_words")]
    pub rep_len: usize,
    #[serde(default)]
    pub min_ratio: f64,
    #[serde(default = "half")]
    pub max_ratio: f64,
}

fn ten() -> f64 {
    10.0
}
fn ten_words() -> usize {
    10
}
fn unbounded() -> f64 {
    f64::INFINITY
}
fn quarter() -> f64 {
    0.25
}
fn half() -> f64 {
    0.5
}

fn reason(value: f64, min: f64, max: f64) -> Option<String> {
    if value < min {
        Some("below_min".into())
    } else if value > max || value.is_nan() {
        Some("above_max".into())
    } else {
        None
    }
}

impl AverageLineLength {
    pub fn check(&self, text: &str) -> Option<String> {
        reason(average_line_length(text), self.min_len, self.max_len)
    }
}

impl SpecialCharacters {
    pub fn check(&self, text: &str) -> Option<String> {
        reason(special_character_ratio(text), self.min_ratio, self.max_ratio)
    }
}

impl WordRepetition {
    pub fn check(&self, text: &str) -> Option<String> {
        reason(word_repetition_ratio(text, self.rep_len), self.min_ratio, self.max_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_as_data_juicer_computes_them() {
        // Every character counts, line ends included: 9 over 2 lines.
        assert_eq!(average_line_length("abcd\nef\r\n"), 9.0 / 2.0);
        assert_eq!(average_line_length(""), 0.0);
        assert!((special_character_ratio("ab1!") - 0.5).abs() < 1e-12);
        // "a b c" twice: 4 of the 5 bigrams ("a b" twice, "b c" twice; "c a" once) are repeats.
        assert!((word_repetition_ratio("A b, c a B c", 2) - 4.0 / 5.0).abs() < 1e-12);
        let rule = SpecialCharacters { min_ratio: 0.0, max_ratio: 0.5 };
        assert_eq!(rule.check("ab1!"), None, "bounds are inclusive");
        assert_eq!(rule.check("a1!"), Some("above_max".into()));
    }
}
