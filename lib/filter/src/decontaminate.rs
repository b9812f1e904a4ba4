//! Benchmark decontamination: every question, choice and answer in an evaluation data directory
//! (the layout os-eval reads: JSON lines, Parquet, Arrow, CMMLU/C-Eval CSV, any depth) is cut
//! into n-grams (13 by default, as is customary since GPT-3) of normalised tokens: lowercased
//! runs of letters and digits, each CJK ideograph a token of its own. A document sharing any
//! n-gram with the benchmarks is contaminated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use serde_json::Value;

/// CJK ideographs (and kana/hangul syllables), which carry meaning one character at a time.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// Hashes of the normalised tokens of `text`.
pub fn token_hashes(text: &str) -> Vec<u64> {
    let mut hashes = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, hashes: &mut Vec<u64>| {
        if !word.is_empty() {
            hashes.push(twox_hash::XxHash64::oneshot(0, word.as_bytes()));
            word.clear();
        }
    };
    for c in text.chars() {
        if is_cjk(c) {
            flush(&mut word, &mut hashes);
            let mut buf = [0u8; 4];
            hashes.push(twox_hash::XxHash64::oneshot(0, c.encode_utf8(&mut buf).as_bytes()));
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut hashes);
        }
    }
    flush(&mut word, &mut hashes);
    hashes
}

/// The n-gram keys of a token sequence (order-sensitive combination of the token hashes).
fn ngram_keys(tokens: &[u64], n: usize) -> impl Iterator<Item = u64> + '_ {
    tokens.windows(n).map(|w| w.iter().fold(0xcbf2_9ce4_8422_2325u64, |acc, &h| (acc ^ h).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)))
}

/// The benchmark n-grams, each with the file it first came from.
pub struct BenchmarkIndex {
    pub n: usize,
    grams: HashMap<u64, u32>,
    pub sources: Vec<String>,
    /// Strings (question, choice, answer...) read per source.
    pub strings: Vec<u64>,
}

fn strings_of(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_of(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_of(v, out)),
        _ => {}
    }
}

fn benchmark_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let entries = std::fs::read_dir(dir).map_err(|e| Failure::io_at(dir, "cannot list benchmark directory", &e))?;
    for entry in entries {
        let path = entry.map_err(|e| Failure::io_at(dir, "cannot list benchmark directory", &e))?.path();
        if path.is_dir() {
            benchmark_files(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "json" | "ndjson" | "parquet" | "arrow" | "csv")) {
            out.push(path);
        }
    }
    Ok(())
}

impl BenchmarkIndex {
    /// Index every benchmark file under `dir`.
    pub fn build(dir: &Path, n: usize) -> Result<Self, Failure> {
        if n == 0 {
            return Err(Failure::config("decontaminate: n must be at least 1"));
        }
        let mut files = Vec::new();
        benchmark_files(dir, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(Failure::no_input(format!("{}: no benchmark files (.jsonl, .json, .parquet, .arrow, .csv) found", dir.display())));
        }
        let mut index = BenchmarkIndex { n, grams: HashMap::new(), sources: Vec::new(), strings: Vec::new() };
        for file in files {
            let rows = openseek_eval::data::read_rows(std::slice::from_ref(&file))?;
            let source = index.sources.len() as u32;
            let mut strings = Vec::new();
            for row in &rows.rows {
                row.values().for_each(|v| strings_of(v, &mut strings));
            }
            for s in &strings {
                for key in ngram_keys(&token_hashes(s), n) {
                    index.grams.entry(key).or_insert(source);
                }
            }
            index.sources.push(file.display().to_string());
            index.strings.push(strings.len() as u64);
        }
        Ok(index)
    }

    pub fn ngrams(&self) -> usize {
        self.grams.len()
    }

    /// The benchmark file of the first n-gram `text` shares with the benchmarks, if any.
    pub fn first_match(&self, text: &str) -> Option<&str> {
        ngram_keys(&token_hashes(text), self.n).find_map(|k| self.grams.get(&k)).map(|&s| self.sources[s as usize].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_ignore_case_and_punctuation_and_split_cjk() {
        assert_eq!(token_hashes("Hello, WORLD!"), token_hashes("hello world"));
        assert_eq!(token_hashes("熊猫吃竹子").len(), 5);
        assert_eq!(token_hashes("abc熊猫").len(), 3);
    }

    #[test]
    fn finds_a_shared_ngram() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("q.jsonl"), "{\"question\": \"What is the capital city of the small country that lies between France and Spain?\", \"answer\": \"Andorra\"}\n").unwrap();
        let index = BenchmarkIndex::build(dir.path(), 13).unwrap();
        assert!(index.first_match("Quiz time. what is the capital city of the small country that lies between france and spain? Think.").is_some());
        assert!(index.first_match("what is the capital city of the small country that lies between Italy and Spain").is_none());
    }
}
