//! Slurm host lists (`node[01-03,07],gpu5`) expanded the way `scontrol show hostnames` does:
//! comma-separated entries, each with any number of bracketed ranges, zero padding kept.

use openseek_common::Failure;

/// Every host name of a Slurm host list, in order.
pub fn expand(list: &str) -> Result<Vec<String>, Failure> {
    let bad = |why: &str| Failure::config(format!("host list {list:?}: {why}"));
    let mut hosts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    // Split on commas outside brackets.
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(|| bad("unbalanced ']'"))?,
            ',' if depth == 0 => {
                expand_entry(&list[start..i], &mut hosts).map_err(|e| bad(&e))?;
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced '['"));
    }
    expand_entry(&list[start..], &mut hosts).map_err(|e| bad(&e))?;
    Ok(hosts)
}

/// One entry: a prefix, then `[ranges]` groups alternating with literal text (the cross product).
fn expand_entry(entry: &str, out: &mut Vec<String>) -> Result<(), String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("empty host name".into());
    }
    let mut names = vec![String::new()];
    let mut rest = entry;
    while !rest.is_empty() {
        match rest.find('[') {
            None => {
                names.iter_mut().for_each(|n| n.push_str(rest));
                rest = "";
            }
            Some(open) => {
                let literal = &rest[..open];
                let close = rest[open..].find(']').ok_or("unbalanced '['")? + open;
                let values = expand_ranges(&rest[open + 1..close])?;
                names = names
                    .iter()
                    .flat_map(|n| values.iter().map(move |v| format!("{n}{literal}{v}")))
                    .collect();
                rest = &rest[close + 1..];
            }
        }
    }
    out.extend(names);
    Ok(())
}

/// `01-03,07` -> `01 02 03 07` (the width of the lower bound is kept, as Slurm does).
fn expand_ranges(spec: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("bad range {part:?} (expected N or N-M)"));
        }
        let (a, b): (u64, u64) = (lo.parse().map_err(|_| format!("bad number {lo:?}"))?, hi.parse().map_err(|_| format!("bad number {hi:?}"))?);
        if b < a {
            return Err(format!("range {part:?} runs backwards"));
        }
        if b - a > 1_000_000 {
            return Err(format!("range {part:?} is too large"));
        }
        let width = lo.len();
        values.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn hosts(list: &str) -> Vec<String> {
        expand(list).unwrap()
    }

    #[test]
    fn plain_names_and_commas() {
        assert_eq!(hosts("localhost"), ["localhost"]);
        assert_eq!(hosts("a,b,c"), ["a", "b", "c"]);
    }

    #[test]
    fn ranges_keep_zero_padding() {
        assert_eq!(hosts("node[01-03,07],gpu5"), ["node01", "node02", "node03", "node07", "gpu5"]);
        assert_eq!(hosts("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(hosts("n[098-101]"), ["n098", "n099", "n100", "n101"]);
    }

    #[test]
    fn suffixes_and_several_brackets() {
        assert_eq!(hosts("rack[1-2]-node[1,3]"), ["rack1-node1", "rack1-node3", "rack2-node1", "rack2-node3"]);
        assert_eq!(hosts("gpu[1-2].cluster,login"), ["gpu1.cluster", "gpu2.cluster", "login"]);
    }

    #[test]
    fn malformed_lists_are_refused_with_the_list_named() {
        for bad in ["node[1-", "node]1", "node[a-b]", "node[3-1]", "a,,b", ""] {
            let err = expand(bad).unwrap_err();
            assert!(err.message.contains(&format!("{bad:?}")), "{bad}: {}", err.message);
        }
    }
}
