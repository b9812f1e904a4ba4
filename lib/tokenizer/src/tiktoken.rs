//! tiktoken mode: OpenSeek's `*.tiktoken` rank file (`base64(token bytes) rank` per line) with
//! Qwen's special tokens after the last rank, encoded as `tokenization_qwen.py` does: NFC, then
//! special-token strings become their ids wherever they occur, then the pre-tokenizer and rank BPE
//! on each piece.

use std::borrow::Cow;
use std::path::Path;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use openseek_common::Failure;
use rustc_hash::FxHashMap;
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::bpe::Ranks;
use crate::pretok::PreTokenizer;

/// Qwen's special tokens, in id order from the first id after the ranks:
/// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0|>` .. `<|extra_204|>`.
pub fn qwen_special_tokens() -> Vec<String> {
    let mut names = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".to_string(),
        "<|im_end|>".to_string(),
    ];
    names.extend((0..205).map(|i| format!("<|extra_{i}|>")));
    names
}

pub struct Tiktoken {
    ranks: Ranks,
    /// id → token bytes, for ranks and specials.
    decoder: Vec<Box<[u8]>>,
    specials: FxHashMap<String, u32>,
    special_matcher: AhoCorasick,
    /// Pattern index of `special_matcher` → id.
    special_ids: Vec<u32>,
    pre: PreTokenizer,
}

/// Parse a rank file's bytes (`path` only names it in errors).
pub fn parse_ranks(path: &Path, data: &[u8]) -> Result<Vec<Box<[u8]>>, Failure> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut by_rank: Vec<Option<Box<[u8]>>> = Vec::new();
    let mut count = 0usize;
    for (index, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |what: &str| {
            Failure::data(format!(
                "{}:{line_no}: {what}; each line must be `<base64 token bytes> <rank>` (found {:?})",
                path.display(),
                String::from_utf8_lossy(&line[..line.len().min(80)])
            ))
        };
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad("expected two fields"));
        };
        let token = engine
            .decode(token)
            .map_err(|e| bad(&format!("bad base64 ({e})")))?;
        if token.is_empty() {
            return Err(bad("empty token"));
        }
        let rank: usize = std::str::from_utf8(rank)
            .ok()
            .and_then(|r| r.parse().ok())
            .filter(|&r: &usize| r < u32::MAX as usize / 2)
            .ok_or_else(|| bad("the rank is not a non-negative integer"))?;
        if rank >= by_rank.len() {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].is_some() {
            return Err(bad(&format!("rank {rank} appears twice")));
        }
        by_rank[rank] = Some(token.into_boxed_slice());
        count += 1;
    }
    if count == 0 {
        return Err(Failure::data(format!(
            "{}: no ranks in the file; expected `<base64 token> <rank>` lines",
            path.display()
        )));
    }
    by_rank
        .into_iter()
        .enumerate()
        .map(|(rank, t)| {
            t.ok_or_else(|| {
                Failure::data(format!(
                    "{}: rank {rank} is missing; ranks must run 0..{} without gaps",
                    path.display(),
                    count - 1
                ))
            })
        })
        .collect()
}

impl Tiktoken {
    /// Build from the tokens in rank order and the special-token names (ids follow the ranks).
    pub fn new(
        path: &Path,
        tokens: Vec<Box<[u8]>>,
        special_names: &[String],
    ) -> Result<Tiktoken, Failure> {
        let mut map: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        map.reserve(tokens.len());
        for (rank, token) in tokens.iter().enumerate() {
            if map.insert(token.clone(), rank as u32).is_some() {
                return Err(Failure::data(format!(
                    "{}: token {:?} appears twice (second time at rank {rank})",
                    path.display(),
                    String::from_utf8_lossy(token)
                )));
            }
        }
        for b in 0..=255u8 {
            if !map.contains_key(&[b][..]) {
                return Err(Failure::data(format!(
                    "{}: the single byte 0x{b:02x} is not a token; a byte-level rank file must hold all 256 bytes",
                    path.display()
                )));
            }
        }
        let first_special = tokens.len() as u32;
        let mut decoder = tokens;
        let mut specials = FxHashMap::default();
        let mut special_ids = Vec::new();
        for (i, name) in special_names.iter().enumerate() {
            let id = first_special + i as u32;
            specials.insert(name.clone(), id);
            special_ids.push(id);
            decoder.push(name.as_bytes().to_vec().into_boxed_slice());
        }
        let special_matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(special_names)
            .map_err(|e| {
                Failure::software(format!("cannot build the special-token matcher: {e}"))
            })?;
        Ok(Tiktoken {
            ranks: Ranks::new(map),
            decoder,
            specials,
            special_matcher,
            special_ids,
            pre: PreTokenizer::new(),
        })
    }

    /// Ranks plus specials.
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.specials
            .get(token)
            .copied()
            .or_else(|| self.ranks.get(token.as_bytes()))
    }

    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let text = nfc(text);
        let mut start = 0;
        for m in self.special_matcher.find_iter(text.as_ref()) {
            self.encode_ordinary(&text[start..m.start()], out);
            out.push(self.special_ids[m.pattern().as_usize()]);
            start = m.end();
        }
        self.encode_ordinary(&text[start..], out);
    }

    /// Text without special tokens (already NFC): pieces, then BPE.
    #[inline]
    pub fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        for piece in self.pre.pieces(text) {
            self.ranks.encode_piece(piece.as_bytes(), out);
        }
    }

    #[inline]
    pub fn bpe_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        self.ranks.encode_piece(piece, out);
    }

    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, Failure> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let token = self.decoder.get(id as usize).ok_or_else(|| {
                Failure::data(format!(
                    "token id {id} is outside the vocabulary (size {})",
                    self.decoder.len()
                ))
            })?;
            bytes.extend_from_slice(token);
        }
        Ok(bytes)
    }

    pub fn pre_tokenizer(&self) -> &PreTokenizer {
        &self.pre
    }
}

/// One bit per BMP code point: NFC_Quick_Check=Yes and canonical combining class 0. A text made
/// only of such characters is NFC (nothing to reorder, and nothing composes with a preceding
/// character: every character that does has NFC_Quick_Check=Maybe).
static NFC_SAFE: LazyLock<Box<[u64]>> = LazyLock::new(|| {
    let mut bits = vec![0u64; 0x10000 / 64];
    for c in (0..0x10000u32).filter_map(char::from_u32) {
        if canonical_combining_class(c) == 0
            && is_nfc_quick(std::iter::once(c)) == IsNormalized::Yes
        {
            bits[c as usize >> 6] |= 1 << (c as u32 & 63);
        }
    }
    bits.into_boxed_slice()
});

/// Whether every char of `text` is below U+0300 or NFC-safe in the BMP table (a fast, partial
/// test: false sends the text to the full quick check).
#[inline]
fn all_nfc_safe(text: &str) -> bool {
    let bits = &*NFC_SAFE;
    text.chars().all(|c| {
        let cp = c as u32;
        cp < 0x300 || (cp < 0x10000 && (bits[(cp >> 6) as usize] >> (cp & 63)) & 1 == 1)
    })
}

/// NFC form of `text`, borrowed when it already is (ASCII, only NFC-safe chars, or the quick
/// check says yes).
pub fn nfc(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || all_nfc_safe(text) {
        return Cow::Borrowed(text);
    }
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        _ => Cow::Owned(text.nfc().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn line(token: &[u8], rank: usize) -> String {
        format!(
            "{} {rank}\n",
            base64::engine::general_purpose::STANDARD.encode(token)
        )
    }

    /// All bytes, then "ab", "cd", "abcd".
    fn small() -> Tiktoken {
        let mut file = String::new();
        for b in 0..=255u8 {
            file.push_str(&line(&[b], b as usize));
        }
        for (i, t) in ["ab", "cd", "abcd", " ab"].iter().enumerate() {
            file.push_str(&line(t.as_bytes(), 256 + i));
        }
        let p = PathBuf::from("x.tiktoken");
        let tokens = parse_ranks(&p, file.as_bytes()).unwrap();
        Tiktoken::new(
            &p,
            tokens,
            &[
                "<|a|>".to_string(),
                "<|ab|>".to_string(),
                "<|endoftext|>".to_string(),
            ],
        )
        .unwrap()
    }

    fn enc(t: &Tiktoken, s: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.encode_into(s, &mut v);
        v
    }

    #[test]
    fn specials_anywhere_and_ids_after_ranks() {
        let t = small();
        assert_eq!(t.vocab_size(), 260 + 3);
        assert_eq!(enc(&t, "abcd"), vec![258]);
        assert_eq!(enc(&t, "<|endoftext|>"), vec![262]);
        assert_eq!(
            enc(&t, "ab<|a|>cd<|ab|><|endoftext|>"),
            vec![256, 260, 257, 261, 262]
        );
        // Inside a word, and the text round-trips.
        let ids = enc(&t, "x<|a|>y ab");
        assert_eq!(ids, vec![b'x' as u32, 260, b'y' as u32, 259]);
        assert_eq!(t.decode_bytes(&ids).unwrap(), b"x<|a|>y ab");
        // Almost-specials are plain text.
        assert_eq!(
            enc(&t, "<|a|"),
            vec![b'<' as u32, b'|' as u32, b'a' as u32, b'|' as u32]
        );
        assert_eq!(t.token_id("<|ab|>"), Some(261));
        assert_eq!(t.token_id("cd"), Some(257));
        assert_eq!(t.token_id("zz"), None);
    }

    #[test]
    fn nfc_before_specials() {
        let t = small();
        // e + combining acute composes to é (two bytes, no merges).
        assert_eq!(enc(&t, "e\u{301}"), vec![0xC3, 0xA9]);
        // `>` + U+0338 composes to U+226F, so the special token is gone after NFC (as in Python).
        let ids = enc(&t, "<|a|>\u{338}");
        assert!(!ids.contains(&260), "{ids:?}");
        assert_eq!(t.decode_bytes(&ids).unwrap(), "<|a|\u{226f}".as_bytes());
        assert!(matches!(nfc("plain"), Cow::Borrowed(_)));
        assert!(matches!(nfc("已经是NFC"), Cow::Borrowed(_)));
    }

    #[test]
    fn nfc_safe_chars_never_need_normalizing() {
        // Every safe BMP char, in runs and next to other safe chars, is left as it is by NFC.
        let safe: Vec<char> = (0..0x10000u32)
            .filter_map(char::from_u32)
            .filter(|c| all_nfc_safe(&c.to_string()))
            .collect();
        assert!(safe.len() > 50_000, "{}", safe.len());
        assert!(
            !all_nfc_safe("e\u{301}") && !all_nfc_safe("\u{f900}") && !all_nfc_safe("\u{1161}")
        );
        for pair in safe.windows(2) {
            let text = format!("a{}{}{}é中", pair[0], pair[1], pair[0]);
            assert!(unicode_normalization::is_nfc(&text), "{text:?}");
        }
        // And nfc() agrees with full normalization on mixed text.
        for text in [
            "中文e\u{301}",
            "가\u{11a8}",
            "\u{f900}x",
            "Å",
            "ｆｕｌｌ",
            "が",
            "か\u{3099}",
        ] {
            assert_eq!(nfc(text), text.nfc().collect::<String>(), "{text:?}");
        }
    }

    #[test]
    fn bad_rank_files() {
        let p = PathBuf::from("r.tiktoken");
        let e = parse_ranks(&p, b"IQ== 0\nnot-base64!! 1\n").unwrap_err();
        assert_eq!(e.code, openseek_common::ExitCode::DataErr);
        assert!(
            e.message.contains("r.tiktoken:2") && e.message.contains("base64"),
            "{}",
            e.message
        );
        let e = parse_ranks(&p, b"IQ== 0\nIg==\n").unwrap_err();
        assert!(
            e.message.contains(":2") && e.message.contains("two fields"),
            "{}",
            e.message
        );
        let e = parse_ranks(&p, b"IQ== 0\nIg== x\n").unwrap_err();
        assert!(e.message.contains("rank is not"), "{}", e.message);
        let e = parse_ranks(&p, b"IQ== 0\nIg== 0\n").unwrap_err();
        assert!(e.message.contains("appears twice"), "{}", e.message);
        let e = parse_ranks(&p, b"IQ== 0\nIg== 2\n").unwrap_err();
        assert!(e.message.contains("rank 1 is missing"), "{}", e.message);
        let e = parse_ranks(&p, b"\n\n").unwrap_err();
        assert!(e.message.contains("no ranks"), "{}", e.message);
        let tokens = parse_ranks(&p, b"IQ== 0\r\n\r\nIg== 1\n").unwrap();
        assert_eq!(
            tokens,
            vec![
                b"!".to_vec().into_boxed_slice(),
                b"\"".to_vec().into_boxed_slice()
            ]
        );
        let e = Tiktoken::new(&p, tokens, &[]).err().unwrap();
        assert!(e.message.contains("single byte"), "{}", e.message);
    }
}
