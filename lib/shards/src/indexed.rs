//! Megatron indexed dataset (MMIDIDX): see FORMATS.md section 1. `PREFIX.bin` holds the tokens of
//! every sequence back to back; `PREFIX.idx` holds a header (magic, version 1, dtype code, sequence
//! count N, document-index count D), i32[N] lengths, i64[N] byte pointers, i64[D] document indices
//! and, in multimodal files only, i8[N] sequence modes.
//!
//! `IndexedDataset::open` checks: both files exist; magic, version and dtype code; the `.idx` size
//! equals what the counts need (with or without the trailing modes); lengths non-negative;
//! pointers start at 0 and are cumulative without overflow; the lengths cover the `.bin` exactly;
//! document indices start at 0, never decrease and end at N. `check` adds a scan of every token.

#[cfg(target_endian = "big")]
compile_error!("the indexed dataset is little-endian and read zero-copy; big-endian hosts are not supported");

mod check;
mod dtype;
mod reader;
pub mod report;
mod writer;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use check::{check, CheckReport};
pub use dtype::{DType, Tokens};
pub use reader::IndexedDataset;
pub use writer::{merge, merge_detailed, IndexedDatasetWriter, MergeReport, WriteSummary};

/// The 9 magic bytes that open every `.idx`.
pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
/// Header bytes before the sequence lengths.
pub const HEADER_LEN: usize = 34;

/// `PREFIX.idx` (the extension is appended, as Megatron does, never substituted).
pub fn idx_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".idx")
}

/// `PREFIX.bin`.
pub fn bin_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".bin")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(prefix.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// A prefix as users type it: `data/x`, `data/x.bin` and `data/x.idx` all mean `data/x`.
pub fn strip_extension(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("bin" | "idx") => path.with_extension(""),
        _ => path.to_path_buf(),
    }
}

/// Counts of one shard, for reports and manifests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardSummary {
    pub prefix: PathBuf,
    pub dtype: DType,
    pub sequences: u64,
    pub documents: u64,
    pub tokens: u64,
    pub bin_bytes: u64,
    pub idx_bytes: u64,
}

impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests;
