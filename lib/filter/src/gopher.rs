//! Gopher's quality and repetition rules (Rae et al. 2021, table A1) as datatrove 0.10.1's
//! `GopherQualityFilter` and `GopherRepetitionFilter` compute them (English words from the spaCy
//! splitter, Python string lengths in code points), so a recipe keeps what datatrove keeps.

use rustc_hash::{FxHashMap, FxHashSet};

use openseek_dedup::normalize::{in_punctuation_set, is_python_space};
use openseek_dedup::words::EnglishWords;
use serde::Deserialize;
use unicode_general_category::{get_general_category, GeneralCategory as G};

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Python's `str.isalpha`: a letter of any category L*.
fn is_python_alpha(c: char) -> bool {
    matches!(get_general_category(c), G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter)
}

/// Python's `str.splitlines()` (without the line ends).
pub(crate) fn python_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if matches!(c, '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            lines.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = iter.peek() {
                    iter.next();
                    end += 1;
                }
            }
            start = end;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// datatrove's `GopherQualityFilter` parameters (its defaults; `null`-able as there by omitting).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GopherQuality {
    pub min_doc_words: Option<usize>,
    pub max_doc_words: Option<usize>,
    pub min_avg_word_length: Option<f64>,
    pub max_avg_word_length: Option<f64>,
    pub max_symbol_word_ratio: Option<f64>,
    pub max_bullet_lines_ratio: Option<f64>,
    pub max_ellipsis_lines_ratio: Option<f64>,
    pub max_non_alpha_words_ratio: Option<f64>,
    pub min_stop_words: Option<usize>,
    pub stop_words: Vec<String>,
}

impl Default for GopherQuality {
    fn default() -> Self {
        GopherQuality {
            min_doc_words: Some(50),
            max_doc_words: Some(100_000),
            min_avg_word_length: Some(3.0),
            max_avg_word_length: Some(10.0),
            max_symbol_word_ratio: Some(0.1),
            max_bullet_lines_ratio: Some(0.9),
            max_ellipsis_lines_ratio: Some(0.3),
            max_non_alpha_words_ratio: Some(0.8),
            min_stop_words: Some(2),
            stop_words: ["the", "be", "to", "of", "and", "that", "have", "with"].map(String::from).to_vec(),
        }
    }
}

/// A nonzero threshold (datatrove tests thresholds for truth, so 0 disables a rule too).
fn on<T: Copy + PartialEq + Default>(x: Option<T>) -> Option<T> {
    x.filter(|v| *v != T::default())
}

impl GopherQuality {
    /// None to keep, or the reason (datatrove's names) to drop.
    pub fn check(&self, text: &str) -> Option<&'static str> {
        let words = EnglishWords::get().split(text);
        let n_words = words.len();
        let non_symbol: Vec<&String> = words.iter().filter(|w| w.chars().any(|c| !in_punctuation_set(c))).collect();
        if on(self.min_doc_words).is_some_and(|m| non_symbol.len() < m) {
            return Some("gopher_short_doc");
        }
        if on(self.max_doc_words).is_some_and(|m| non_symbol.len() > m) {
            return Some("gopher_long_doc");
        }
        if !non_symbol.is_empty() {
            let avg = non_symbol.iter().map(|w| chars(w)).sum::<usize>() as f64 / non_symbol.len() as f64;
            if on(self.min_avg_word_length).is_some_and(|m| avg < m) {
                return Some("gopher_below_avg_threshold");
            }
            if on(self.max_avg_word_length).is_some_and(|m| avg > m) {
                return Some("gopher_above_avg_threshold");
            }
        }
        if n_words == 0 {
            // datatrove divides by the word count below; a text without words cannot pass.
            return Some("gopher_short_doc");
        }
        let n = n_words as f64;
        if let Some(max) = on(self.max_symbol_word_ratio) {
            if text.matches('#').count() as f64 / n > max {
                return Some("gopher_too_many_hashes");
            }
            if (text.matches("...").count() + text.matches('…').count()) as f64 / n > max {
                return Some("gopher_too_many_ellipsis");
            }
        }
        let lines = python_lines(text);
        let lines_n = lines.len().max(1) as f64;
        if let Some(max) = on(self.max_bullet_lines_ratio) {
            let bullets = lines.iter().filter(|l| {
                let l = l.trim_start_matches(is_python_space);
                l.starts_with('•') || l.starts_with('-')
            });
            if bullets.count() as f64 / lines_n > max {
                return Some("gopher_too_many_bullets");
            }
        }
        if let Some(max) = on(self.max_ellipsis_lines_ratio) {
            let ellipsis = lines.iter().filter(|l| {
                let l = l.trim_end_matches(is_python_space);
                l.ends_with("...") || l.ends_with('…')
            });
            if ellipsis.count() as f64 / lines_n > max {
                return Some("gopher_too_many_end_ellipsis");
            }
        }
        if let Some(min) = on(self.max_non_alpha_words_ratio) {
            if (words.iter().filter(|w| w.chars().any(is_python_alpha)).count() as f64) / n < min {
                return Some("gopher_below_alpha_threshold");
            }
        }
        if let Some(min) = on(self.min_stop_words) {
            // Distinct stop words present, as datatrove's set intersection counts them.
            let stop_words: FxHashSet<&str> = self.stop_words.iter().map(String::as_str).collect();
            let present: FxHashSet<&str> = words.iter().map(String::as_str).filter(|w| stop_words.contains(w)).collect();
            if present.len() < min {
                return Some("gopher_enough_stop_words");
            }
        }
        None
    }
}

/// datatrove's `GopherRepetitionFilter` parameters (its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GopherRepetition {
    pub dup_line_frac: Option<f64>,
    pub dup_para_frac: Option<f64>,
    pub dup_line_char_frac: Option<f64>,
    pub dup_para_char_frac: Option<f64>,
    pub top_n_grams: Vec<(usize, f64)>,
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetition {
    fn default() -> Self {
        GopherRepetition {
            dup_line_frac: Some(0.3),
            dup_para_frac: Some(0.3),
            dup_line_char_frac: Some(0.2),
            dup_para_char_frac: Some(0.2),
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        }
    }
}

/// (duplicate elements, their characters), counting every repeat after the first.
fn find_duplicates(items: &[&str]) -> (usize, usize) {
    let mut seen = FxHashSet::default();
    let (mut elements, mut chars_dup) = (0, 0);
    for item in items {
        if !seen.insert(*item) {
            elements += 1;
            chars_dup += chars(item);
        }
    }
    (elements, chars_dup)
}

/// A document's words laid out twice, joined by spaces and concatenated, with the byte and
/// character offset of every word: any n-gram as datatrove joins it is then a slice, not a new string.
struct WordGrams {
    spaced: String,
    joined: String,
    /// (byte, char) offsets of word i in `spaced` and in `joined`; one more entry for the end.
    spaced_at: Vec<(usize, usize)>,
    joined_at: Vec<(usize, usize)>,
}

impl WordGrams {
    fn new(words: &[String]) -> Self {
        let mut grams = WordGrams {
            spaced: String::new(),
            joined: String::new(),
            spaced_at: Vec::with_capacity(words.len() + 1),
            joined_at: Vec::with_capacity(words.len() + 1),
        };
        let (mut spaced_chars, mut joined_chars) = (0, 0);
        for word in words {
            let n = chars(word);
            grams.spaced_at.push((grams.spaced.len(), spaced_chars));
            grams.joined_at.push((grams.joined.len(), joined_chars));
            grams.spaced.push_str(word);
            grams.spaced.push(' ');
            grams.joined.push_str(word);
            spaced_chars += n + 1;
            joined_chars += n;
        }
        grams.spaced_at.push((grams.spaced.len(), spaced_chars));
        grams.joined_at.push((grams.joined.len(), joined_chars));
        grams
    }

    /// `" ".join(words[i..i + n])`.
    fn spaced(&self, i: usize, n: usize) -> &str {
        &self.spaced[self.spaced_at[i].0..self.spaced_at[i + n].0 - 1]
    }

    fn spaced_chars(&self, i: usize, n: usize) -> usize {
        self.spaced_at[i + n].1 - 1 - self.spaced_at[i].1
    }

    /// `"".join(words[i..i + n])`.
    fn joined(&self, i: usize, n: usize) -> &str {
        &self.joined[self.joined_at[i].0..self.joined_at[i + n].0]
    }

    fn joined_chars(&self, i: usize, n: usize) -> usize {
        self.joined_at[i + n].1 - self.joined_at[i].1
    }
}

/// Split on runs of at least `min` newlines (Python `re.split(r"\n{min,}")`).
fn split_newline_runs(text: &str, min: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let bytes = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            let run_start = i;
            while i < bytes.len() && bytes[i] == b'\n' {
                i += 1;
            }
            if i - run_start >= min {
                parts.push(&text[start..run_start]);
                start = i;
            }
        } else {
            i += 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

impl GopherRepetition {
    pub fn check(&self, text: &str) -> Option<String> {
        if text.is_empty() {
            return Some("empty".into());
        }
        let text_len = chars(text) as f64;
        let paragraphs = split_newline_runs(text.trim_matches(is_python_space), 2);
        let (para_dups, para_chars) = find_duplicates(&paragraphs);
        if on(self.dup_para_frac).is_some_and(|m| para_dups as f64 / paragraphs.len() as f64 > m) {
            return Some("dup_para_frac".into());
        }
        if on(self.dup_para_char_frac).is_some_and(|m| para_chars as f64 / text_len > m) {
            return Some("dup_para_char_frac".into());
        }
        let lines = split_newline_runs(text, 1);
        let (line_dups, line_chars) = find_duplicates(&lines);
        if on(self.dup_line_frac).is_some_and(|m| line_dups as f64 / lines.len() as f64 > m) {
            return Some("dup_line_frac".into());
        }
        if on(self.dup_line_char_frac).is_some_and(|m| line_chars as f64 / text_len > m) {
            return Some("dup_line_char_frac".into());
        }
        let words = EnglishWords::get().split(text);
        let grams = WordGrams::new(&words);
        let mut counts: FxHashMap<&str, (usize, usize)> = FxHashMap::with_capacity_and_hasher(words.len(), Default::default());
        for &(n, frac) in &self.top_n_grams {
            if words.len() < n {
                continue;
            }
            // Counter(" ".join(gram)).most_common(1): the highest count, the first seen among equals.
            counts.clear();
            for i in 0..=words.len() - n {
                counts.entry(grams.spaced(i, n)).or_insert((0, i)).0 += 1;
            }
            let best = counts.iter().map(|(gram, &value)| (gram, value)).max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)));
            if let Some((_, (count, first))) = best {
                if (grams.spaced_chars(first, n) * count) as f64 / text_len > frac {
                    return Some(format!("top_{n}_gram"));
                }
            }
        }
        let mut unique: FxHashSet<&str> = FxHashSet::with_capacity_and_hasher(words.len(), Default::default());
        for &(n, frac) in &self.dup_n_grams {
            // "".join(gram): n-grams are equal when their concatenations are.
            unique.clear();
            let (mut repeated, mut idx) = (0usize, 0usize);
            while n <= words.len() && idx < words.len() - n + 1 {
                let gram = grams.joined(idx, n);
                if unique.contains(gram) {
                    repeated += grams.joined_chars(idx, n);
                    idx += n;
                } else {
                    unique.insert(gram);
                    idx += 1;
                }
            }
            if repeated as f64 / text_len > frac {
                return Some(format!("duplicated_{n}_n_grams"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_line_splitting() {
        assert_eq!(python_lines("a\nb\r\nc\rd\u{2028}e\n"), ["a", "b", "c", "d", "e"]);
        assert_eq!(python_lines(""), Vec::<&str>::new());
        assert_eq!(split_newline_runs("a\n\nb\nc\n\n\nd", 2), ["a", "b\nc", "d"]);
    }

    #[test]
    fn repeated_lines_and_short_texts_are_caught() {
        let rep = GopherRepetition::default();
        assert_eq!(rep.check(&"the same line again\n".repeat(10)).as_deref(), Some("dup_line_frac"));
        let quality = GopherQuality::default();
        assert_eq!(quality.check("too short to be a document"), Some("gopher_short_doc"));
    }
}
