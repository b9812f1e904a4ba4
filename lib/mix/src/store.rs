//! The sample store: a directory that says which tokens make each training sample, memory-mapped
//! for reading, with a JSON manifest. Samples are never copied out of the shards: the store holds
//! indices into the Megatron indexed datasets (`PREFIX.bin/.idx`) it names.
//!
//! Layout (all `.npy` files are numpy format 1.0, little-endian, C order; numpy and Megatron load
//! them as they are):
//!
//! ```text
//! DIR/manifest.json                      written last: a store without it is incomplete
//! kind "megatron" (os-mix, os-pack --strategy megatron):
//!   DIR/dNNN_document_index.npy          int32 [epochs*documents]   Megatron GPTDataset document index
//!   DIR/dNNN_sample_index.npy            int32|int64 [samples+1, 2] (document-index position, token offset)
//!   DIR/dNNN_shuffle_index.npy           uint32|int64 [samples]     sample permutation
//!   DIR/blend_dataset_index.npy          int16 [N]  dataset of blended sample i      (absent: one dataset,
//!   DIR/blend_dataset_sample_index.npy   int64 [N]  sample within that dataset        sample i is its sample i)
//! kind "packed" (os-pack --strategy bfd|truncate):
//!   DIR/sample_offsets.npy               int64 [N+1]  sample i's pieces are rows offsets[i]..offsets[i+1]
//!   DIR/pieces.npy                       int64 [P, 4] (dataset, sequence, token offset, length)
//!                                        each piece is one document's tokens; the sample's remaining
//!                                        seq_len+1 - sum(length) positions are padding (pad_token)
//!   DIR/documents.bin, documents.idx     the documents themselves when the input was a token stream
//! ```
//! The dNNN files are per dataset `NNN` (the manifest's `datasets[NNN]`, zero-padded to 3 digits),
//! byte-identical to the arrays megatron-core caches for the same inputs. Blended sample `i` is
//! sample `blend_dataset_sample_index[i]` of dataset `blend_dataset_index[i]`; dataset sample `j`
//! is row `shuffle_index[j]` of the sample index, whose rows `r` and `r+1` bound the tokens:
//! from document `document_index[sample_index[r,0]]` at offset `sample_index[r,1]` through
//! document `document_index[sample_index[r+1,0]]` at offset `sample_index[r+1,1]`, inclusive
//! (`seq_len + 1` tokens; consecutive samples share one token). A "document" here is a sequence
//! of the `.idx`, as in Megatron.
//!
//! The manifest (`Manifest` below) records the format and version, kind, seq_len, seed, split,
//! the number of samples, each dataset (prefix, document range used, tokens, samples requested,
//! built and used, epochs), curriculum stages with their sample ranges, packing statistics and
//! provenance.

use std::path::{Path, PathBuf};

use openseek_common::Failure;
use openseek_shards::indexed::IndexedDataset;
use serde::{Deserialize, Serialize};

use crate::array::NpyMap;

pub const FORMAT: &str = "openseek-sample-store";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const BLEND_DATASET_INDEX: &str = "blend_dataset_index.npy";
pub const BLEND_DATASET_SAMPLE_INDEX: &str = "blend_dataset_sample_index.npy";
pub const SAMPLE_OFFSETS: &str = "sample_offsets.npy";
pub const PIECES: &str = "pieces.npy";

pub fn dataset_file(d: usize, what: &str) -> String {
    format!("d{d:03}_{what}.npy")
}

/// The documents os-pack writes into its store when its input is a token stream.
pub const STREAM_DOCUMENTS: &str = "documents";

/// Whether `name` is one of the files a store is made of.
fn is_store_file(name: &str) -> bool {
    let dataset_file = name.len() > 5
        && name.starts_with('d')
        && name.ends_with(".npy")
        && name.as_bytes()[1..].iter().take_while(|b| b.is_ascii_digit()).count() >= 3
        && name.contains('_');
    dataset_file
        || [MANIFEST, BLEND_DATASET_INDEX, BLEND_DATASET_SAMPLE_INDEX, SAMPLE_OFFSETS, PIECES].contains(&name)
        || name == format!("{STREAM_DOCUMENTS}.bin")
        || name == format!("{STREAM_DOCUMENTS}.idx")
}

/// Refuse a store already in `dir` unless `force` (exit 73, like every tool's existing output);
/// returns its files (none when `dir` does not exist). Changes nothing.
pub fn check_output(dir: &Path, force: bool) -> Result<Vec<String>, Failure> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut old: Vec<String> = entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| is_store_file(n)).collect();
    old.sort();
    if !old.is_empty() && !force {
        let more = if old.len() > 4 { format!(" and {} more", old.len() - 4) } else { String::new() };
        return Err(openseek_common::output::cannot_create(
            dir,
            format!("it already holds a sample store ({}{more}); pass --force to replace it", old[..old.len().min(4)].join(", ")),
        ));
    }
    Ok(old)
}

/// Make `dir` ready for a new store: created when missing; a store already in it is refused
/// without `force` (`check_output`) and removed with it (the manifest first, so a half-removed
/// store never looks complete), so no file of the old store (`d001_*.npy` of a blend of more
/// datasets) is left beside the new one. Temporaries of a killed earlier run are removed too.
/// Files that are not a store's are left alone.
pub fn prepare_output(dir: &Path, force: bool) -> Result<(), Failure> {
    let mut old = check_output(dir, force)?;
    openseek_common::output::create_dir(dir)?;
    old.sort_by_key(|n| n != MANIFEST);
    for name in &old {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|e| openseek_common::output::cannot_create(&path, format!("cannot remove the old file: {e}")))?;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| openseek_common::output::cannot_create(dir, e))?;
    for name in entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)) {
        let temporary_of = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).map(|(n, _)| n);
        if let Some(n) = temporary_of.filter(|n| is_store_file(n)) {
            openseek_common::AtomicOutputs::remove_stale_temporaries(&dir.join(n));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// "megatron" or "packed".
    pub kind: String,
    pub name: Option<String>,
    pub seq_len: u32,
    pub seed: u32,
    pub split: String,
    /// Which split this store holds: "train", "valid" or "test".
    pub split_name: String,
    pub num_samples: u64,
    pub datasets: Vec<DatasetRecord>,
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    /// Whether blend_* files exist.
    pub blended: bool,
    pub eod_token: Option<u32>,
    pub pad_token: Option<u32>,
    pub packing: Option<PackingRecord>,
    pub source: Option<serde_json::Value>,
    pub provenance: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub label: String,
    /// The prefix on disk, absolute.
    pub prefix: PathBuf,
    pub sequences: u64,
    /// Sequences of the split used: [begin, end).
    pub document_range: [u64; 2],
    pub tokens_available: u64,
    /// Samples the GPT index was asked for (targets plus Megatron's surplus).
    pub samples_requested: u64,
    pub samples_built: u64,
    /// Samples the blend takes from this dataset.
    pub samples_used: u64,
    pub epochs: u32,
    pub separate_final_epoch: bool,
    /// samples_used * seq_len / tokens_available.
    pub epochs_used: f64,
    /// samples_used / num_samples.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    /// Blended samples [start, end).
    pub start: u64,
    pub end: u64,
    /// (dataset number, weight as given) for each of the stage's datasets.
    pub weights: Vec<(usize, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackingRecord {
    pub strategy: String,
    pub documents: u64,
    pub document_tokens: u64,
    pub split_documents: u64,
    pub truncated_tokens: u64,
    pub padding_tokens: u64,
    /// padding tokens / (samples * (seq_len + 1)).
    pub padding_fraction: f64,
    /// TRL strategies: the `map` batch size and number of processes the packing reproduces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_proc: Option<u64>,
}

/// One run of a document's tokens inside a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Piece {
    pub dataset: u32,
    pub sequence: u64,
    pub offset: u64,
    pub len: u64,
}

/// Where sample `i` of the store comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleSource {
    pub index: u64,
    pub dataset: u32,
    /// The sample's number within its dataset (before the shuffle index).
    pub dataset_sample: u64,
    pub pieces: Vec<Piece>,
    /// Padding positions at the end, to reach seq_len + 1.
    pub padding: u64,
}

struct GptMaps {
    document: NpyMap,
    sample: NpyMap,
    shuffle: NpyMap,
}

enum Kind {
    Megatron { blend: Option<(NpyMap, NpyMap)>, per: Vec<GptMaps> },
    Packed { offsets: NpyMap, pieces: NpyMap },
}

/// An opened store: the manifest, the mapped index files and the shards they point into.
pub struct SampleStore {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<IndexedDataset>,
    kind: Kind,
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, Failure> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::io_at(&path, "cannot read the store manifest (is this an os-mix/os-pack output directory, and did that run finish?)", &e)
    })?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Failure::data(format!("{}: {e}", path.display())))?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(Failure::data(format!(
            "{}: format {:?} version {}; this tool reads {FORMAT:?} version {VERSION}",
            path.display(),
            m.format,
            m.version
        )));
    }
    Ok(m)
}

impl SampleStore {
    pub fn open(dir: &Path) -> Result<Self, Failure> {
        let manifest = read_manifest(dir)?;
        let mut shards = Vec::new();
        for (d, rec) in manifest.datasets.iter().enumerate() {
            let ds = IndexedDataset::open(&rec.prefix).map_err(|e| e.context(format!("store {} dataset {d} ({})", dir.display(), rec.label)))?;
            if ds.num_sequences() as u64 != rec.sequences {
                return Err(Failure::data(format!(
                    "store {}: dataset {d} ({}) has {} sequences now but {} when the store was built; rebuild the store",
                    dir.display(),
                    rec.label,
                    ds.num_sequences(),
                    rec.sequences
                )));
            }
            shards.push(ds);
        }
        let kind = match manifest.kind.as_str() {
            "megatron" => {
                let blend = if manifest.blended {
                    let a = NpyMap::open(&dir.join(BLEND_DATASET_INDEX))?;
                    let b = NpyMap::open(&dir.join(BLEND_DATASET_SAMPLE_INDEX))?;
                    if a.len() as u64 != manifest.num_samples || b.len() as u64 != manifest.num_samples {
                        return Err(Failure::data(format!("store {}: blend index length differs from num_samples", dir.display())));
                    }
                    Some((a, b))
                } else {
                    None
                };
                let mut per = Vec::new();
                for d in 0..manifest.datasets.len() {
                    per.push(GptMaps {
                        document: NpyMap::open(&dir.join(dataset_file(d, "document_index")))?,
                        sample: NpyMap::open(&dir.join(dataset_file(d, "sample_index")))?,
                        shuffle: NpyMap::open(&dir.join(dataset_file(d, "shuffle_index")))?,
                    });
                }
                Kind::Megatron { blend, per }
            }
            "packed" => {
                let offsets = NpyMap::open(&dir.join(SAMPLE_OFFSETS))?;
                let pieces = NpyMap::open(&dir.join(PIECES))?;
                if offsets.len() as u64 != manifest.num_samples + 1 {
                    return Err(Failure::data(format!("store {}: sample_offsets length differs from num_samples + 1", dir.display())));
                }
                Kind::Packed { offsets, pieces }
            }
            other => return Err(Failure::data(format!("store {}: unknown kind {other:?}", dir.display()))),
        };
        Ok(SampleStore { dir: dir.to_path_buf(), manifest, shards, kind })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn len(&self) -> u64 {
        self.manifest.num_samples
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn seq_len(&self) -> u32 {
        self.manifest.seq_len
    }
    pub fn shard(&self, d: usize) -> &IndexedDataset {
        &self.shards[d]
    }

    /// Where sample `i` comes from. Panics if `i >= len()`.
    pub fn source(&self, i: u64) -> SampleSource {
        assert!(i < self.len(), "sample {i} out of range ({} samples)", self.len());
        let want = self.manifest.seq_len as u64 + 1;
        match &self.kind {
            Kind::Megatron { blend, per } => {
                let (d, j) = match blend {
                    Some((a, b)) => (a.get(i as usize) as usize, b.get(i as usize) as u64),
                    None => (0, i),
                };
                let maps = &per[d];
                let row = maps.shuffle.get(j as usize) as usize;
                let shard = &self.shards[d];
                let pieces = crate::gpt::sample_pieces(
                    &|k| maps.document.get(k),
                    &|k| maps.sample.get(k),
                    &|s| shard.sequence_length(s) as i64,
                    row,
                )
                .into_iter()
                .map(|(sequence, offset, len)| Piece { dataset: d as u32, sequence, offset, len })
                .collect::<Vec<_>>();
                let total: u64 = pieces.iter().map(|p| p.len).sum();
                SampleSource { index: i, dataset: d as u32, dataset_sample: j, pieces, padding: want.saturating_sub(total) }
            }
            Kind::Packed { offsets, pieces } => {
                let (a, b) = (offsets.get(i as usize) as usize, offsets.get(i as usize + 1) as usize);
                let list: Vec<Piece> = (a..b)
                    .map(|r| Piece {
                        dataset: pieces.get(4 * r) as u32,
                        sequence: pieces.get(4 * r + 1) as u64,
                        offset: pieces.get(4 * r + 2) as u64,
                        len: pieces.get(4 * r + 3) as u64,
                    })
                    .collect();
                let total: u64 = list.iter().map(|p| p.len).sum();
                let dataset = list.first().map(|p| p.dataset).unwrap_or(0);
                SampleSource { index: i, dataset, dataset_sample: i, pieces: list, padding: want.saturating_sub(total) }
            }
        }
    }

    /// The `seq_len + 1` token ids of sample `i` (padding filled with the pad token, or 0 when the
    /// store has none), with where they came from.
    pub fn sample(&self, i: u64) -> (Vec<u32>, SampleSource) {
        let src = self.source(i);
        let mut tokens = Vec::with_capacity(self.manifest.seq_len as usize + 1);
        for p in &src.pieces {
            let shard = &self.shards[p.dataset as usize];
            tokens.extend(shard.sequence_slice(p.sequence as usize, p.offset as usize, p.len as usize).to_vec_u32());
        }
        let pad = self.manifest.pad_token.unwrap_or(0);
        tokens.extend(std::iter::repeat_n(pad, src.padding as usize));
        (tokens, src)
    }
}
