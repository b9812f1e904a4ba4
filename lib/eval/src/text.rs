//! Python string semantics the prompt functions and metrics rely on: `str.isspace`/`rstrip`/
//! `strip`, `str.capitalize`, `str.lower`, `string.punctuation` removal, and HellaSwag's
//! `preprocess` (`re.sub("\\[.*?\\]", "", ...)`).

/// Python's `str.isspace` for one character (Unicode White_Space plus U+001C..U+001F).
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_is_space)
}

/// `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// `s.lower()` (full Unicode lowercase mapping, final sigma included).
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// `s.capitalize()`: the first character upper-cased (title case in CPython >= 3.8, equal to
/// upper case except for a few digraphs), the rest lower-cased.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let mut out = String::with_capacity(s.len());
            match first {
                // Digraphs whose title case differs from their upper case.
                'Ǆ' | 'ǅ' | 'ǆ' => out.push('ǅ'),
                'Ǉ' | 'ǈ' | 'ǉ' => out.push('ǈ'),
                'Ǌ' | 'ǋ' | 'ǌ' => out.push('ǋ'),
                'Ǳ' | 'ǲ' | 'ǳ' => out.push('ǲ'),
                _ => out.extend(first.to_uppercase()),
            }
            out.push_str(&chars.as_str().to_lowercase());
            out
        }
    }
}

/// `text.translate(str.maketrans("", "", string.punctuation))`: drop ASCII punctuation.
pub fn remove_punctuation(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

/// `re.sub("\\[.*?\\]", "", text)`: remove each shortest `[...]` that does not span a newline.
pub fn remove_brackets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        // `.` does not match '\n': the closing bracket must come before any newline.
        let close = after.find(']');
        let newline = after.find('\n');
        match close {
            Some(c) if newline.is_none_or(|n| c < n) => {
                out.push_str(&rest[..open]);
                rest = &after[c + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// HellaSwag's `preprocess` (from the harness): " [title]" becomes ". ", bracketed artifacts
/// are removed, double spaces become single (one non-overlapping pass); no strip.
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = text.replace(" [title]", ". ");
    let t = remove_brackets(&t);
    t.replace("  ", " ")
}

/// The number of Unicode code points.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_like_python() {
        assert_eq!(py_capitalize("the lady"), "The lady");
        assert_eq!(py_capitalize("HE IS"), "He is");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(py_capitalize("ǆemal"), "ǅemal");
        assert_eq!(py_capitalize("élan VITAL"), "Élan vital");
    }

    #[test]
    fn strip_uses_python_whitespace() {
        assert_eq!(py_rstrip("abc \u{1f}\u{3000}\n"), "abc");
        assert_eq!(py_strip("\u{a0} x \t"), "x");
    }

    #[test]
    fn brackets_removed_shortest_and_not_across_newlines() {
        assert_eq!(remove_brackets("a [b] c [d] e"), "a  c  e");
        assert_eq!(remove_brackets("a [b\n] c"), "a [b\n] c");
        assert_eq!(remove_brackets("[x [y] z]"), " z]");
        assert_eq!(remove_brackets("no close ["), "no close [");
    }

    #[test]
    fn hellaswag_preprocess_like_lighteval() {
        assert_eq!(hellaswag_preprocess("Step one [title] Do it. [step] Go  on"), "Step one. Do it. Go on");
        // three spaces become two: one non-overlapping pass, like Python's str.replace
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
        assert_eq!(hellaswag_preprocess("keeps trailing "), "keeps trailing ");
    }

    #[test]
    fn punctuation_is_ascii_only() {
        assert_eq!(remove_punctuation("Sunset Blvd."), "Sunset Blvd");
        assert_eq!(remove_punctuation("a-b_c'd“e”"), "abcd“e”");
    }

    #[test]
    fn cjk_char_len_counts_code_points() {
        assert_eq!(char_len(" 农业生产工具"), 7);
        assert_eq!(char_len("37.8°C"), 6);
    }
}
