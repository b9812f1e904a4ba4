//! The pre-tokenizer: a hand-written scanner that cuts text into exactly the pieces that
//! fancy-regex's `find_iter` gives for OpenSeek's (Qwen's) pattern
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! Leftmost-first alternation with backtracking, branch by branch, at a piece start `c`:
//! 1. `'` followed by s/t/m/d, re/ve/ll in any case fold (`ſ` U+017F counts as s): the contraction.
//! 2. a letter: the maximal letter run; any other char that is not CR/LF/number followed by a
//!    letter: that char plus the letter run.
//! 3. a number: that one char.
//! 4. "other" chars (not space, letter or number), optionally after one U+0020: their maximal run
//!    plus the CR/LF run right after it.
//! 5. whitespace whose run (maximal `\s` run from `c`) holds CR or LF: up to and including the
//!    run's last CR/LF (`\s*` backtracks to the last place `[\r\n]+` can match).
//! 6. a whitespace run without CR/LF at the end of the text: all of it; one of two or more chars
//!    followed by a non-space: all but its last char (`(?!\S)` needs whitespace after).
//! 7. otherwise (a single whitespace char before a non-space): that char.

use crate::classes::{
    Classes, Folds, FOLD_D, FOLD_E, FOLD_L, FOLD_M, FOLD_R, FOLD_S, FOLD_T, FOLD_V, LETTER, NUMBER,
    SPACE,
};

/// The pattern tiktoken and the Hugging Face tokenizer.json use for OpenSeek.
pub const PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct PreTokenizer {
    classes: Classes,
    folds: Folds,
}

/// Decode the char starting at byte `i` of valid UTF-8 (`i` on a char boundary): (code point, length).
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = b[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3F) << 12)
                | ((b[i + 2] as u32 & 0x3F) << 6)
                | (b[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

#[inline(always)]
fn is_crlf(cp: u32) -> bool {
    cp == b'\r' as u32 || cp == b'\n' as u32
}

impl PreTokenizer {
    pub fn new() -> PreTokenizer {
        PreTokenizer {
            classes: Classes::build(),
            folds: Folds::build(),
        }
    }

    /// The pieces of `text`, in order; they concatenate to `text`.
    pub fn pieces<'t>(&'t self, text: &'t str) -> Pieces<'t> {
        Pieces {
            pre: self,
            text,
            pos: 0,
        }
    }

    #[inline(always)]
    fn class_at(&self, b: &[u8], i: usize) -> (u32, usize, u8) {
        let x = b[i];
        if x < 0x80 {
            return (x as u32, 1, self.classes.ascii(x));
        }
        let (cp, len) = decode(b, i);
        (cp, len, self.classes.of(cp))
    }

    /// End of the maximal letter run starting at `i`.
    #[inline(always)]
    fn letters(&self, b: &[u8], mut i: usize) -> usize {
        while i < b.len() {
            let (_, len, class) = self.class_at(b, i);
            if class & LETTER == 0 {
                break;
            }
            i += len;
        }
        i
    }

    /// End of `[^\s\p{L}\p{N}]*[\r\n]*` starting at `i`.
    #[inline(always)]
    fn other_run_then_newlines(&self, b: &[u8], mut i: usize) -> usize {
        while i < b.len() {
            let (_, len, class) = self.class_at(b, i);
            if class != 0 {
                break;
            }
            i += len;
        }
        while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
            i += 1;
        }
        i
    }

    /// The contraction after an apostrophe whose next char starts at `i`: its end, if any.
    #[inline]
    fn contraction(&self, b: &[u8], i: usize) -> Option<usize> {
        let (c1, l1) = decode(b, i);
        let f = &self.folds;
        if f.has(FOLD_S, c1) || f.has(FOLD_T, c1) || f.has(FOLD_M, c1) || f.has(FOLD_D, c1) {
            return Some(i + l1);
        }
        let second = if f.has(FOLD_R, c1) || f.has(FOLD_V, c1) {
            FOLD_E
        } else if f.has(FOLD_L, c1) {
            FOLD_L
        } else {
            return None;
        };
        let j = i + l1;
        if j < b.len() {
            let (c2, l2) = decode(b, j);
            if f.has(second, c2) {
                return Some(j + l2);
            }
        }
        None
    }

    /// End of the piece starting at byte `i` (< b.len()).
    #[inline]
    pub fn piece_end(&self, b: &[u8], i: usize) -> usize {
        let (c, len, class) = self.class_at(b, i);
        let n = i + len;
        if class & LETTER != 0 {
            return self.letters(b, n);
        }
        if class & NUMBER != 0 {
            return n;
        }
        if c == b'\'' as u32 && n < b.len() {
            if let Some(end) = self.contraction(b, n) {
                return end;
            }
        }
        // Branch 2 with the optional leading char: any non-CR/LF (letters and numbers are done).
        if !is_crlf(c) && n < b.len() {
            let (_, len2, class2) = self.class_at(b, n);
            if class2 & LETTER != 0 {
                return self.letters(b, n + len2);
            }
        }
        if class & SPACE == 0 {
            // Branch 4 from an "other" char.
            return self.other_run_then_newlines(b, n);
        }
        if c == b' ' as u32 && n < b.len() {
            let (_, len2, class2) = self.class_at(b, n);
            if class2 == 0 {
                return self.other_run_then_newlines(b, n + len2);
            }
        }
        // Branches 5-7: the whitespace run from i.
        let mut after_last_newline = if is_crlf(c) { n } else { 0 };
        let mut last_start = i;
        let mut j = n;
        while j < b.len() {
            let (c2, len2, class2) = self.class_at(b, j);
            if class2 & SPACE == 0 {
                break;
            }
            if is_crlf(c2) {
                after_last_newline = j + len2;
            }
            last_start = j;
            j += len2;
        }
        if after_last_newline != 0 {
            after_last_newline
        } else if j == b.len() || last_start == i {
            j
        } else {
            last_start
        }
    }
}

impl Default for PreTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Pieces<'t> {
    pre: &'t PreTokenizer,
    text: &'t str,
    pos: usize,
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    #[inline]
    fn next(&mut self) -> Option<&'t str> {
        let b = self.text.as_bytes();
        if self.pos >= b.len() {
            return None;
        }
        let start = self.pos;
        let end = self.pre.piece_end(b, start);
        self.pos = end;
        // piece_end always stops on a char boundary of valid UTF-8.
        Some(&self.text[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(re: &fancy_regex::Regex, text: &str) -> Vec<String> {
        re.find_iter(text)
            .map(|m| m.expect("fancy-regex failed").as_str().to_string())
            .collect()
    }

    fn ours(pre: &PreTokenizer, text: &str) -> Vec<String> {
        pre.pieces(text).map(str::to_string).collect()
    }

    use openseek_common::rng::SplitMix as Rng;

    /// Characters chosen to hit every branch and its edges.
    const ALPHABET: &[&str] = &[
        " ",
        " ",
        " ",
        "\t",
        "\r",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{85}",
        "\u{2028}",
        "\u{b}",
        "\u{c}",
        "a",
        "b",
        "Z",
        "s",
        "S",
        "t",
        "T",
        "r",
        "R",
        "e",
        "E",
        "v",
        "V",
        "m",
        "M",
        "l",
        "L",
        "d",
        "D",
        "k",
        "\u{17f}",
        "\u{212a}",
        "é",
        "ß",
        "中",
        "文",
        "日",
        "한",
        "д",
        "Ж",
        "ا",
        "ש",
        "0",
        "7",
        "٣",
        "５",
        "Ⅻ",
        "½",
        "²",
        "'",
        "'",
        "'",
        "’",
        "\"",
        ".",
        ",",
        "!",
        "?",
        "-",
        "_",
        "(",
        ")",
        "<",
        "|",
        ">",
        "#",
        "$",
        "\u{301}",
        "\u{308}",
        "\u{200b}",
        "\u{200d}",
        "😀",
        "👍🏽",
        "🇫🇷",
        "\u{0}",
        "\u{7f}",
        "\u{feff}",
        "\u{1d400}",
        "\u{10ffff}",
    ];

    fn random_text(rng: &mut Rng, len: usize) -> String {
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(ALPHABET[rng.below(ALPHABET.len())]);
        }
        s
    }

    #[test]
    fn known_cases() {
        let re = fancy_regex::Regex::new(PATTERN).unwrap();
        let pre = PreTokenizer::new();
        for text in [
            "",
            "Hello world",
            "  two",
            "a  \n  b",
            "trailing  ",
            "x\t\ty",
            "I'll we've HE'S 'ſ 'Ll 're'",
            "!!abc",
            " !!\n\nx",
            "\r\n\r\n",
            " \u{a0}b",
            "\tabc",
            "\t!",
            "a'b",
            "'",
            "' ",
            "12ab",
            "中文，测试。",
            "e\u{301}",
            "😀😀 hi",
            "   ",
            "\n",
            " \n ",
            "a \r\n",
            "'ss",
            "'re",
            "'rE",
            "'r",
            "'l",
            "'LL",
        ] {
            assert_eq!(ours(&pre, text), reference(&re, text), "text {text:?}");
        }
    }

    #[test]
    fn random_strings_match_fancy_regex() {
        let re = fancy_regex::Regex::new(PATTERN).unwrap();
        let pre = PreTokenizer::new();
        let mut rng = Rng::new(0x5EED_0001);
        for round in 0..20_000 {
            let len = 1 + rng.below(if round % 100 == 0 { 400 } else { 24 });
            let text = random_text(&mut rng, len);
            assert_eq!(ours(&pre, &text), reference(&re, &text), "text {text:?}");
        }
    }

    #[test]
    fn long_runs_match_fancy_regex() {
        let re = fancy_regex::Regex::new(PATTERN).unwrap();
        let pre = PreTokenizer::new();
        let mut rng = Rng::new(0x5EED_0002);
        for _ in 0..200 {
            // Long runs of one kind, separated by random glue.
            let mut text = String::new();
            for _ in 0..6 {
                let unit = ALPHABET[rng.below(ALPHABET.len())];
                for _ in 0..rng.below(300) {
                    text.push_str(unit);
                }
                text.push_str(&random_text(&mut rng, 3));
            }
            assert_eq!(ours(&pre, &text), reference(&re, &text), "text {text:?}");
        }
    }

    #[test]
    fn every_code_point_in_context() {
        // Each scalar value, alone and between the contexts that decide branches.
        let re = fancy_regex::Regex::new(PATTERN).unwrap();
        let pre = PreTokenizer::new();
        for cp in (0..0x110000u32).step_by(3) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            for text in [
                format!("{c}"),
                format!(" {c}a"),
                format!("'{c}x"),
                format!("{c}  a"),
                format!("x{c}\n"),
            ] {
                assert_eq!(ours(&pre, &text), reference(&re, &text), "text {text:?}");
            }
        }
    }
}
