//! Which tokenizer a run's checkpoints carry, so that each checkpoint is a whole Hugging Face model
//! directory that os-eval loads: `tokenizer` when given, else `init_from`'s tokenizer files, else
//! the tokenizer the store's shards were made with (os-tokenize records its files and content hash
//! in each shard's `PREFIX.json`; the hash is checked against the files found there now). A run
//! that finds none is refused at the start (exit 78) unless it saves no checkpoints
//! (`save_at_end = false` without `save_interval`, as the benchmarks run).

use crate::config::TrainConfig;
use openseek_common::Failure;
use openseek_mix::store::SampleStore;
use openseek_tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tokenizer directory found, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerSource {
    pub dir: PathBuf,
    pub how: String,
}

/// The run's tokenizer directory (module comment); None only when no checkpoint will be saved.
pub fn resolve(cfg: &TrainConfig, store: &SampleStore) -> Result<Option<TokenizerSource>, Failure> {
    if let Some(dir) = &cfg.tokenizer {
        if !dir.is_dir() {
            return Err(Failure::config(format!(
                "tokenizer {}: not a directory (give the directory holding tokenizer.json or OpenSeek's tiktoken files)",
                dir.display()
            )));
        }
        Tokenizer::load(dir).map_err(|e| Failure::config(format!("tokenizer: {}", e.message)))?;
        return Ok(Some(TokenizerSource { dir: dir.clone(), how: "the tokenizer option".into() }));
    }
    if let Some(dir) = cfg.init_from.as_ref().filter(|d| Tokenizer::load(d).is_ok()) {
        return Ok(Some(TokenizerSource { dir: dir.clone(), how: "init_from's tokenizer files".into() }));
    }
    let from_store = recorded_by_shards(store);
    let saves = cfg.save_at_end || cfg.save_interval.is_some();
    match from_store {
        Ok(found) => Ok(Some(found)),
        Err(_) if !saves => Ok(None),
        Err(why) => Err(Failure::config(format!(
            "no tokenizer for the checkpoints (os-eval needs one in each): {why}; give tokenizer = DIR (or --tokenizer DIR), \
             the directory holding tokenizer.json or OpenSeek's tiktoken files"
        ))),
    }
}

/// The tokenizer directory recorded by the shards of every dataset of `store` (one tokenizer for
/// all), checked to hold the same files now; else why not.
fn recorded_by_shards(store: &SampleStore) -> Result<TokenizerSource, String> {
    let datasets = &store.manifest().datasets;
    if datasets.is_empty() {
        return Err(format!("the store {} names no tokenized datasets", store.dir().display()));
    }
    let mut found: Option<(PathBuf, String, PathBuf)> = None;
    for d in datasets {
        let meta = PathBuf::from(format!("{}.json", d.prefix.display()));
        let record = std::fs::read(&meta).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let tokenizer = record.as_ref().map(|r| &r["tokenizer"]);
        let first_file = tokenizer.and_then(|t| t["files"][0].as_str()).map(PathBuf::from);
        let (Some(file), Some(sha)) = (first_file, tokenizer.and_then(|t| t["sha256"].as_str())) else {
            return Err(format!("{} records no tokenizer (the store's dataset {})", meta.display(), d.label));
        };
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        match &found {
            Some((_, was, by)) if was != sha => {
                return Err(format!("the store's datasets were tokenized with different tokenizers ({} and {})", by.display(), meta.display()));
            }
            Some(_) => {}
            None => found = Some((dir, sha.to_string(), meta)),
        }
    }
    let (dir, sha, meta) = found.unwrap();
    let now = Tokenizer::load(&dir).map_err(|e| format!("the tokenizer the shards were made with ({}) does not load: {}", meta.display(), e.message))?;
    if now.content_sha256() != sha {
        return Err(format!(
            "{} holds other tokenizer files than the ones the shards were made with ({} records sha256 {}, the files now {})",
            dir.display(),
            meta.display(),
            &sha[..12.min(sha.len())],
            &now.content_sha256()[..12]
        ));
    }
    Ok(TokenizerSource { dir, how: format!("the tokenizer the store's shards were made with ({})", meta.display()) })
}
