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
use rustc_hash::FxHashMap;
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

/// One of spaCy's patterns: the pattern itself (backtracking, for its look-arounds) and the same
/// pattern with every look-around removed, which matches wherever the pattern does (and maybe
/// more): the automaton answers "no match" for most spans at a fraction of the cost.
struct Pattern {
    exact: Regex,
    relaxed: regex::Regex,
}

impl Pattern {
    fn new(python: &str) -> Self {
        let rust = to_rust_syntax(python.trim_start_matches("(?u)"));
        Pattern {
            exact: fancy_regex::RegexBuilder::new(&rust).backtrack_limit(1_000_000).build().expect("spaCy pattern compiles"),
            relaxed: regex::RegexBuilder::new(&without_lookarounds(&rust)).size_limit(1 << 26).build().expect("spaCy pattern without look-arounds compiles"),
        }
    }

    /// The first match at or after byte `from`.
    fn find_from(&self, s: &str, from: usize) -> Option<(usize, usize)> {
        if !self.relaxed.is_match_at(s, from) {
            return None;
        }
        self.exact.find_from_pos(s, from).ok().flatten().map(|m| (m.start(), m.end()))
    }
}

/// `pattern` with its look-ahead and look-behind groups removed (outside character classes,
/// escapes respected).
fn without_lookarounds(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    // Parenthesis depth, and the depth of the look-around being skipped (0: none).
    let (mut depth, mut skip_depth, mut in_class) = (0usize, 0usize, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mut len = 1;
        if c == '\\' {
            len = 2;
        } else if in_class {
            in_class = c != ']';
        } else if c == '[' {
            in_class = true;
            // A `]` first in the class (after an optional `^`) is a literal.
            if chars.get(i + 1) == Some(&'^') {
                len += 1;
            }
            if chars.get(i + len) == Some(&']') {
                len += 1;
            }
        } else if c == '(' {
            depth += 1;
            let rest: String = chars[i..chars.len().min(i + 4)].iter().collect();
            if skip_depth == 0 && ["(?=", "(?!", "(?<=", "(?<!"].iter().any(|p| rest.starts_with(p)) {
                skip_depth = depth;
            }
        } else if c == ')' {
            depth -= 1;
            if skip_depth == depth + 1 {
                skip_depth = 0;
                i += 1;
                continue;
            }
        }
        if skip_depth == 0 {
            out.extend(&chars[i..chars.len().min(i + len)]);
        }
        i += len;
    }
    out
}

pub struct EnglishWords {
    pub spacy_version: String,
    prefix: Pattern,
    suffix: Pattern,
    infix: Pattern,
    url: Pattern,
    specials: FxHashMap<String, Vec<String>>,
    /// Special cases found after affix splitting, by their first affix token: (their affix
    /// tokens, the special case's text).
    matched: FxHashMap<String, Vec<(Vec<String>, String)>>,
}

/// Spans already split, per thread (spaCy's cache has the same effect: a span always splits the same way).
const CACHE_LIMIT: usize = 1 << 17;
thread_local! {
    static CACHE: RefCell<FxHashMap<String, Vec<String>>> = RefCell::new(FxHashMap::default());
}

/// Characters of a span's start or end that decide spaCy's prefix and suffix patterns (longer
/// than any of their bounded alternatives and look-arounds; `affix_windows_change_nothing` holds
/// the rules to it).
const AFFIX_WINDOW: usize = 8;

/// The byte offset after the first `n` characters of `s` (or its length).
fn char_boundary_after(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// The byte offset of the `n`-th character from the end of `s` (or 0).
fn char_boundary_before_end(s: &str, n: usize) -> usize {
    s.char_indices().rev().nth(n - 1).map_or(0, |(i, _)| i)
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
            let mut matched: FxHashMap<String, Vec<(Vec<String>, String)>> = FxHashMap::default();
            for (text, tokens) in file.matched_specials {
                if let Some(first) = tokens.first() {
                    matched.entry(first.clone()).or_default().push((tokens, text));
                }
            }
            EnglishWords {
                spacy_version: file.spacy_version,
                prefix: Pattern::new(&file.prefix),
                suffix: Pattern::new(&file.suffix),
                infix: Pattern::new(&file.infix),
                url: Pattern::new(&file.url),
                specials: file.specials.into_iter().collect(),
                matched,
            }
        })
    }

    /// The length of the prefix spaCy's prefix pattern matches at the start of `s`. Every
    /// alternative of spaCy's English prefix pattern spans at most 3 characters and looks one
    /// further, except `\.\.+`: so unless `s` starts with two dots, its first
    /// `AFFIX_WINDOW` characters decide, and the pattern runs on them alone (on a long span
    /// the backtracking engine would otherwise try every start position).
    fn find_prefix(&self, s: &str) -> usize {
        let window = if s.starts_with("..") { s } else { &s[..char_boundary_after(s, AFFIX_WINDOW)] };
        self.prefix.find_from(window, 0).map_or(0, |(start, end)| end - start)
    }

    /// The length of the suffix spaCy's suffix pattern matches at the end of `s`. Every
    /// alternative of spaCy's English suffix pattern spans at most 5 characters (its look-behinds
    /// see the text before), except `\.\.+$`: so unless `s` ends with two dots, the search starts
    /// `AFFIX_WINDOW` characters from the end.
    fn find_suffix(&self, s: &str) -> usize {
        let from = if s.ends_with("..") { 0 } else { char_boundary_before_end(s, AFFIX_WINDOW) };
        self.suffix.find_from(s, from).map_or(0, |(start, end)| end - start)
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
            } else if self.url.find_from(s, 0).is_some() {
                out.push(s.to_string());
            } else {
                let mut start = 0;
                let infixes = self.infix.relaxed.is_match(s).then(|| self.infix.exact.find_iter(s).flatten()).into_iter().flatten();
                for m in infixes {
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
    fn affix_windows_change_nothing() {
        // Spans built from the characters the affix patterns look at (punctuation, digits,
        // units, quotes, dots, CJK), at every length around the window: the windowed searches
        // find what the patterns find on the whole span.
        let words = EnglishWords::get();
        let pieces = ["", ".", "..", "...", "+", "5", "km", "m²", "$", "US$", "'s", "’S", "”", "(", ")", "°F", "a", "B", "的", "。", "…", "……", "x", "-", "%", "😀", "--", "—", ",", "?", "!"];
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for _ in 0..20_000 {
            let n = 1 + next() % 12;
            let span: String = (0..n).map(|_| pieces[next() % pieces.len()]).collect();
            let full_prefix = words.prefix.exact.find(&span).ok().flatten().map_or(0, |m| m.end() - m.start());
            let full_suffix = words.suffix.exact.find(&span).ok().flatten().map_or(0, |m| m.end() - m.start());
            assert_eq!(words.find_prefix(&span), full_prefix, "prefix of {span:?}");
            assert_eq!(words.find_suffix(&span), full_suffix, "suffix of {span:?}");
        }
    }

    #[test]
    fn lookarounds_are_removed_outside_classes() {
        assert_eq!(without_lookarounds(r"^\+(?![0-9])|(?<=[0-9(])\.$|a(?=(b|c))d|[(?=]x|\(?=y"), r"^\+|\.$|ad|[(?=]x|\(?=y");
        assert_eq!(without_lookarounds(r"[]()]+(?<!\))z"), r"[]()]+z");
    }

    #[test]
    fn python_code_points_become_rust_escapes() {
        assert_eq!(to_rust_syntax(r"[\u00A6\U0001EE00-\U0001EEBB\.]"), r"[\x{A6}\x{1EE00}-\x{1EEBB}\.]");
        assert_eq!(to_rust_syntax(r"\u0000"), r"\x{0}");
    }
}
