//! The OpenSeek tokenizer (lib/tokenizer) against its references: the golden encodings, Python
//! tiktoken built from the same rank file and specials on a few MB of generated mixed text, and
//! the Hugging Face conversion of the same tokenizer run by the `tokenizers` crate.

use std::io::Write;
use std::path::PathBuf;

use openseek_tests::{run_python, shared};
use openseek_tokenizer::Tokenizer;

fn openseek_dir() -> PathBuf {
    shared("tokenizers/openseek")
}

fn tiktoken_mode() -> Tokenizer {
    let t = Tokenizer::load(&openseek_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.kind(), "tiktoken");
    t
}

fn hf_mode() -> Tokenizer {
    let t = Tokenizer::load(&shared("tokenizers/openseek/derived_hf/tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.kind(), "huggingface");
    t
}

use openseek_common::rng::SplitMix as Rng;

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "was", "that", "for", "it", "with", "as", "on", "model", "training", "data",
    "tokenizer", "language", "learning", "mixture", "experts", "gradient", "attention", "international", "understanding",
    "antidisestablishmentarianism", "don't", "I'll", "we've", "they're", "HE'S", "she'd", "you'RE", "it's", "o'clock",
    "rock'n'roll", "Zürich", "naïve", "café", "Ångström", "straße", "œuvre", "façade", "résumé", "coöperate", "x-ray",
    "e-mail", "U.S.A.", "Dr.", "Mr", "e.g.", "i.e.", "GPU", "CUDA", "PyTorch", "MoE",
];
const PUNCT: &[&str] = &[".", ",", "!", "?", ";", ":", " —", " -", "...", "\"", "'", "(", ")", " (", "[", "]", "“", "”", "«", "»"];
const CODE: &[&str] = &[
    "fn main() {", "    let x = vec![1, 2, 3];", "\tif (a == b) { return -1; }", "}", "def f(self, *args, **kw):",
    "        return {k: v for k, v in kw.items()}", "#include <stdio.h>", "int main(void) { printf(\"%d\\n\", 42); }",
    "// TODO: fix this", "/* block */", "x += 1; y -= 2; z *= 3; w /= 4;", "a->b->c", "if x >= 10 && y <= 20 || !z:",
    "SELECT * FROM t WHERE id = 'abc';", "<div class=\"x\"><span>hi</span></div>", "    ", "\t\t", "}\r", "$ ls -la | grep '^d'",
    "arr[i][j] = arr[i-1][j] + arr[i][j-1]", "0x1F, 0b1010, 1_000_000, 3.0e-8", "'''docstring'''", "@decorator", "  # comment",
];
const SPACES: &[&str] = &[" ", " ", " ", "\t", "\n", "\n", "\r\n", "\r", "\u{a0}", "\u{3000}", "\u{2003}", "\u{85}", "\u{2028}", "\u{b}", "\u{c}"];
const EMOJI: &[&str] = &[
    "😀", "🚀", "🔥", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇨🇳", "1️⃣", "❤️", "✨", "🤖", "🏳️‍🌈", "🧑🏿‍💻", "☕", "⭐", "©", "™", "€", "°C", "→", "∑", "√2", "≤", "∞",
];
const SPECIALS: &[&str] = &[
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>", "<|extra_7|>", "<|extra_203|>", "<|extra_204|>",
    "<|extra_205|>", "<|im_end|", "<|", "|>", "<|endoftext", "<<|endoftext|>>", "<|im_start|>user\n", "<|im_end|>\n",
    "<|extra_100|><|extra_101|>", "< |endoftext|>",
];
const SCRIPTS: &[&str] = &[
    "Привет, мир! Это тест.", "Ελληνικά κείμενα", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "안녕하세요 세계",
    "\u{1100}\u{1161}\u{11a8}", "こんにちは世界、カタカナ", "Tiếng Việt có dấu", "Tie\u{302}\u{301}ng Vie\u{323}\u{302}t", "e\u{301}",
    "A\u{30a}", "ﬁ ligature", "Ⅻ ⅷ ½ ¾ ² ³", "١٢٣ ٤٥٦", "１２３ＡＢＣ", "'ſ 'S 'ſt 'LL 'Re 'VE 'M 'D 'T", "ǅ ǈ ǋ",
    "\u{200b}zero\u{200d}width\u{feff}", "a\u{300}\u{301}\u{302}\u{303}", "ᄀᄀᄀ", "𝐁𝐨𝐥𝐝 𝔉𝔯𝔞𝔨", "𠀀𠀁𠀂",
];
/// Characters for short adversarial runs.
const ALPHABET: &[&str] = &[
    " ", " ", "\t", "\r", "\n", "\u{a0}", "\u{3000}", "a", "Z", "s", "S", "t", "r", "e", "v", "m", "l", "L", "d", "ſ", "é", "中",
    "д", "0", "7", "٣", "'", "'", "’", "\"", ".", "!", "-", "<", "|", ">", "$", "\u{301}", "\u{200d}", "😀", "\u{7f}",
];

fn segment(rng: &mut Rng) -> String {
    let mut s = String::new();
    match rng.below(10) {
        0 | 1 => {
            for i in 0..1 + rng.below(40) {
                if i > 0 {
                    s.push(' ');
                }
                let w = rng.pick(WORDS);
                match rng.below(6) {
                    0 => s.push_str(&w.to_uppercase()),
                    1 => {
                        let mut c = w.chars();
                        if let Some(f) = c.next() {
                            s.extend(f.to_uppercase());
                            s.push_str(c.as_str());
                        }
                    }
                    _ => s.push_str(w),
                }
                if rng.below(5) == 0 {
                    s.push_str(rng.pick(PUNCT));
                }
            }
        }
        2 => {
            let n = 2 + rng.below(60);
            for _ in 0..n {
                if rng.below(12) == 0 {
                    s.push_str(rng.pick(&["，", "。", "！", "？", "：", "；", "（", "）", "「", "」", "、", "《", "》", " "]));
                } else {
                    s.push(char::from_u32(0x4E00 + rng.below(0x51A5) as u32).unwrap());
                }
            }
        }
        3 => {
            for _ in 0..1 + rng.below(12) {
                s.push_str(rng.pick(CODE));
                s.push_str(rng.pick(&["\n", "\n", "\r\n", "\n\n", " "]));
            }
        }
        4 => {
            let digits = 1 + rng.below(14);
            for i in 0..digits {
                s.push(char::from(b'0' + rng.below(10) as u8));
                if i + 1 < digits && rng.below(5) == 0 {
                    s.push_str(rng.pick(&[",", ".", " ", "-", "/", ":"]));
                }
            }
            if rng.below(3) == 0 {
                s.push_str(rng.pick(&["%", " kg", "km²", "th", "$", "€"]));
            }
        }
        5 => {
            for _ in 0..1 + rng.below(10) {
                s.push_str(rng.pick(SPACES));
            }
        }
        6 => {
            for _ in 0..1 + rng.below(4) {
                s.push_str(rng.pick(EMOJI));
            }
        }
        7 => s.push_str(rng.pick(SPECIALS)),
        8 => s.push_str(rng.pick(SCRIPTS)),
        _ => {
            for _ in 0..1 + rng.below(30) {
                s.push_str(rng.pick(ALPHABET));
            }
        }
    }
    s
}

/// About `target` bytes of documents, deterministic; a few long ones with long runs of one kind.
fn corpus(target: usize) -> Vec<String> {
    let mut rng = Rng::new(0x0DE5_EED5);
    let mut docs = vec![
        "a".repeat(5000),
        "中文".repeat(3000),
        " ".repeat(4000) + "x",
        "\n".repeat(1000) + &" \t".repeat(500),
        "9".repeat(3000),
        "!?".repeat(2000) + "\r\n\r\n",
        "ab".repeat(4000) + &"xyz".repeat(1000),
        "😀".repeat(1000),
        String::new(),
    ];
    let mut total: usize = docs.iter().map(String::len).sum();
    while total < target {
        let mut doc = String::new();
        let long = rng.below(20) == 0;
        let len = 20 + rng.below(if long { 40_000 } else { 3_000 });
        while doc.len() < len {
            doc.push_str(&segment(&mut rng));
            doc.push_str(rng.pick(&[" ", " ", "", "\n", "\n\n", ". ", ", "]));
        }
        total += doc.len();
        docs.push(doc);
    }
    docs
}

/// Panic at the first document whose ids differ, showing where.
fn assert_same_ids(what: &str, texts: &[String], ours: &[Vec<u32>], theirs: &[Vec<u32>]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: document counts differ");
    for (d, (a, b)) in ours.iter().zip(theirs).enumerate() {
        if a != b {
            let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            let lo = at.saturating_sub(3);
            panic!(
                "{what}: document {d} differs at id {at} (lengths {} vs {}): ours {:?} theirs {:?}\ntext starts {:?}",
                a.len(),
                b.len(),
                &a[lo..(at + 4).min(a.len())],
                &b[lo..(at + 4).min(b.len())],
                texts[d].chars().take(200).collect::<String>()
            );
        }
    }
}

#[test]
fn golden_encodings() {
    let tok = tiktoken_mode();
    let hf = hf_mode();
    let path = shared("tokenizers/openseek/golden_encodings.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut n = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
        let input = row["text"].as_str().expect("text");
        let want: Vec<u32> = row["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(input), want, "golden line {}: {input:?}", i + 1);
        assert_eq!(hf.encode(input), want, "golden line {} in huggingface mode: {input:?}", i + 1);
        n += 1;
    }
    assert!(n >= 40, "only {n} golden lines read");
}

#[test]
fn ids_and_vocabulary_of_openseek() {
    let tok = tiktoken_mode();
    assert_eq!(tok.vocab_size(), 151_851);
    assert_eq!(tok.bos_id(), Some(151_849));
    assert_eq!(tok.eos_id(), Some(151_850));
    assert_eq!(tok.pad_id(), Some(151_643));
    assert_eq!(tok.token_id("<|endoftext|>"), Some(151_643));
    assert_eq!(tok.token_id("<|im_start|>"), Some(151_644));
    assert_eq!(tok.token_id("<|im_end|>"), Some(151_645));
    assert_eq!(tok.token_id("<|extra_0|>"), Some(151_646));
    assert_eq!(tok.token_id("<|extra_205|>"), None);
    assert_eq!(tok.encode("<|extra_203|>hi<|extra_204|>"), vec![151_849, 6023, 151_850]);
    let names: Vec<String> = tok.source_files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["qwen.tiktoken", "tokenizer_config.json", "special_tokens_map.json"]);
    assert_eq!(tok.content_sha256(), tiktoken_mode().content_sha256());
    // Loading the rank file alone gives the same tokenizer and ids.
    let file = Tokenizer::load(&openseek_dir().join("qwen.tiktoken")).unwrap();
    assert_eq!(file.encode("Hello world"), vec![9707, 1879]);

    let hf = hf_mode();
    assert_eq!(hf.vocab_size(), 151_851);
    assert_eq!(hf.token_id("<|extra_203|>"), Some(151_849));
    assert_eq!(hf.token_id("<|extra_204|>"), Some(151_850));
    assert_eq!(hf.bos_id(), None, "derived_hf has no tokenizer_config.json");
    assert_ne!(hf.content_sha256(), tok.content_sha256());
}

#[test]
fn decode_round_trips() {
    let tok = tiktoken_mode();
    let hf = hf_mode_cached();
    for text in corpus(300_000) {
        let ids = tok.encode(&text);
        let back = tok.decode(&ids).unwrap();
        if text.is_ascii() {
            assert_eq!(back, text);
        }
        // The decoded text is the NFC form: it encodes to the same ids, and the HF conversion
        // (NFC normalizer, ByteLevel decoder) decodes to the same text.
        assert_eq!(tok.encode(&back), ids);
        assert_eq!(hf.decode(&hf.encode(&text)).unwrap(), back);
    }
    assert!(tok.decode(&[151_851]).is_err());
}

fn hf_mode_cached() -> &'static Tokenizer {
    static HF: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    HF.get_or_init(hf_mode)
}

/// Python tiktoken's ids for each text, with the OpenSeek rank file.
fn python_tiktoken_ids(texts: &[String]) -> Vec<Vec<u32>> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    let output = dir.path().join("ids.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for t in texts {
        writeln!(f, "{}", serde_json::json!({ "text": t })).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let rank_file = openseek_dir().join("qwen.tiktoken");
    run_python("tiktoken_encode.py", &[rank_file.to_str().unwrap(), input.to_str().unwrap(), output.to_str().unwrap()]);
    std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("ids line"))
        .collect()
}

#[test]
fn python_tiktoken_agrees_on_generated_text() {
    let tok = tiktoken_mode();
    let texts = corpus(4_000_000);
    let theirs = python_tiktoken_ids(&texts);
    let ours: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
    let total: usize = ours.iter().map(Vec::len).sum();
    assert!(total > 1_000_000, "only {total} tokens compared");
    assert_same_ids("tiktoken mode vs Python tiktoken", &texts, &ours, &theirs);
}

#[test]
fn huggingface_mode_agrees_with_tiktoken_mode() {
    let tok = tiktoken_mode();
    let hf = hf_mode_cached();
    let texts = corpus(2_000_000);
    let ours: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
    let theirs: Vec<Vec<u32>> = texts.iter().map(|t| hf.encode(t)).collect();
    assert_same_ids("tiktoken mode vs huggingface mode (derived_hf)", &texts, &ours, &theirs);
}

/// Every Unicode scalar value that the venv Python's Unicode database knows (14.0 for Python
/// 3.11; unassigned ones are left out: Python's NFC cannot know later compositions, and we follow
/// Unicode 16), in contexts that exercise each pre-tokenizer branch, against Python tiktoken: the
/// character classes and NFC agree over the whole code space.
#[test]
fn every_code_point_agrees_with_python_tiktoken() {
    let tok = tiktoken_mode();
    let info: serde_json::Value = serde_json::from_str(&run_python("tok_unassigned.py", &[])).unwrap();
    let unassigned: Vec<(u32, u32)> = info["unassigned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32))
        .collect();
    assert!(unassigned.len() > 100, "Python listed too few unassigned ranges");
    let mut texts = Vec::new();
    let mut doc = String::new();
    let mut next_gap = 0;
    let mut compared = 0;
    for cp in 0..0x110000u32 {
        while next_gap < unassigned.len() && unassigned[next_gap].1 < cp {
            next_gap += 1;
        }
        if next_gap < unassigned.len() && unassigned[next_gap].0 <= cp {
            continue;
        }
        let Some(c) = char::from_u32(cp) else { continue };
        compared += 1;
        doc.push_str(&format!("x{c} {c}{c}1'{c}\t{c}.{c}\n "));
        if doc.len() > 4000 {
            texts.push(std::mem::take(&mut doc));
        }
    }
    texts.push(doc);
    assert!(compared > 250_000, "only {compared} code points compared");
    let theirs = python_tiktoken_ids(&texts);
    let ours: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
    assert_same_ids("every code point: tiktoken mode vs Python tiktoken", &texts, &ours, &theirs);
}
