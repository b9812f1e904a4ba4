//! Hugging Face mode: a `tokenizer.json` run by the `tokenizers` crate (raw encode: no BOS/EOS or
//! other post-processor insertions), and training a byte-level BPE tokenizer for the demo.

use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, Failure};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

pub struct Hf {
    tk: tokenizers::Tokenizer,
    vocab_size: usize,
}

impl Hf {
    pub fn load(file: &Path) -> Result<Hf, Failure> {
        let tk = tokenizers::Tokenizer::from_file(file).map_err(|e| {
            Failure::data(format!(
                "{}: not a Hugging Face tokenizer.json the tokenizers crate can load: {e}",
                file.display()
            ))
        })?;
        // Ids run 0..max; count added tokens placed past the model's vocabulary too.
        let max_id = tk
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        let vocab_size = tk.get_vocab_size(true).max(max_id);
        Ok(Hf { tk, vocab_size })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tk.token_to_id(token)
    }

    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match self.tk.encode_fast(text, false) {
            Ok(encoding) => out.extend_from_slice(encoding.get_ids()),
            // A byte-level BPE cannot fail; other tokenizer.json models can (e.g. no unk token).
            Err(e) => panic!(
                "the tokenizers crate failed to encode a text of {} bytes: {e}",
                text.len()
            ),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, Failure> {
        if let Some(&bad) = ids.iter().find(|&&id| self.tk.id_to_token(id).is_none()) {
            return Err(Failure::data(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        self.tk
            .decode(ids, false)
            .map_err(|e| Failure::data(format!("cannot decode ids: {e}")))
    }
}

/// Train a byte-level BPE tokenizer (NFC normalizer, a split that isolates each Han character then
/// the ByteLevel pre-tokenizer without a prefix space, ByteLevel decoder) on `files` and write
/// `tokenizer.json` and `tokenizer_config.json` atomically. `output` is the directory to write
/// them into (created if missing), or the path of the tokenizer.json itself (ending in `.json`;
/// the config goes beside it).
///
/// `special_tokens` get the first ids in the order given; by convention they are
/// `[pad/unk, bos, eos]`, and tokenizer_config.json names the first as pad_token and unk_token,
/// the second as bos_token and the third as eos_token (those given; extra ones are only added).
pub fn train_bpe(
    files: &[PathBuf],
    vocab_size: usize,
    special_tokens: &[&str],
    output: &Path,
) -> Result<(), Failure> {
    if files.is_empty() {
        return Err(Failure::usage("train_bpe: no training files given"));
    }
    for f in files {
        if !f.is_file() {
            return Err(Failure::no_input(format!(
                "{}: training text file not found",
                f.display()
            )));
        }
    }
    let min_vocab = 256 + special_tokens.len();
    if vocab_size < min_vocab {
        return Err(Failure::usage(format!(
            "train_bpe: vocab_size {vocab_size} is below the 256 byte tokens plus {} special tokens ({min_vocab})",
            special_tokens.len()
        )));
    }
    let (dir, json_path) = if output.extension().is_some_and(|e| e == "json") {
        let dir = output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        (dir, output.to_path_buf())
    } else {
        (output.to_path_buf(), output.join("tokenizer.json"))
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::io_at(&dir, "cannot create the output directory", &e).context("train_bpe")
    })?;

    let specials: Vec<AddedToken> = special_tokens
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build()
        .into();
    let mut tk = tokenizers::Tokenizer::new(BPE::default());
    tk.with_normalizer(Some(NFC))
        .map_err(|e| Failure::software(format!("train_bpe: {e}")))?;
    // Han characters one by one: Chinese text has no spaces, so the ByteLevel split alone leaves a
    // whole clause one pre-token and BPE merges a small corpus' clauses ("狗吃骨头") into single
    // tokens; split, Chinese words are built from their characters as English words are from
    // their letters, and a fact stated in one sentence shares its tokens with a question about it.
    let han = Split::new(SplitPattern::Regex(r"\p{Han}".into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| Failure::software(format!("train_bpe: {e}")))?;
    tk.with_pre_tokenizer(Some(Sequence::new(vec![han.into(), ByteLevel::new(false, true, true).into()])));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let names: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    tk.train_from_files(&mut trainer, names).map_err(|e| {
        Failure::data(format!(
            "train_bpe: training on {} file(s) failed: {e}",
            files.len()
        ))
    })?;
    tk.add_special_tokens(specials)
        .map_err(|e| Failure::software(format!("train_bpe: cannot add the special tokens: {e}")))?;
    let json = tk.to_string(false).map_err(|e| {
        Failure::software(format!("train_bpe: cannot serialise the tokenizer: {e}"))
    })?;

    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    for (i, keys) in [
        &["pad_token", "unk_token"][..],
        &["bos_token"],
        &["eos_token"],
    ]
    .iter()
    .enumerate()
    {
        if let Some(tok) = special_tokens.get(i) {
            for key in *keys {
                config.insert((*key).into(), (*tok).into());
            }
        }
    }
    let config_path = dir.join("tokenizer_config.json");
    let mut out = AtomicOutputs::new();
    out.create(&json_path)?
        .write_all(json.as_bytes())
        .map_err(|e| Failure::io_at(&json_path, "cannot write", &e))?;
    out.create(&config_path)?
        .write_all(
            serde_json::to_string_pretty(&serde_json::Value::Object(config))
                .unwrap()
                .as_bytes(),
        )
        .map_err(|e| Failure::io_at(&config_path, "cannot write", &e))?;
    out.commit()
}
