//! Deep check of a shard: everything `open` validates, then a scan of every token (ids never
//! negative, floats whole numbers) with counts for the report.

use std::path::Path;

use openseek_common::Failure;
use rayon::prelude::*;

use super::dtype::{DType, Tokens};
use super::reader::IndexedDataset;

/// What `check` found in a healthy shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub prefix: std::path::PathBuf,
    pub dtype: DType,
    pub sequences: u64,
    pub documents: u64,
    pub tokens: u64,
    pub bin_bytes: u64,
    pub idx_bytes: u64,
    /// Smallest and largest token id (None when the shard has no tokens).
    pub min_token: Option<i64>,
    pub max_token: Option<i64>,
    pub empty_sequences: u64,
    pub empty_documents: u64,
    pub longest_sequence: u64,
    pub has_sequence_modes: bool,
}

/// Tokens per parallel chunk of the scan.
const CHUNK: usize = 1 << 20;

/// Open `prefix` (all structural checks) and scan its tokens.
pub fn check(prefix: &Path) -> Result<CheckReport, Failure> {
    let ds = IndexedDataset::open(prefix)?;
    let all = ds.all_tokens();
    let n = all.len();
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    // Per chunk: Ok((min, max)) or Err(index of the first bad token).
    let scanned: Vec<Result<(i64, i64), usize>> = chunks
        .par_iter()
        .map(|&c| {
            let start = c * CHUNK;
            scan(&all.slice(start..(start + CHUNK).min(n))).map_err(|i| start + i)
        })
        .collect();
    let mut range: Option<(i64, i64)> = None;
    for r in scanned {
        match r {
            Ok((lo, hi)) => range = Some(range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi)))),
            Err(pos) => {
                let seq = ds.sequence_at_byte((pos * ds.dtype().size()) as u64);
                let within = pos - ds.sequence_pointer(seq) as usize / ds.dtype().size();
                let value = match all {
                    Tokens::F32(s) => s[pos].to_string(),
                    Tokens::F64(s) => s[pos].to_string(),
                    _ => all.get(pos).to_string(),
                };
                return Err(Failure::data(format!(
                    "{}: token {within} of sequence {seq} (document {}) is {value}, which is not a token id: the .bin is corrupt or the .idx belongs to another file",
                    ds.bin_path().display(),
                    ds.document_of_sequence(seq)
                )));
            }
        }
    }
    let lengths = ds.sequence_lengths();
    let empty_documents = (0..ds.num_documents()).filter(|&d| ds.document_sequences(d).is_empty()).count();
    Ok(CheckReport {
        prefix: ds.prefix().to_path_buf(),
        dtype: ds.dtype(),
        sequences: ds.num_sequences() as u64,
        documents: ds.num_documents() as u64,
        tokens: ds.total_tokens(),
        bin_bytes: ds.bin_bytes(),
        idx_bytes: ds.idx_bytes(),
        min_token: range.map(|r| r.0),
        max_token: range.map(|r| r.1),
        empty_sequences: lengths.iter().filter(|&&l| l == 0).count() as u64,
        empty_documents: empty_documents as u64,
        longest_sequence: lengths.iter().copied().max().unwrap_or(0) as u64,
        has_sequence_modes: ds.has_sequence_modes(),
    })
}

/// (min, max) of a chunk, or the position of the first token that is not an id.
fn scan(tokens: &Tokens<'_>) -> Result<(i64, i64), usize> {
    fn ints<T: Copy + Into<i64>>(s: &[T]) -> Result<(i64, i64), usize> {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for &t in s {
            let t: i64 = t.into();
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if lo < 0 {
            return Err(s.iter().position(|&t| t.into() < 0).unwrap());
        }
        Ok((lo, hi))
    }
    fn floats(s: &[f64]) -> Result<(i64, i64), usize> {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (i, &t) in s.iter().enumerate() {
            if !(t.fract() == 0.0 && (0.0..=i64::MAX as f64).contains(&t)) {
                return Err(i);
            }
            lo = lo.min(t as i64);
            hi = hi.max(t as i64);
        }
        Ok((lo, hi))
    }
    match *tokens {
        Tokens::U8(s) => ints(s),
        Tokens::I8(s) => ints(s),
        Tokens::I16(s) => ints(s),
        Tokens::U16(s) => ints(s),
        Tokens::I32(s) => ints(s),
        Tokens::I64(s) => ints(s),
        Tokens::F32(s) => floats(&s.iter().map(|&t| t as f64).collect::<Vec<_>>()),
        Tokens::F64(s) => floats(s),
    }
}
