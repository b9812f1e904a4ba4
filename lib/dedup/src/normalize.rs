//! datatrove's `simplify_text` (datatrove.utils.text, 0.10.1) with its default `TextNormConfig`:
//! lowercase, every run of digits (with one decimal separator) to "0", its punctuation list to
//! spaces, whitespace runs to one space, NFD with non-spacing marks dropped, stripped. MinHash
//! shingles are built from this text, so it must match datatrove character for character.

use std::sync::OnceLock;

use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;

/// datatrove's `PUNCTUATION` (the characters its `PUNCTUATION_TRANS` maps to a space): the
/// listed symbols plus the control characters 0-8, 11-31 and 127-159.
const PUNCTUATION_SYMBOLS: &str = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»";

fn is_punctuation(c: char) -> bool {
    let code = c as u32;
    if code < 9 || (11..32).contains(&code) || (127..160).contains(&code) {
        return true;
    }
    if c.is_ascii_alphanumeric() || c == ' ' {
        return false;
    }
    PUNCTUATION_SYMBOLS.contains(c)
}

/// datatrove's `TERMINAL_PUNCTUATION` (sentence-ending marks of many scripts).
const TERMINAL_PUNCTUATION: &str = "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕៖៙៚᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᭽᭾᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼⹓⹔。꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡𐩖𐩗𐽕𐽖𐽗𐽘𐽙𐾆𐾇𐾈𐾉𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑥄𑥆𑩂𑩃𑪛𑪜𑱁𑱂𑻷𑻸\u{11f43}\u{11f44}𖩮𖩯𖫵𖬷𖬸𖭄𖺘𛲟𝪈";

/// Membership in datatrove's `PUNCTUATION_SET` (its punctuation list and the terminal marks),
/// which its Gopher quality rules use to tell symbol-only words.
pub fn in_punctuation_set(c: char) -> bool {
    is_punctuation(c) || TERMINAL_PUNCTUATION.contains(c)
}

/// Python's `str.isspace` (what `re`'s `\s` and `str.strip` use): Unicode White_Space plus the
/// information separators U+001C-U+001F.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn numbers() -> &'static regex::Regex {
    static NUMBERS: OnceLock<regex::Regex> = OnceLock::new();
    // datatrove's NUMBERS_PATTERN.
    NUMBERS.get_or_init(|| regex::Regex::new(r"\p{Nd}+([.,،٫⎖⎗⎘]\p{Nd}+)?").expect("valid pattern"))
}

/// `simplify_text(text)` with datatrove's default configuration.
pub fn simplify_text(text: &str) -> String {
    let lower = text.to_lowercase();
    let numbered = numbers().replace_all(&lower, "0");
    // Punctuation to spaces and whitespace runs to one space, in one pass; leading and trailing
    // whitespace dropped (datatrove strips before collapsing).
    let mut collapsed = String::with_capacity(numbered.len());
    let mut pending_space = false;
    for c in numbered.chars() {
        if is_python_space(c) || is_punctuation(c) {
            pending_space = !collapsed.is_empty();
        } else {
            if pending_space {
                collapsed.push(' ');
                pending_space = false;
            }
            collapsed.push(c);
        }
    }
    if collapsed.is_ascii() {
        return collapsed;
    }
    let folded: String = collapsed.nfd().filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark).collect();
    folded.trim_matches(is_python_space).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_numbers_punctuation_whitespace_and_diacritics() {
        assert_eq!(simplify_text("  Hello, World!\n\tIt's 3.14 or 1,000 — café  "), "hello world it s 0 or 0 cafe");
        assert_eq!(simplify_text("Année 2024: ÉTÉ"), "annee 0 ete");
        // Final sigma, as Python's str.lower.
        assert_eq!(simplify_text("ΟΔΟΣ"), "οδος");
        // Chinese punctuation in datatrove's list becomes a space; other characters stay.
        assert_eq!(simplify_text("熊猫吃竹子。兔子，吃胡萝卜"), "熊猫吃竹子 兔子 吃胡萝卜");
        // A combining mark alone between spaces leaves two spaces inside (datatrove strips only the ends).
        assert_eq!(simplify_text("a \u{301} b"), "a  b");
        assert_eq!(simplify_text("\u{7f}x\u{85}y"), "x y");
        assert_eq!(simplify_text(""), "");
    }
}
