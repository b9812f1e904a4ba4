//! The word splitter datatrove's MinHash uses for English (`load_word_tokenizer("en")`: a blank
//! spaCy English tokenizer, then tokens stripped and empty ones dropped), ported from spaCy's
//! `Tokenizer` (whitespace spans; special cases; prefixes and suffixes peeled off in turn; infixes
//! and URLs; special cases that span affixes re-joined by a phrase match). The rules themselves
//! (affix patterns, special cases) are spaCy's, dumped by `data/spacy_en.py` into
//! `data/spacy_en.json`, not written by hand.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use fancy_regex::Regex;
use serde::Deserialize;

use crate::normalize::is_python_space;

#[derive(Deserialize)]
struct RulesFile {
    spacy_version: String,
    prefix: String,
    suffix: String,
    infix: String,
    url: String,
    specials: HashMap<String, Vec<String>>,
    matched_specials: HashMap<String, Vec<String>>,
}

pub struct EnglishWords {
    pub spacy_version: String,
    prefix: Regex,
    suffix: Regex,
    infix: Regex,
    url: Regex,
    specials: HashMap<String, Vec<String>>,
    /// Special cases found after affix splitting, by their first affix token: (their affix
    /// tokens, the special case's text).
    matched: HashMap<String, Vec<(Vec<String>, String)>>,
}

/// Spans already split, per thread (spaCy's cache has the same effect: a span always splits the same way).
const CACHE_LIMIT: usize = 1 << 17;
thread_local! {
    static CACHE: RefCell<HashMap<String, Vec<String>>> = RefCell::new(HashMap::new());
}

/// Python `re` spells code points `\uXXXX` / `\UXXXXXXXX`; the Rust engines want `\x{...}`.
fn to_rust_syntax(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            let digits = match chars[i + 1] {
                'u' => 4,
                'U' => 8,
                _ => 0,
            };
            if digits > 0 && i + 2 + digits <= chars.len() {
                let hex: String = chars[i + 2..i + 2 + digits].iter().collect();
                if let Ok(code) = u32::from_str_radix(&hex, 16) {
                    out.push_str(&format!("\\x{{{code:X}}}"));
                    i += 2 + digits;
                    continue;
                }
            }
            out.push(chars[i]);
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

impl EnglishWords {
    /// The rules shipped with the crate, compiled once.
    pub fn get() -> &'static EnglishWords {
        static RULES: OnceLock<EnglishWords> = OnceLock::new();
        RULES.get_or_init(|| {
            let file: RulesFile = serde_json::from_str(include_str!("../data/spacy_en.json")).expect("data/spacy_en.json is valid");
            let compile = |p: &str| {
                let p = to_rust_syntax(p.trim_start_matches("(?u)"));
                fancy_regex::RegexBuilder::new(&p).backtrack_limit(1_000_000).build().expect("spaCy pattern compiles")
            };
            let mut matched: HashMap<String, Vec<(Vec<String>, String)>> = HashMap::new();
            for (text, tokens) in file.matched_specials {
                if let Some(first) = tokens.first() {
                    matched.entry(first.clone()).or_default().push((tokens, text));
                }
            }
            EnglishWords {
                spacy_version: file.spacy_version,
                prefix: compile(&file.prefix),
                suffix: compile(&file.suffix),
                infix: compile(&file.infix),
                url: compile(&file.url),
                specials: file.specials,
                matched,
            }
        })
    }

    fn find_prefix(&self, s: &str) -> usize {
        match self.prefix.find(s) {
            Ok(Some(m)) => m.end() - m.start(),
            _ => 0,
        }
    }

    fn find_suffix(&self, s: &str) -> usize {
        match self.suffix.find(s) {
            Ok(Some(m)) => m.end() - m.start(),
            _ => 0,
        }
    }

    /// The words of `text` (already simplified), as datatrove's `word_tokenize` returns them.
    pub fn split(&self, text: &str) -> Vec<String> {
        // (token, followed by a space in the text)
        let mut tokens: Vec<(String, bool)> = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let start = rest.find(|c: char| !is_python_space(c)).unwrap_or(rest.len());
            rest = &rest[start..];
            if rest.is_empty() {
                break;
            }
            let end = rest.find(is_python_space).unwrap_or(rest.len());
            let span = &rest[..end];
            let followed_by_space = rest[end..].starts_with(' ');
            let before = tokens.len();
            CACHE.with(|cache| {
                let mut cache = cache.borrow_mut();
                if let Some(cached) = cache.get(span) {
                    tokens.extend(cached.iter().map(|t| (t.clone(), false)));
                } else {
                    let split = self.split_span(span);
                    if cache.len() >= CACHE_LIMIT {
                        cache.clear();
                    }
                    tokens.extend(split.iter().map(|t| (t.clone(), false)));
                    cache.insert(span.to_string(), split);
                }
            });
            if tokens.len() > before {
                tokens.last_mut().expect("just pushed").1 = followed_by_space;
            }
            rest = &rest[end..];
        }
        if !self.matched.is_empty() {
            self.join_matched_specials(&mut tokens);
        }
        tokens.into_iter().map(|(t, _)| t).filter(|t| !t.trim_matches(is_python_space).is_empty()).collect()
    }

    /// spaCy's `_split_affixes` + `_attach_tokens` for one whitespace-free span.
    fn split_span(&self, span: &str) -> Vec<String> {
        if let Some(special) = self.specials.get(span) {
            return special.clone();
        }
        let mut prefixes: Vec<&str> = Vec::new();
        let mut suffixes: Vec<&str> = Vec::new();
        let mut s = span;
        let mut last_size = 0usize;
        while !s.is_empty() && s.len() != last_size {
            if self.specials.contains_key(s) {
                break;
            }
            last_size = s.len();
            let pre_len = self.find_prefix(s);
            if pre_len != 0 {
                let minus_pre = &s[pre_len..];
                if !minus_pre.is_empty() && self.specials.contains_key(minus_pre) {
                    prefixes.push(&s[..pre_len]);
                    s = minus_pre;
                    break;
                }
            }
            let suf_len = self.find_suffix(&s[pre_len..]);
            if suf_len != 0 {
                let minus_suf = &s[..s.len() - suf_len];
                if !minus_suf.is_empty() && self.specials.contains_key(minus_suf) {
                    suffixes.push(&s[s.len() - suf_len..]);
                    s = minus_suf;
                    break;
                }
            }
            if pre_len != 0 && suf_len != 0 && pre_len + suf_len <= s.len() {
                prefixes.push(&s[..pre_len]);
                suffixes.push(&s[s.len() - suf_len..]);
                s = &s[pre_len..s.len() - suf_len];
            } else if pre_len != 0 {
                prefixes.push(&s[..pre_len]);
                s = &s[pre_len..];
            } else if suf_len != 0 {
                suffixes.push(&s[s.len() - suf_len..]);
                s = &s[..s.len() - suf_len];
            }
        }
        let mut out: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        if !s.is_empty() {
            if let Some(special) = self.specials.get(s) {
                out.extend(special.iter().cloned());
            } else if matches!(self.url.is_match(s), Ok(true)) {
                out.push(s.to_string());
            } else {
                let mut start = 0;
                for m in self.infix.find_iter(s).flatten() {
                    // spaCy skips an infix at the very start of the span.
                    if m.start() == 0 {
                        continue;
                    }
                    if m.start() != start {
                        out.push(s[start..m.start()].to_string());
                    }
                    if m.start() != m.end() {
                        out.push(m.as_str().to_string());
                    }
                    start = m.end();
                }
                if start < s.len() {
                    out.push(s[start..].to_string());
                }
            }
        }
        out.extend(suffixes.iter().rev().map(|x| x.to_string()));
        out
    }

    /// spaCy's `_apply_special_cases`: special cases that contain affixes are matched on the affix
    /// tokens; overlapping matches keep the longest (then the earliest); a match is replaced by
    /// the special case's tokens only when its tokens touch (its text is the special case).
    fn join_matched_specials(&self, tokens: &mut Vec<(String, bool)>) {
        let mut matches: Vec<(usize, usize)> = Vec::new();
        for i in 0..tokens.len() {
            if let Some(candidates) = self.matched.get(&tokens[i].0) {
                for (pattern, _) in candidates {
                    let end = i + pattern.len();
                    if end <= tokens.len() && tokens[i..end].iter().zip(pattern).all(|((t, _), p)| t == p) {
                        matches.push((i, end));
                    }
                }
            }
        }
        if matches.is_empty() {
            return;
        }
        matches.sort_by(|a, b| (b.1 - b.0).cmp(&(a.1 - a.0)).then(a.0.cmp(&b.0)));
        matches.dedup();
        let mut seen = vec![false; tokens.len()];
        let mut kept: Vec<(usize, usize)> = Vec::new();
        for &(start, end) in &matches {
            if !seen[start] && !seen[end - 1] {
                kept.push((start, end));
            }
            for s in &mut seen[start..end] {
                *s = true;
            }
        }
        kept.sort();
        let mut out = Vec::with_capacity(tokens.len());
        let mut i = 0;
        let mut k = 0;
        while i < tokens.len() {
            if k < kept.len() && kept[k].0 == i {
                let (start, end) = kept[k];
                k += 1;
                let mut text = String::new();
                for (j, (t, space)) in tokens[start..end].iter().enumerate() {
                    text.push_str(t);
                    if *space && start + j + 1 < end {
                        text.push(' ');
                    }
                }
                match self.specials.get(&text) {
                    Some(special) => {
                        let last_space = tokens[end - 1].1;
                        let n = special.len();
                        out.extend(special.iter().enumerate().map(|(j, t)| (t.clone(), j + 1 == n && last_space)));
                    }
                    None => out.extend(tokens[start..end].iter().cloned()),
                }
                i = end;
            } else {
                out.push(tokens[i].clone());
                i += 1;
            }
        }
        *tokens = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_spacy_english() {
        let words = EnglishWords::get();
        let got = words.split("i cannot dont 0km gonna ‘hi€0 hello‑world ☺x");
        assert_eq!(got, ["i", "can", "not", "do", "nt", "0", "km", "gon", "na", "‘", "hi€0", "hello‑world", "☺", "x"]);
        assert_eq!(words.split("  a  b "), ["a", "b"]);
        assert!(words.split("").is_empty());
    }

    #[test]
    fn python_code_points_become_rust_escapes() {
        assert_eq!(to_rust_syntax(r"[\u00A6\U0001EE00-\U0001EEBB\.]"), r"[\x{A6}\x{1EE00}-\x{1EEBB}\.]");
        assert_eq!(to_rust_syntax(r"\u0000"), r"\x{0}");
    }
}
