//! The OpenSeek tokenizer, exact and fast.
//!
//! Two modes behind one [`Tokenizer`]:
//! - **tiktoken** (what OpenSeek trains with): a `*.tiktoken` rank file plus Qwen's special tokens,
//!   encoded by this crate's own hand-written pre-tokenizer ([`pretok`]) and rank BPE ([`bpe`]),
//!   id for id what Python `tiktoken` gives after `tokenization_qwen.py`'s NFC step.
//! - **huggingface**: a `tokenizer.json` run by the `tokenizers` crate (raw encode, no BOS/EOS).
//!
//! bos/eos/pad come from `tokenizer_config.json`, then `special_tokens_map.json`, beside the
//! tokenizer (see [`config`]). A `Tokenizer` is `Send + Sync`: share it by reference across threads.

pub mod bpe;
pub mod classes;
pub mod config;
pub mod hf;
pub mod pretok;
pub mod tiktoken;

use std::path::{Path, PathBuf};

use openseek_common::Failure;
use sha2::{Digest, Sha256};

pub use hf::train_bpe;

enum Backend {
    Tiktoken(Box<tiktoken::Tiktoken>),
    Hf(Box<hf::Hf>),
}

pub struct Tokenizer {
    backend: Backend,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    sha256: String,
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("files", &self.files)
            .finish()
    }
}

/// The `*.tiktoken` files directly in `dir`, sorted.
fn tiktoken_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::io_at(dir, "cannot list the tokenizer directory", &e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Failure::io_at(dir, "cannot list the tokenizer directory", &e))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tiktoken") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::io_at(path, "cannot read the tokenizer file", &e))
}

/// SHA-256 over the files in order: for each, its file name, a NUL, its length (u64 LE), its bytes.
fn content_hash(files: &[(PathBuf, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

impl Tokenizer {
    /// Load a tokenizer from `path`:
    /// (a) a `tokenizer.json` file (huggingface mode), or a `*.tiktoken` file (tiktoken mode);
    /// (b) a directory holding `tokenizer.json`;
    /// (c) a directory holding one `*.tiktoken` rank file (tiktoken mode).
    ///
    /// A directory holding both a rank file and a tokenizer.json loads the **rank file**: it is
    /// what OpenSeek trains with. bos/eos/pad are read from `tokenizer_config.json` and then
    /// `special_tokens_map.json` beside the tokenizer, when present; a name there that is not a
    /// token of the vocabulary is an error (65).
    pub fn load(path: &Path) -> Result<Tokenizer, Failure> {
        if !path.exists() {
            return Err(Failure::no_input(format!(
                "{}: tokenizer not found; expected a tokenizer.json file or a directory holding OpenSeek's *.tiktoken rank file (+ tokenizer_config.json) or a tokenizer.json",
                path.display()
            )));
        }
        let (dir, main, is_tiktoken) = if path.is_dir() {
            let ranks = tiktoken_files(path)?;
            if ranks.len() > 1 {
                return Err(Failure::data(format!(
                    "{}: more than one *.tiktoken rank file ({}); keep one, or pass the file itself",
                    path.display(),
                    ranks.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
            match ranks.into_iter().next() {
                Some(r) => (path.to_path_buf(), r, true),
                None if path.join("tokenizer.json").is_file() => (path.to_path_buf(), path.join("tokenizer.json"), false),
                None => {
                    return Err(Failure::no_input(format!(
                        "{}: no tokenizer in this directory; expected a *.tiktoken rank file (+ tokenizer_config.json) or a tokenizer.json",
                        path.display()
                    )))
                }
            }
        } else {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let is_tiktoken = path.extension().is_some_and(|e| e == "tiktoken");
            (dir, path.to_path_buf(), is_tiktoken)
        };

        let names = config::read_special_names(&dir)?;
        let main_bytes = read_file(&main)?;
        let backend = if is_tiktoken {
            let tokens = tiktoken::parse_ranks(&main, &main_bytes)?;
            let specials = tiktoken::qwen_special_tokens();
            Backend::Tiktoken(Box::new(tiktoken::Tiktoken::new(&main, tokens, &specials)?))
        } else {
            Backend::Hf(Box::new(hf::Hf::load(&main)?))
        };
        let mut hashed = vec![(main.clone(), main_bytes)];
        for f in &names.files {
            hashed.push((f.clone(), read_file(f)?));
        }
        let sha256 = content_hash(&hashed);
        let files: Vec<PathBuf> = hashed.into_iter().map(|(p, _)| p).collect();
        let mut tok = Tokenizer {
            backend,
            bos: None,
            eos: None,
            pad: None,
            sha256,
            files,
        };
        let resolve =
            |tok: &Tokenizer, key: &str, name: &Option<String>| -> Result<Option<u32>, Failure> {
                match name {
                    None => Ok(None),
                    Some(n) => tok.token_id(n).map(Some).ok_or_else(|| {
                        Failure::data(format!(
                            "{}: {key} {n:?} (from {}) is not a token of {}",
                            dir.display(),
                            names
                                .files
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(" / "),
                            main.display()
                        ))
                    }),
                }
            };
        tok.bos = resolve(&tok, "bos_token", &names.bos)?;
        tok.eos = resolve(&tok, "eos_token", &names.eos)?;
        tok.pad = resolve(&tok, "pad_token", &names.pad)?;
        Ok(tok)
    }

    /// The ids of `text`; special-token strings in it become their ids. No BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        self.encode_into(text, &mut out);
        out
    }

    /// Append the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match &self.backend {
            Backend::Tiktoken(t) => t.encode_into(text, out),
            Backend::Hf(h) => h.encode_into(text, out),
        }
    }

    /// The text of `ids`: exact when their bytes are UTF-8, with U+FFFD for invalid sequences
    /// otherwise (a cut through a multi-byte char). An id outside the vocabulary is an error (65).
    pub fn decode(&self, ids: &[u32]) -> Result<String, Failure> {
        match &self.backend {
            Backend::Tiktoken(t) => {
                let bytes = t.decode_bytes(ids)?;
                Ok(match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                })
            }
            Backend::Hf(h) => h.decode(ids),
        }
    }

    /// The bytes of `ids` where decoding is their concatenation (tiktoken: [`Tokenizer::decode`] is
    /// their UTF-8 text, invalid sequences replaced); None where a tokenizer.json's decoders shape
    /// the text. An id outside the vocabulary is an error (65).
    pub fn concatenated_bytes(&self, ids: &[u32]) -> Option<Result<Vec<u8>, Failure>> {
        match &self.backend {
            Backend::Tiktoken(t) => Some(t.decode_bytes(ids)),
            Backend::Hf(_) => None,
        }
    }

    /// Number of ids, special tokens included (151851 for OpenSeek).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Tiktoken(t) => t.vocab_size(),
            Backend::Hf(h) => h.vocab_size(),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The id of a token: a special-token name, or (tiktoken mode) a token's text; in
    /// huggingface mode the token as the vocabulary writes it (byte-level characters).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Tiktoken(t) => t.token_id(token),
            Backend::Hf(h) => h.token_id(token),
        }
    }

    /// "tiktoken" or "huggingface".
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Tiktoken(_) => "tiktoken",
            Backend::Hf(_) => "huggingface",
        }
    }

    /// SHA-256 over the files loaded, in [`Tokenizer::source_files`] order: for each, its file
    /// name, a NUL byte, its length as u64 little-endian, then its bytes.
    pub fn content_sha256(&self) -> String {
        self.sha256.clone()
    }

    /// The files loaded: the rank file or tokenizer.json first, then tokenizer_config.json and
    /// special_tokens_map.json where present.
    pub fn source_files(&self) -> &[PathBuf] {
        &self.files
    }

    /// tiktoken mode: append the BPE ids of one pre-tokenizer piece (no pre-tokenizing, NFC or
    /// special tokens), for benchmarks against other pre-tokenizers. Panics in huggingface mode.
    pub fn bpe_piece(&self, piece: &str, out: &mut Vec<u32>) {
        match &self.backend {
            Backend::Tiktoken(t) => t.bpe_piece(piece.as_bytes(), out),
            Backend::Hf(_) => panic!("bpe_piece is for tiktoken mode"),
        }
    }

    /// tiktoken mode's pieces of `text` (already NFC, no special tokens), for tests and tools.
    pub fn tiktoken_pieces<'t>(&'t self, text: &'t str) -> Option<pretok::Pieces<'t>> {
        match &self.backend {
            Backend::Tiktoken(t) => Some(t.pre_tokenizer().pieces(text)),
            Backend::Hf(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use openseek_common::ExitCode;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tokenizer_is_send_sync() {
        assert_send_sync::<Tokenizer>();
    }

    fn write_ranks(dir: &Path, extra: &[&str]) {
        let mut s = String::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        for b in 0..=255u8 {
            s.push_str(&format!("{} {b}\n", b64.encode([b])));
        }
        for (i, t) in extra.iter().enumerate() {
            s.push_str(&format!("{} {}\n", b64.encode(t), 256 + i));
        }
        std::fs::write(dir.join("mini.tiktoken"), s).unwrap();
    }

    #[test]
    fn tiktoken_directory_with_configs() {
        let dir = tempfile::tempdir().unwrap();
        write_ranks(dir.path(), &["he", "ll", "hell", "hello"]);
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"model_max_length": 8}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"bos_token": "<|extra_203|>", "eos_token": {"content": "<|extra_204|>"}, "pad_token": "<|endoftext|>"}"#,
        )
        .unwrap();
        // A tokenizer.json beside it is ignored: the rank file takes precedence.
        std::fs::write(dir.path().join("tokenizer.json"), "not json").unwrap();
        let t = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(t.kind(), "tiktoken");
        assert!(format!("{t:?}").contains("vocab_size: 468"), "{t:?}");
        assert_eq!(t.vocab_size(), 260 + 208);
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.pad_id()),
            (Some(260 + 206), Some(260 + 207), Some(260))
        );
        assert_eq!(t.encode("hello<|im_end|>"), vec![259, 262]);
        let mut v = vec![7];
        t.encode_into("hell", &mut v);
        assert_eq!(v, vec![7, 258]);
        assert_eq!(t.decode(&[259, 262]).unwrap(), "hello<|im_end|>");
        assert_eq!(t.decode(&[0xE4]).unwrap(), "\u{FFFD}");
        assert_eq!(t.decode(&[9999]).unwrap_err().code, ExitCode::DataErr);
        let names: Vec<_> = t
            .source_files()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "mini.tiktoken",
                "tokenizer_config.json",
                "special_tokens_map.json"
            ]
        );
        let sha = t.content_sha256();
        assert_eq!(sha.len(), 64);
        // The hash follows the content of every file loaded.
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"model_max_length": 9}"#,
        )
        .unwrap();
        assert_ne!(Tokenizer::load(dir.path()).unwrap().content_sha256(), sha);
        // Loading the rank file itself is the same tokenizer.
        let same = Tokenizer::load(&dir.path().join("mini.tiktoken")).unwrap();
        assert_eq!(same.encode("hello hello"), t.encode("hello hello"));
    }

    #[test]
    fn loading_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = Tokenizer::load(&dir.path().join("nope")).err().unwrap();
        assert_eq!(e.code, ExitCode::NoInput);
        assert!(
            e.message.contains("nope") && e.message.contains("tiktoken"),
            "{}",
            e.message
        );
        let e = Tokenizer::load(dir.path()).err().unwrap();
        assert_eq!(e.code, ExitCode::NoInput);
        assert!(
            e.message.contains("no tokenizer in this directory"),
            "{}",
            e.message
        );

        std::fs::write(dir.path().join("tokenizer.json"), "{ broken").unwrap();
        let e = Tokenizer::load(dir.path()).err().unwrap();
        assert_eq!(e.code, ExitCode::DataErr);
        assert!(e.message.contains("tokenizer.json"), "{}", e.message);

        std::fs::write(dir.path().join("bad.tiktoken"), "IQ== 0\n@@@ 1\n").unwrap();
        let e = Tokenizer::load(dir.path()).err().unwrap();
        assert_eq!(e.code, ExitCode::DataErr);
        assert!(
            e.message.contains("bad.tiktoken:2") && e.message.contains("base64"),
            "{}",
            e.message
        );

        write_ranks(dir.path(), &[]);
        let e = Tokenizer::load(dir.path()).err().unwrap();
        assert!(e.message.contains("more than one"), "{}", e.message);
        std::fs::remove_file(dir.path().join("bad.tiktoken")).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<s>"}"#,
        )
        .unwrap();
        let e = Tokenizer::load(dir.path()).err().unwrap();
        assert_eq!(e.code, ExitCode::DataErr);
        assert!(
            e.message.contains("bos_token") && e.message.contains("<s>"),
            "{}",
            e.message
        );
    }

    #[test]
    fn train_then_load_huggingface_mode() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.txt");
        let text =
            "the cat sat on the mat. the dog sat on the log. café naïve 中文 123\n".repeat(50);
        std::fs::write(&corpus, &text).unwrap();
        let out = dir.path().join("tok");
        train_bpe(
            std::slice::from_ref(&corpus),
            300,
            &["<pad>", "<s>", "</s>"],
            &out,
        )
        .unwrap();
        let t = Tokenizer::load(&out).unwrap();
        assert_eq!(t.kind(), "huggingface");
        assert_eq!(
            (t.pad_id(), t.bos_id(), t.eos_id()),
            (Some(0), Some(1), Some(2))
        );
        assert!(
            t.vocab_size() > 259 + 20 && t.vocab_size() <= 300,
            "vocab {}",
            t.vocab_size()
        );
        let ids = t.encode("the cat sat</s>");
        assert!(
            ids.len() < "the cat sat".len(),
            "merges were learned: {ids:?}"
        );
        assert_eq!(
            *ids.last().unwrap(),
            2,
            "special token in text becomes its id"
        );
        assert_eq!(t.decode(&ids).unwrap(), "the cat sat</s>");
        // Han characters are never merged with each other (each is its own pre-token).
        assert_eq!(t.encode("中文").len(), 2);
        // NFC: a decomposed é encodes like the composed one.
        assert_eq!(t.encode("cafe\u{301}"), t.encode("café"));
        assert_eq!(t.source_files().len(), 2);
        // Errors: missing input, and nothing left behind.
        let e = train_bpe(
            &[dir.path().join("missing.txt")],
            300,
            &[],
            &dir.path().join("t2"),
        )
        .unwrap_err();
        assert_eq!(e.code, ExitCode::NoInput);
        assert!(!dir.path().join("t2/tokenizer.json").exists());
    }
}
