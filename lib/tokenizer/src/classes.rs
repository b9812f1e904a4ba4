//! Character classes of the pre-tokenizer regex (`\p{L}`, `\p{N}`, `\s`) and the case-fold
//! variants of the contraction letters, taken from `regex-syntax`'s Unicode tables (the tables the
//! `regex` crate, and so fancy-regex and tiktoken, use) and laid out as a two-level lookup table.

use regex_syntax::hir::{Class, HirKind};

/// `\p{L}`: a letter.
pub const LETTER: u8 = 1;
/// `\p{N}`: a number.
pub const NUMBER: u8 = 2;
/// `\s`: Unicode White_Space.
pub const SPACE: u8 = 4;

/// Class flags of every code point: `stage2[stage1[cp >> 8]][cp & 0xff]`.
pub struct Classes {
    ascii: [u8; 128],
    stage1: Vec<u16>,
    stage2: Vec<[u8; 256]>,
}

/// The ranges of a class written in regex syntax, as regex-syntax parses it.
pub fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::parse(pattern)
        .unwrap_or_else(|e| panic!("regex-syntax rejects {pattern}: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        HirKind::Literal(lit) => {
            let c = std::str::from_utf8(&lit.0)
                .expect("literal is UTF-8")
                .chars()
                .next()
                .expect("one char") as u32;
            vec![(c, c)]
        }
        other => panic!("{pattern} is not a character class: {other:?}"),
    }
}

impl Classes {
    pub fn build() -> Classes {
        let mut flat = vec![0u8; 0x110000];
        for (pattern, flag) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (lo, hi) in class_ranges(pattern) {
                for cp in lo..=hi {
                    flat[cp as usize] |= flag;
                }
            }
        }
        let mut stage1 = Vec::with_capacity(0x1100);
        let mut stage2: Vec<[u8; 256]> = Vec::new();
        for block in flat.chunks_exact(256) {
            let block: [u8; 256] = block.try_into().unwrap();
            let index = match stage2.iter().position(|b| *b == block) {
                Some(i) => i,
                None => {
                    stage2.push(block);
                    stage2.len() - 1
                }
            };
            stage1.push(u16::try_from(index).expect("fewer than 65536 distinct blocks"));
        }
        let mut ascii = [0u8; 128];
        ascii.copy_from_slice(&flat[..128]);
        Classes {
            ascii,
            stage1,
            stage2,
        }
    }

    #[inline(always)]
    pub fn ascii(&self, b: u8) -> u8 {
        self.ascii[b as usize]
    }

    #[inline(always)]
    pub fn of(&self, cp: u32) -> u8 {
        if cp < 128 {
            return self.ascii[cp as usize];
        }
        // SAFETY of indexing: cp <= 0x10FFFF, so cp >> 8 < 0x1100 == stage1.len().
        self.stage2[self.stage1[(cp >> 8) as usize] as usize][(cp & 0xff) as usize]
    }
}

/// The characters that `(?i:x)` matches for each contraction letter, in the order
/// `s t r e v m l d` (e.g. `s` also matches U+017F LATIN SMALL LETTER LONG S).
pub struct Folds {
    sets: [Vec<u32>; 8],
}

pub const FOLD_S: usize = 0;
pub const FOLD_T: usize = 1;
pub const FOLD_R: usize = 2;
pub const FOLD_E: usize = 3;
pub const FOLD_V: usize = 4;
pub const FOLD_M: usize = 5;
pub const FOLD_L: usize = 6;
pub const FOLD_D: usize = 7;

impl Folds {
    pub fn build() -> Folds {
        let set = |letter: char| -> Vec<u32> {
            class_ranges(&format!("(?i:{letter})"))
                .into_iter()
                .flat_map(|(lo, hi)| lo..=hi)
                .collect()
        };
        Folds {
            sets: ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'].map(set),
        }
    }

    #[inline(always)]
    pub fn has(&self, which: usize, cp: u32) -> bool {
        self.sets[which].contains(&cp)
    }

    pub fn set(&self, which: usize) -> &[u32] {
        &self.sets[which]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_agrees_with_ranges_everywhere() {
        let classes = Classes::build();
        let letters = class_ranges(r"\p{L}");
        let numbers = class_ranges(r"\p{N}");
        let spaces = class_ranges(r"\s");
        let within =
            |ranges: &[(u32, u32)], cp: u32| ranges.iter().any(|&(lo, hi)| lo <= cp && cp <= hi);
        for cp in (0..0x110000u32).step_by(7).chain(0..0x3000) {
            let want = ((within(&letters, cp) as u8) * LETTER)
                | ((within(&numbers, cp) as u8) * NUMBER)
                | ((within(&spaces, cp) as u8) * SPACE);
            assert_eq!(classes.of(cp), want, "U+{cp:04X}");
        }
    }

    #[test]
    fn known_members() {
        let c = Classes::build();
        assert_eq!(c.of('a' as u32), LETTER);
        assert_eq!(c.of('中' as u32), LETTER);
        assert_eq!(c.of('7' as u32), NUMBER);
        assert_eq!(c.of('٣' as u32), NUMBER); // Arabic-Indic digit three
        assert_eq!(c.of('Ⅻ' as u32), NUMBER); // Roman numeral (Nl)
        assert_eq!(c.of(' ' as u32), SPACE);
        assert_eq!(c.of(0xA0), SPACE);
        assert_eq!(c.of(0x3000), SPACE);
        assert_eq!(c.of(0x85), SPACE);
        assert_eq!(c.of(0x200B), 0, "zero-width space is not White_Space");
        assert_eq!(c.of(0x301), 0, "combining acute is a mark");
        assert_eq!(c.of('😀' as u32), 0);
    }

    #[test]
    fn contraction_folds() {
        let f = Folds::build();
        assert_eq!(f.set(FOLD_S), &['S' as u32, 's' as u32, 0x17F]);
        assert_eq!(f.set(FOLD_T), &['T' as u32, 't' as u32]);
        assert!(
            f.has(FOLD_L, 'L' as u32) && f.has(FOLD_D, 'd' as u32) && !f.has(FOLD_M, 'n' as u32)
        );
    }
}
