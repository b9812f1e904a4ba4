//! Megatron GPTDataset's three indices for one dataset, the same seed, sequence length and sample
//! count giving the same arrays as megatron-core (`gpt_dataset.py`, `helpers.cpp`):
//! the document index (document ids tiled per epoch and shuffled; a final epoch used for fewer than
//! 80 % of its samples is shuffled separately), the sample index (a greedy walk cutting
//! `seq_len + 1` token samples out of the shuffled document stream, consecutive samples sharing one
//! token) and the shuffle index (a permutation of the samples, the separate final epoch's samples
//! shuffled apart). One `RandomState(seed)` drives the shuffles in that order.
//! "Document" here is Megatron's sequence: an entry of the `.idx` sequence lengths.

use crate::array::IndexArray;
use crate::rng::RandomState;

/// What determines a GPT index besides the document lengths.
#[derive(Debug, Clone, Copy)]
pub struct GptParams {
    pub seq_len: u32,
    pub seed: u32,
    /// Requested samples; `None` builds one epoch (Megatron's `num_samples=None`).
    pub num_samples: Option<u64>,
    /// Megatron drops the last partial sample except for validation with
    /// `drop_last_partial_validation_sequence=False`.
    pub drop_last_partial: bool,
}

/// The three indices plus the facts the manifest and dry run report.
#[derive(Debug, Clone)]
pub struct GptIndex {
    pub document_index: IndexArray,
    /// Flattened `[samples + 1, 2]`: (position in the document index, token offset).
    pub sample_index: IndexArray,
    pub shuffle_index: IndexArray,
    pub num_epochs: u32,
    pub tokens_per_epoch: u64,
    pub separate_final_epoch: bool,
}

impl GptIndex {
    /// Samples in the index (Megatron's `len(dataset)`).
    pub fn len(&self) -> u64 {
        (self.sample_index.len() / 2 - 1) as u64
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Megatron's epoch count: the fewest epochs whose tokens cover `num_samples * seq_len + 1`.
pub fn num_epochs(tokens_per_epoch: u64, seq_len: u32, num_samples: Option<u64>) -> u32 {
    let Some(n) = num_samples else { return 1 };
    let requested = n * seq_len as u64 + 1;
    if tokens_per_epoch == 0 {
        return 1;
    }
    let mut epochs = 1u64;
    let mut tokens = tokens_per_epoch;
    while tokens < requested {
        epochs += 1;
        tokens += tokens_per_epoch;
    }
    epochs as u32
}

/// Whether the last epoch is shuffled apart, and the samples before it.
pub fn final_epoch_split(tokens_per_epoch: u64, seq_len: u32, num_samples: Option<u64>) -> (bool, u64) {
    let epochs = num_epochs(tokens_per_epoch, seq_len, num_samples) as u64;
    if epochs == 1 {
        return (false, 0);
    }
    let n = num_samples.unwrap_or(0);
    let sans_final = ((epochs - 1) * tokens_per_epoch - 1) / seq_len as u64;
    let from_final = n - sans_final;
    let per_epoch = (tokens_per_epoch - 1) / seq_len as u64;
    assert!(from_final <= per_epoch + 1, "Megatron's invariant on the final epoch failed");
    // Python: num_samples_from_final_epoch < int(0.80 * num_samples_per_epoch)
    let threshold = (0.80f64 * per_epoch as f64) as u64;
    (from_final < threshold, sans_final)
}

/// Build the three indices over `documents` (a contiguous range of sequence ids, Megatron's split
/// range) of `sequence_lengths`.
pub fn build(sequence_lengths: &[i32], documents: std::ops::Range<u32>, params: &GptParams) -> GptIndex {
    assert!(params.seq_len > 1, "seq_len must be > 1");
    let tokens_per_epoch: u64 = sequence_lengths[documents.start as usize..documents.end as usize]
        .iter()
        .map(|&l| l as u64)
        .sum();
    let epochs = num_epochs(tokens_per_epoch, params.seq_len, params.num_samples);
    let (separate_final_epoch, sans_final) = final_epoch_split(tokens_per_epoch, params.seq_len, params.num_samples);
    let mut rng = RandomState::new(params.seed);

    // Document index.
    let ndocs = (documents.end - documents.start) as usize;
    let mut doc_index: Vec<i32> = Vec::with_capacity(ndocs * epochs as usize);
    let tile = |v: &mut Vec<i32>, times: u32| {
        for _ in 0..times {
            v.extend((documents.start..documents.end).map(|d| d as i32));
        }
    };
    if !separate_final_epoch || epochs == 1 {
        tile(&mut doc_index, epochs);
        rng.shuffle(&mut doc_index);
    } else {
        tile(&mut doc_index, epochs - 1);
        rng.shuffle(&mut doc_index);
        let first = doc_index.len();
        tile(&mut doc_index, 1);
        rng.shuffle(&mut doc_index[first..]);
    }

    // Sample index.
    let max_len = sequence_lengths.iter().copied().max().unwrap_or(0).max(0) as u64;
    let sample_max = (doc_index.len() as u64).max(max_len);
    let sample_index = if sample_max <= i32::MAX as u64 {
        IndexArray::I32(build_sample_index::<i32>(sequence_lengths, &doc_index, params, epochs, tokens_per_epoch))
    } else {
        IndexArray::I64(build_sample_index::<i64>(sequence_lengths, &doc_index, params, epochs, tokens_per_epoch))
    };
    let num_samples_built = (sample_index.len() / 2 - 1) as u64;

    // Shuffle index.
    let first = if separate_final_epoch { sans_final } else { num_samples_built };
    let shuffle_index = if num_samples_built >= u32::MAX as u64 - 1 {
        let mut v: Vec<i64> = (0..num_samples_built as i64).collect();
        rng.shuffle(&mut v[..first as usize]);
        rng.shuffle(&mut v[first as usize..]);
        IndexArray::I64(v)
    } else {
        let mut v: Vec<u32> = (0..num_samples_built as u32).collect();
        rng.shuffle(&mut v[..first as usize]);
        rng.shuffle(&mut v[first as usize..]);
        IndexArray::U32(v)
    };
    GptIndex {
        document_index: IndexArray::I32(doc_index),
        sample_index,
        shuffle_index,
        num_epochs: epochs,
        tokens_per_epoch,
        separate_final_epoch,
    }
}

trait SampleInt: Copy + Into<i64> {
    fn from_i64(v: i64) -> Self;
}
impl SampleInt for i32 {
    fn from_i64(v: i64) -> Self {
        v as i32
    }
}
impl SampleInt for i64 {
    fn from_i64(v: i64) -> Self {
        v
    }
}

/// `helpers.cpp build_sample_idx` with `add_extra_token_to_sequence = 1`.
fn build_sample_index<T: SampleInt>(
    sizes: &[i32],
    doc_index: &[i32],
    params: &GptParams,
    epochs: u32,
    tokens_per_epoch: u64,
) -> Vec<T> {
    let extra: i64 = 1;
    let seq = params.seq_len as i64;
    let total = epochs as i64 * tokens_per_epoch as i64 - extra;
    let num_samples = if params.drop_last_partial {
        total / seq
    } else {
        // C++: ceil(float(...) / seq_length), in single precision.
        ((total as f32) / seq as f32).ceil() as i64
    };
    let mut out: Vec<T> = Vec::with_capacity(2 * (num_samples as usize + 1));
    let mut doc_pos: i64 = 0;
    let mut doc_offset: i64 = 0;
    out.push(T::from_i64(0));
    out.push(T::from_i64(0));
    let mut recorded: i64 = 1;
    while recorded <= num_samples {
        let mut remaining = seq + extra;
        while remaining != 0 {
            let doc = doc_index[doc_pos as usize] as usize;
            let doc_len = sizes[doc] as i64 - doc_offset;
            remaining -= doc_len;
            if remaining <= 0 {
                doc_offset += remaining + doc_len - extra;
                remaining = 0;
            } else {
                if doc_pos == doc_index.len() as i64 - 1 {
                    doc_offset = sizes[doc_index[doc_pos as usize] as usize] as i64 - extra;
                    break;
                }
                doc_pos += 1;
                doc_offset = 0;
            }
        }
        out.push(T::from_i64(doc_pos));
        out.push(T::from_i64(doc_offset));
        recorded += 1;
    }
    out
}

/// The pieces of sample `i` (before the shuffle index): (document id, offset, length) covering
/// `seq_len + 1` tokens, or fewer at the very end of a non-dropping index.
pub fn sample_pieces(
    document_index: &impl Fn(usize) -> i64,
    sample_index: &impl Fn(usize) -> i64,
    sequence_length: &impl Fn(usize) -> i64,
    i: usize,
) -> Vec<(u64, u64, u64)> {
    let (beg, beg_off) = (sample_index(2 * i), sample_index(2 * i + 1));
    let (end, end_off) = (sample_index(2 * i + 2), sample_index(2 * i + 3));
    let mut pieces = Vec::new();
    if beg == end {
        let doc = document_index(beg as usize);
        pieces.push((doc as u64, beg_off as u64, (end_off - beg_off + 1) as u64));
    } else {
        for p in beg..=end {
            let doc = document_index(p as usize);
            let offset = if p > beg { 0 } else { beg_off };
            let len = if p < end { sequence_length(doc as usize) - offset } else { end_off + 1 };
            pieces.push((doc as u64, offset as u64, len as u64));
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_seq_len_plus_one_and_overlap_by_one() {
        let lens: Vec<i32> = (0..50).map(|i| 1 + (i * 37 % 23)).collect();
        let p = GptParams { seq_len: 8, seed: 7, num_samples: Some(100), drop_last_partial: true };
        let idx = build(&lens, 0..50, &p);
        assert!(idx.len() >= 100);
        assert!(idx.num_epochs > 1);
        let di = |k: usize| idx.document_index.get(k);
        let si = |k: usize| idx.sample_index.get(k);
        let sl = |d: usize| lens[d] as i64;
        // Flatten the document stream and check each sample is a window of it.
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for k in 0..idx.document_index.len() {
            starts.push(stream.len());
            let d = di(k) as usize;
            stream.extend((0..lens[d]).map(|t| (d as u32, t as u32)));
        }
        for i in 0..idx.len() as usize {
            let pieces = sample_pieces(&di, &si, &sl, i);
            let total: u64 = pieces.iter().map(|p| p.2).sum();
            assert_eq!(total, 9, "sample {i}: {pieces:?}");
            let start = starts[si(2 * i) as usize] + si(2 * i + 1) as usize;
            assert_eq!(start, i * 8, "consecutive samples overlap by one token");
        }
    }

    #[test]
    fn epochs_and_final_epoch_rule() {
        // 1000 tokens per epoch, seq 10: 99 samples per epoch.
        assert_eq!(num_epochs(1000, 10, Some(99)), 1);
        assert_eq!(num_epochs(1000, 10, Some(100)), 2);
        assert_eq!(final_epoch_split(1000, 10, Some(100)), (true, 99));
        assert_eq!(final_epoch_split(1000, 10, Some(190)), (false, 99));
    }
}
