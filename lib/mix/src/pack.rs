//! os-pack's strategies for one dataset of documents:
//! - `megatron`: Megatron GPTDataset's indices (documents concatenated in shuffled order, samples
//!   crossing document boundaries), exactly as megatron-core builds them for one unweighted prefix;
//! - `bfd`: best-fit-decreasing packing of whole documents into `seq_len + 1` token samples,
//!   documents longer than a sample cut into full samples plus a remainder that is packed, only
//!   the rest of each sample padded; every document piece is recorded so training can mask
//!   attention per document; samples are put in a `RandomState(seed)` shuffled order;
//! - `truncate`: one document per sample, cut to `seq_len + 1` tokens or padded;
//! - `trl-bfd` / `trl-bfd-split`: TRL's `pack_dataset` (trl 1.16, strategies `bfd` and
//!   `bfd_split`) exactly, for rows of `seq_length = seq_len + 1` tokens: each `map` batch of
//!   documents packed on its own (over `num_proc` contiguous shards, as `datasets` splits them),
//!   longer documents truncated (the rest dropped) or split into row-sized fragments, the same
//!   best fit and tie-breaking, bins in creation order (no shuffle). Rows are padded here; the
//!   pieces are TRL's `seq_lengths`.
//!
//! Documents from a token stream are first written as `DIR/documents.{bin,idx}`.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use openseek_common::{AtomicOutputs, Failure};
use openseek_shards::indexed::IndexedDataset;

use crate::array::{write_npy, IndexArray};
use crate::rng::RandomState;
use crate::store::{self, DatasetRecord, Manifest, PackingRecord};

/// A packed sample: pieces (sequence, offset, length) of one dataset.
pub type Bin = Vec<(u64, u64, u64)>;

/// Packing result plus its statistics.
pub struct Packed {
    pub samples: Vec<Bin>,
    pub record: PackingRecord,
}

/// Best fit decreasing of `items` (sequence, offset, length ≤ `cap`): longest first (a stable
/// sort: ties in the order given), each into the bin with the least room that holds it (the
/// oldest of those with equal room), else a new bin; bins in creation order. TRL's `_pack_bfd`
/// with its segment tree and `space_to_bin` queues decides the same.
fn best_fit(mut items: Vec<(u64, u64, u64)>, cap: u64) -> Vec<Bin> {
    items.sort_by_key(|it| std::cmp::Reverse(it.2));
    let mut bins: Vec<(Bin, u64)> = Vec::new();
    // remaining room -> bins with exactly that much room, oldest first.
    let mut by_room: BTreeMap<u64, VecDeque<usize>> = BTreeMap::new();
    for it in items {
        let found = by_room.range(it.2..).next().map(|(&room, _)| room);
        let b = match found {
            Some(room) => {
                let queue = by_room.get_mut(&room).unwrap();
                let b = queue.pop_front().unwrap();
                if queue.is_empty() {
                    by_room.remove(&room);
                }
                b
            }
            None => {
                bins.push((Vec::new(), cap));
                bins.len() - 1
            }
        };
        bins[b].0.push(it);
        bins[b].1 -= it.2;
        if bins[b].1 > 0 {
            by_room.entry(bins[b].1).or_default().push_back(b);
        }
    }
    bins.into_iter().map(|(b, _)| b).collect()
}

/// Documents longer than a row: split into row-sized fragments (the last one shorter), or cut
/// to one row with the rest dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Split,
    Truncate,
}

/// What packing took from the documents: (documents, tokens, documents longer than a row,
/// tokens dropped).
#[derive(Default)]
struct Taken {
    documents: u64,
    tokens: u64,
    long: u64,
    dropped: u64,
}

/// The pieces of sequence `s` of `len` tokens for rows of `cap` tokens, in order.
fn pieces_of(s: u64, len: u64, cap: u64, overflow: Overflow, taken: &mut Taken, out: &mut Vec<(u64, u64, u64)>) {
    taken.documents += 1;
    taken.tokens += len;
    if len > cap {
        taken.long += 1;
    }
    match overflow {
        Overflow::Split => {
            let mut at = 0;
            while at < len {
                let piece = cap.min(len - at);
                out.push((s, at, piece));
                at += piece;
            }
        }
        Overflow::Truncate => {
            if len > 0 {
                out.push((s, 0, len.min(cap)));
            }
            taken.dropped += len.saturating_sub(cap);
        }
    }
}

fn packed(strategy: &str, samples: Vec<Bin>, taken: Taken, cap: u64) -> Packed {
    let padding: u64 = samples.iter().map(|b| cap - b.iter().map(|p| p.2).sum::<u64>()).sum();
    let n = samples.len() as u64;
    Packed {
        samples,
        record: PackingRecord {
            strategy: strategy.into(),
            documents: taken.documents,
            document_tokens: taken.tokens,
            split_documents: if strategy.ends_with("split") || strategy == "bfd" { taken.long } else { 0 },
            truncated_tokens: taken.dropped,
            padding_tokens: padding,
            padding_fraction: if n == 0 { 0.0 } else { padding as f64 / (n * cap) as f64 },
            batch_size: None,
            num_proc: None,
        },
    }
}

/// Best-fit decreasing over the sequences `range` of `lengths`, capacity `seq_len + 1`: longer
/// documents split, the samples shuffled with `RandomState(seed)`.
pub fn best_fit_decreasing(lengths: &[u32], range: std::ops::Range<u32>, seq_len: u32, seed: u32) -> Packed {
    let cap = seq_len as u64 + 1;
    let mut taken = Taken::default();
    let mut items = Vec::new();
    for s in range {
        pieces_of(s as u64, lengths[s as usize] as u64, cap, Overflow::Split, &mut taken, &mut items);
    }
    let mut samples = best_fit(items, cap);
    RandomState::new(seed).shuffle(&mut samples);
    packed("bfd", samples, taken, cap)
}

/// TRL's `pack_dataset(dataset, seq_length=seq_len + 1, strategy="bfd" | "bfd_split",
/// map_kwargs={"batch_size": batch_size, "num_proc": num_proc})` over the sequences `range`:
/// `datasets` splits the rows into `num_proc` contiguous shards (the first `n % num_proc` one row
/// longer), each shard is mapped in batches of `batch_size` rows, and each batch is packed on
/// its own (empty documents left out); the bins of all batches in order.
pub fn trl_best_fit_decreasing(
    lengths: &[u32],
    range: std::ops::Range<u32>,
    seq_len: u32,
    overflow: Overflow,
    batch_size: usize,
    num_proc: usize,
) -> Packed {
    let cap = seq_len as u64 + 1;
    let rows: Vec<u32> = range.collect();
    let shards = num_proc.clamp(1, rows.len().max(1));
    let (div, rem) = (rows.len() / shards, rows.len() % shards);
    let mut taken = Taken::default();
    let mut samples = Vec::new();
    for shard in 0..shards {
        let start = div * shard + shard.min(rem);
        let end = start + div + usize::from(shard < rem);
        for batch in rows[start..end].chunks(batch_size.max(1)) {
            let mut items = Vec::new();
            for &s in batch {
                pieces_of(s as u64, lengths[s as usize] as u64, cap, overflow, &mut taken, &mut items);
            }
            samples.extend(best_fit(items, cap));
        }
    }
    let strategy = if overflow == Overflow::Split { "trl-bfd-split" } else { "trl-bfd" };
    let mut p = packed(strategy, samples, taken, cap);
    p.record.batch_size = Some(batch_size as u64);
    p.record.num_proc = Some(shards as u64);
    p
}

/// One document per sample, cut to `seq_len + 1` tokens or padded; empty documents are skipped.
pub fn truncate(lengths: &[u32], range: std::ops::Range<u32>, seq_len: u32) -> Packed {
    let cap = seq_len as u64 + 1;
    let mut taken = Taken::default();
    let mut samples = Vec::new();
    for s in range {
        let mut pieces = Vec::new();
        pieces_of(s as u64, lengths[s as usize] as u64, cap, Overflow::Truncate, &mut taken, &mut pieces);
        if !pieces.is_empty() {
            samples.push(pieces);
        }
    }
    packed("truncate", samples, taken, cap)
}

/// Write a packed store over the dataset at `prefix` (`outputs` may already hold the dataset's
/// own files, when they were made from a stream).
#[allow(clippy::too_many_arguments)]
pub fn write_packed(
    mut outputs: AtomicOutputs,
    dir: &Path,
    prefix: &Path,
    shard: &IndexedDataset,
    range: std::ops::Range<u32>,
    packed: Packed,
    seq_len: u32,
    seed: u32,
    pad_token: Option<u32>,
    eod_token: Option<u32>,
    provenance: Option<serde_json::Value>,
) -> Result<Manifest, Failure> {
    let mut offsets = Vec::with_capacity(packed.samples.len() + 1);
    let mut rows = Vec::new();
    offsets.push(0i64);
    for b in &packed.samples {
        for &(s, o, l) in b {
            rows.extend_from_slice(&[0i64, s as i64, o as i64, l as i64]);
        }
        offsets.push((rows.len() / 4) as i64);
    }
    let put = |outputs: &mut AtomicOutputs, name: &str, a: &IndexArray, cols: usize| -> Result<(), Failure> {
        let path = dir.join(name);
        let f = outputs.create(&path)?;
        let mut w = std::io::BufWriter::new(f);
        write_npy(&mut w, a, cols)
            .and_then(|()| std::io::Write::flush(&mut w))
            .map_err(|e| Failure::io(format!("{}: cannot write: {e}", path.display())))
    };
    put(&mut outputs, store::SAMPLE_OFFSETS, &IndexArray::I64(offsets), 1)?;
    put(&mut outputs, store::PIECES, &IndexArray::I64(rows), 4)?;
    let n = packed.samples.len() as u64;
    let used: u64 = n;
    let manifest = Manifest {
        format: store::FORMAT.into(),
        version: store::VERSION,
        kind: "packed".into(),
        name: None,
        seq_len,
        seed,
        split: "1,0,0".into(),
        split_name: "train".into(),
        num_samples: n,
        datasets: vec![DatasetRecord {
            label: prefix.display().to_string(),
            prefix: std::path::absolute(prefix).unwrap_or_else(|_| prefix.to_path_buf()),
            sequences: shard.num_sequences() as u64,
            document_range: [range.start as u64, range.end as u64],
            tokens_available: packed.record.document_tokens,
            samples_requested: n,
            samples_built: n,
            samples_used: used,
            epochs: 1,
            separate_final_epoch: false,
            epochs_used: 1.0,
            share: 1.0,
        }],
        stages: vec![],
        blended: false,
        eod_token,
        pad_token,
        packing: Some(packed.record),
        source: None,
        provenance,
    };
    crate::mix::write_manifest(&mut outputs, dir, &manifest)?;
    outputs.commit()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &Packed, lengths: &[u32], cap: u64) {
        // Every token of every document is in exactly one piece.
        let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); lengths.len()];
        for b in &p.samples {
            assert!(b.iter().map(|x| x.2).sum::<u64>() <= cap);
            for &(s, o, l) in b {
                covered[s as usize].push((o, l));
            }
        }
        for (s, mut c) in covered.into_iter().enumerate() {
            c.sort();
            let mut at = 0;
            for (o, l) in c {
                assert_eq!(o, at, "document {s}");
                at += l;
            }
            assert_eq!(at, lengths[s] as u64, "document {s}");
        }
    }

    #[test]
    fn bfd_keeps_documents_whole_and_pads_little() {
        let lengths: Vec<u32> = (0..500).map(|i| 1 + ((i * 7919) % 97) as u32).chain([300, 33, 34, 0]).collect();
        let p = best_fit_decreasing(&lengths, 0..lengths.len() as u32, 32, 1);
        check(&p, &lengths, 33);
        let total: u64 = lengths.iter().map(|&l| l as u64).sum();
        let lower = total.div_ceil(33);
        assert!((p.samples.len() as u64) < lower + lower / 20 + 2, "{} bins for lower bound {lower}", p.samples.len());
        assert_eq!(p.record.padding_tokens, p.samples.len() as u64 * 33 - total);
        assert_eq!(p.record.split_documents, lengths.iter().filter(|&&l| l > 33).count() as u64);
    }

    #[test]
    fn truncate_cuts_and_pads() {
        let p = truncate(&[5, 40, 0, 33], 0..4, 32);
        assert_eq!(p.samples, vec![vec![(0, 0, 5)], vec![(1, 0, 33)], vec![(3, 0, 33)]]);
        assert_eq!(p.record.truncated_tokens, 7);
        assert_eq!(p.record.padding_tokens, 28);
    }
}
