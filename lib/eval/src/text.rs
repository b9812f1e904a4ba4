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

/// `s.capitalize()`: the first character in title case (CPython >= 3.8), the rest lower-cased.
pub fn py_capitalize(s: &str) -> String {
    match s.chars().next() {
        None => String::new(),
        Some(first) => {
            let mut out = String::with_capacity(s.len());
            match title_case(first) {
                Some(t) => out.push_str(&t),
                None => out.extend(first.to_uppercase()),
            }
            // Lower-case the whole string so a final sigma sees its left context (as CPython
            // does), then drop the first character's lower case.
            let lower = s.to_lowercase();
            let skip: usize = first.to_lowercase().map(char::len_utf8).sum();
            out.push_str(&lower[skip..]);
            out
        }
    }
}

/// The characters whose Unicode title case differs from their upper case (Rust has no title
/// case mapping): ß, the Latin digraphs, Georgian Mkhedruli, Greek with ypogegrammeni, the
/// Latin and Armenian ligatures.
fn title_case(c: char) -> Option<String> {
    let cp = c as u32;
    let one = |x: u32| Some(char::from_u32(x).unwrap().to_string());
    let many = |xs: &[u32]| Some(xs.iter().map(|&x| char::from_u32(x).unwrap()).collect::<String>());
    match cp {
        0xDF => many(&[0x53, 0x73]),
        0x1C4..=0x1C6 => one(0x1C5),
        0x1C7..=0x1C9 => one(0x1C8),
        0x1CA..=0x1CC => one(0x1CB),
        0x1F1..=0x1F3 => one(0x1F2),
        0x587 => many(&[0x535, 0x582]),
        0x10D0..=0x10FA | 0x10FD..=0x10FF => one(cp),
        0x1F80..=0x1FAF => one(if cp & 0xF < 8 { cp + 8 } else { cp }),
        0x1FB3 | 0x1FBC => one(0x1FBC),
        0x1FC3 | 0x1FCC => one(0x1FCC),
        0x1FF3 | 0x1FFC => one(0x1FFC),
        0x1FB2 => many(&[0x1FBA, 0x345]),
        0x1FB4 => many(&[0x386, 0x345]),
        0x1FB7 => many(&[0x391, 0x342, 0x345]),
        0x1FC2 => many(&[0x1FCA, 0x345]),
        0x1FC4 => many(&[0x389, 0x345]),
        0x1FC7 => many(&[0x397, 0x342, 0x345]),
        0x1FF2 => many(&[0x1FFA, 0x345]),
        0x1FF4 => many(&[0x38F, 0x345]),
        0x1FF7 => many(&[0x3A9, 0x342, 0x345]),
        0xFB00 => many(&[0x46, 0x66]),
        0xFB01 => many(&[0x46, 0x69]),
        0xFB02 => many(&[0x46, 0x6C]),
        0xFB03 => many(&[0x46, 0x66, 0x69]),
        0xFB04 => many(&[0x46, 0x66, 0x6C]),
        0xFB05 | 0xFB06 => many(&[0x53, 0x74]),
        0xFB13 => many(&[0x544, 0x576]),
        0xFB14 => many(&[0x544, 0x565]),
        0xFB15 => many(&[0x544, 0x56B]),
        0xFB16 => many(&[0x54E, 0x576]),
        0xFB17 => many(&[0x544, 0x56D]),
        _ => None,
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
        assert_eq!(py_capitalize("ﬁne"), "Fine");
        assert_eq!(py_capitalize("ßA"), "Ssa");
        assert_eq!(py_capitalize("ᾀx"), "ᾈx");
        assert_eq!(py_capitalize("ΑΣ."), "Ας.");
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
