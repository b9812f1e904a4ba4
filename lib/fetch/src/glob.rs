//! `--include` / `--exclude` patterns with huggingface_hub's semantics: Python's `fnmatchcase`
//! (`*` also crosses `/`, `?` one character, `[abc]`, `[!abc]`, ranges), and a pattern ending in
//! `/` means everything under that folder.

/// Does `path` match `pattern` (fnmatchcase)?
pub fn fnmatch(pattern: &str, path: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = path.chars().collect();
    match_from(&p, &s)
}

fn match_from(p: &[char], s: &[char]) -> bool {
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(p, pi, s[si]) {
                        if matched {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == '[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at `p[start]`: `Some((matches c, index after ']'))`, or `None` when unclosed
/// (then `[` is a literal, as in Python).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && p[i] == '!';
    if negate {
        i += 1;
    }
    let first = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == ']' && i > first {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Patterns as huggingface_hub normalises them: `\` is `/`, and `dir/` means `dir/*`.
pub fn normalize(pattern: &str) -> String {
    let p = pattern.replace('\\', "/");
    if p.ends_with('/') {
        format!("{p}*")
    } else {
        p
    }
}

/// huggingface_hub's `filter_repo_objects`: kept if it matches some include (when any are
/// given) and no exclude.
pub fn selected(path: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| fnmatch(&normalize(p), path)))
        && !exclude.iter().any(|p| fnmatch(&normalize(p), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        assert!(fnmatch("*.bin", "a/b/c.bin"));
        assert!(fnmatch("*", "x/y"));
        assert!(!fnmatch("*.bin", "c.binx"));
        assert!(fnmatch("part_?_text*", "part_1_text_document.idx"));
        assert!(fnmatch("[ab]*", "b1"));
        assert!(!fnmatch("[!ab]*", "b1"));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(fnmatch("a[", "a["));
        assert!(fnmatch("[]]", "]"));
        assert!(fnmatch("*a*b*c", "xxaxxbxxc"));
        assert!(!fnmatch("*a*b*c", "xxaxxbxxcd"));
        assert!(!fnmatch("A.bin", "a.bin"));
    }

    #[test]
    fn selection_rules() {
        let inc = vec!["sub/".to_string()];
        let exc = vec!["*.md".to_string()];
        assert!(selected("sub/x.bin", &inc, &exc));
        assert!(!selected("sub/README.md", &inc, &exc));
        assert!(!selected("other/x.bin", &inc, &exc));
        assert!(selected("anything", &[], &[]));
    }
}
