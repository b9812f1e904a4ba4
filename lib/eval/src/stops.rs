//! Stop strings of greedy generation, checked as a continuation grows one token at a time: is one
//! of an item's stop strings in the decoded text of its new tokens?

use openseek_tokenizer::Tokenizer;

/// Per item, what earlier checks have seen. Where the tokenizer decodes by concatenating its
/// tokens' bytes (tiktoken) and a stop string is ASCII, a check searches only the bytes the newest
/// tokens add, with the string's length minus one before them: UTF-8 repair (U+FFFD for invalid
/// sequences) never changes an ASCII byte nor makes one, so such a string is in the text exactly when
/// its bytes are in the bytes, and the earlier checks found it nowhere before. Otherwise the whole
/// continuation is decoded and searched, as [`StopStrings::in_text`] does.
pub struct StopStrings {
    bytes: Vec<Vec<u8>>,
    tokens_seen: Vec<usize>,
}

impl StopStrings {
    /// For `items` continuations, none started.
    pub fn new(items: usize) -> StopStrings {
        StopStrings { bytes: vec![Vec::new(); items], tokens_seen: vec![0; items] }
    }

    /// Whether item `k`'s continuation `new` (the tokens of the previous call for `k` and more)
    /// holds one of `stops` in its text; equal to [`StopStrings::in_text`] when every earlier call
    /// for `k` returned false.
    pub fn found(&mut self, tok: &Tokenizer, k: usize, new: &[u32], stops: &[String]) -> bool {
        if new.len() < self.tokens_seen[k] {
            self.bytes[k].clear();
            self.tokens_seen[k] = 0;
        }
        if stops.iter().all(|s| s.is_ascii()) {
            if let Some(Ok(added)) = tok.concatenated_bytes(&new[self.tokens_seen[k]..]) {
                let bytes = &mut self.bytes[k];
                let before = bytes.len();
                bytes.extend_from_slice(&added);
                self.tokens_seen[k] = new.len();
                return stops.iter().any(|s| {
                    let from = before.saturating_sub(s.len().saturating_sub(1));
                    s.is_empty() || bytes[from..].windows(s.len()).any(|w| w == s.as_bytes())
                });
            }
        }
        Self::in_text(tok, new, stops)
    }

    /// Whether the decoded text of `new` holds one of `stops` (undecodable ids: no text).
    pub fn in_text(tok: &Tokenizer, new: &[u32], stops: &[String]) -> bool {
        let text = tok.decode(new).unwrap_or_default();
        stops.iter().any(|s| text.contains(s.as_str()))
    }
}
