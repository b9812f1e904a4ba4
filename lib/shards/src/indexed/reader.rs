//! Reading an indexed dataset: both files memory-mapped, every structural fact of the `.idx`
//! checked against the `.bin` at `open`, sequences handed out as zero-copy `Tokens`.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use openseek_common::Failure;

use super::dtype::{DType, Tokens};
use super::{bin_path, idx_path, ShardSummary, HEADER_LEN, MAGIC};

/// An opened `PREFIX.idx` + `PREFIX.bin` pair. Cheap to query: lengths, pointers and document
/// indices are read from the mapped `.idx` on demand (they sit at unaligned offsets, so each
/// accessor decodes little-endian bytes rather than handing out slices).
pub struct IndexedDataset {
    prefix: PathBuf,
    idx_path: PathBuf,
    bin_path: PathBuf,
    idx: Mmap,
    bin: Mmap,
    dtype: DType,
    sequences: usize,
    /// Entries in document_indices (documents + 1).
    doc_entries: usize,
    pointers_at: usize,
    docs_at: usize,
    modes_at: Option<usize>,
    total_tokens: u64,
}

fn map(path: &Path, what: &str) -> Result<Mmap, Failure> {
    let file = File::open(path).map_err(|e| Failure::io_at(path, &format!("cannot open the {what}"), &e))?;
    // SAFETY: the mapping is read-only. Like every reader of mapped files (numpy.memmap in
    // Megatron included) we rely on nobody truncating or rewriting the shard while it is open;
    // our own writers never do that (they write a temporary and rename it into place).
    unsafe { Mmap::map(&file) }.map_err(|e| Failure::io_at(path, &format!("cannot memory-map the {what}"), &e))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl IndexedDataset {
    /// Open `PREFIX.idx` and `PREFIX.bin` (the prefix is taken as is, like Megatron: the
    /// extensions are appended) and validate the pair; see the module doc for what is checked.
    pub fn open(prefix: &Path) -> Result<Self, Failure> {
        let idx_path = idx_path(prefix);
        let bin_path = bin_path(prefix);
        for (path, other) in [(&idx_path, "index"), (&bin_path, "token data")] {
            if !path.exists() {
                let hint = match prefix.extension().and_then(|e| e.to_str()) {
                    Some("bin" | "idx") => format!(
                        "; the prefix {} already ends in .{}: pass the prefix without the extension",
                        prefix.display(),
                        prefix.extension().unwrap().to_string_lossy()
                    ),
                    _ => String::new(),
                };
                return Err(Failure::no_input(format!(
                    "{}: the {other} file of the indexed dataset {} does not exist (a shard is a .bin and an .idx with the same prefix){hint}",
                    path.display(),
                    prefix.display()
                )));
            }
        }
        let idx = map(&idx_path, "index (.idx)")?;
        let bin = map(&bin_path, "token data (.bin)")?;
        let at = |msg: String| Failure::data(format!("{}: {msg}", idx_path.display()));

        // Header.
        let head = &idx[..idx.len().min(MAGIC.len())];
        if head != &MAGIC[..head.len()] {
            return Err(at(format!(
                "bad magic b\"{}\" (expected b\"{}\"): this is not a Megatron indexed-dataset index (MMIDIDX)",
                head.escape_ascii(),
                MAGIC.escape_ascii(),
            )));
        }
        if idx.len() < HEADER_LEN {
            return Err(at(format!(
                "truncated header: the file is {} bytes but the header alone is {HEADER_LEN}: an interrupted write or download? re-create or re-fetch it",
                idx.len()
            )));
        }
        let version = u64_at(&idx, 9);
        if version != 1 {
            return Err(at(format!("index version {version}, but only version 1 exists: the file is corrupt or not from Megatron")));
        }
        let code = idx[17];
        let dtype = DType::from_code(code).ok_or_else(|| {
            at(format!("unknown dtype code {code} (Megatron knows 1..=8: uint8, int8, int16, int32, int64, float64, float32, uint16): the file is corrupt"))
        })?;
        let n = u64_at(&idx, 18);
        let d = u64_at(&idx, 26);

        // Size: header + i32[N] + i64[N] + i64[D] (+ i8[N] sequence modes).
        let expected = n
            .checked_mul(12)
            .and_then(|x| d.checked_mul(8).and_then(|y| x.checked_add(y)))
            .and_then(|x| x.checked_add(HEADER_LEN as u64))
            .filter(|&x| x <= usize::MAX as u64 / 2);
        let found = idx.len() as u64;
        let expected = expected.ok_or_else(|| {
            at(format!("the header claims {n} sequences and {d} document indices, which cannot fit any file ({found} bytes here): the header is corrupt"))
        })?;
        let has_modes = if found == expected {
            false
        } else if n > 0 && found == expected + n {
            true
        } else {
            return Err(at(format!(
                "size mismatch: {n} sequences and {d} document indices need {expected} bytes (or {} with per-sequence modes), but the file has {found}: {}",
                expected + n,
                if found < expected { "truncated download or interrupted write? re-fetch or re-create it" } else { "trailing bytes: the file is corrupt or not from a Megatron version we know" }
            )));
        };
        if d == 0 {
            return Err(at("document_indices is empty, but it always starts with 0 (one entry per document plus one): the index is corrupt".into()));
        }
        let (n, d) = (n as usize, d as usize);
        let lengths_at = HEADER_LEN;
        let pointers_at = lengths_at + 4 * n;
        let docs_at = pointers_at + 8 * n;
        let modes_at = has_modes.then_some(docs_at + 8 * d);

        // Lengths and pointers: non-negative, cumulative from 0, no overflow.
        let item = dtype.size() as u64;
        let mut expected_ptr: u64 = 0;
        let mut total_tokens: u64 = 0;
        for i in 0..n {
            let len = i32_at(&idx, lengths_at + 4 * i);
            if len < 0 {
                return Err(at(format!("sequence {i} has negative length {len}: the index is corrupt")));
            }
            let ptr = i64_at(&idx, pointers_at + 8 * i);
            if ptr < 0 || ptr as u64 != expected_ptr {
                return Err(at(if i == 0 {
                    format!("the first sequence pointer is {ptr}, but it must be 0: the index is corrupt")
                } else {
                    format!(
                        "sequence pointer {i} is {ptr}, but the pointers must be cumulative: sequence {} starts at byte {} and holds {} tokens of {} bytes, so sequence {i} must start at {expected_ptr}: the index is corrupt",
                        i - 1,
                        i64_at(&idx, pointers_at + 8 * (i - 1)),
                        i32_at(&idx, lengths_at + 4 * (i - 1)),
                        item
                    )
                }));
            }
            total_tokens += len as u64;
            expected_ptr = (len as u64)
                .checked_mul(item)
                .and_then(|b| expected_ptr.checked_add(b))
                .filter(|&p| p <= i64::MAX as u64)
                .ok_or_else(|| at(format!("sequence {i} ends past the largest byte offset an index can hold (2^63): the index is corrupt")))?;
        }
        let bin_len = bin.len() as u64;
        if expected_ptr != bin_len {
            let what = if bin_len < expected_ptr {
                "the .bin is shorter than the index says: truncated download or interrupted write? re-fetch or re-create it"
            } else {
                "the .bin is longer than the index says: the .idx may be stale or belong to another .bin; re-create the pair"
            };
            return Err(Failure::data(format!(
                "{}: the index {} describes {total_tokens} {} tokens = {expected_ptr} bytes, but the file has {bin_len} bytes: {what}",
                bin_path.display(),
                idx_path.display(),
                dtype.name()
            )));
        }

        // Document indices: start at 0, never decrease, end at N.
        let first = i64_at(&idx, docs_at);
        if first != 0 {
            return Err(at(format!("document_indices starts with {first}, but it must start with 0: the index is corrupt")));
        }
        let mut prev = 0i64;
        for k in 1..d {
            let v = i64_at(&idx, docs_at + 8 * k);
            if v < prev {
                return Err(at(format!(
                    "document_indices decreases at entry {k} ({prev} then {v}); documents are runs of consecutive sequences, so the entries never decrease: the index is corrupt"
                )));
            }
            prev = v;
        }
        if prev != n as i64 {
            return Err(at(format!(
                "document_indices ends at {prev}, but it must end at the sequence count {n} (every sequence belongs to a document): the index is corrupt or was written without a final end_document"
            )));
        }

        Ok(IndexedDataset {
            prefix: prefix.to_path_buf(),
            idx_path,
            bin_path,
            idx,
            bin,
            dtype,
            sequences: n,
            doc_entries: d,
            pointers_at,
            docs_at,
            modes_at,
            total_tokens,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }
    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }
    pub fn bin_path(&self) -> &Path {
        &self.bin_path
    }
    pub fn num_sequences(&self) -> usize {
        self.sequences
    }
    /// Documents: `document_indices.len() - 1`.
    pub fn num_documents(&self) -> usize {
        self.doc_entries - 1
    }
    pub fn total_tokens(&self) -> u64 {
        self.total_tokens
    }
    pub fn bin_bytes(&self) -> u64 {
        self.bin.len() as u64
    }
    pub fn idx_bytes(&self) -> u64 {
        self.idx.len() as u64
    }

    fn check_seq(&self, i: usize) {
        assert!(i < self.sequences, "sequence {i} out of range: {} has {} sequences", self.prefix.display(), self.sequences);
    }

    /// Tokens in sequence `i`. Panics if `i` is out of range (as do the other per-sequence accessors).
    pub fn sequence_length(&self, i: usize) -> usize {
        self.check_seq(i);
        i32_at(&self.idx, HEADER_LEN + 4 * i) as usize
    }

    /// Byte offset of sequence `i` in the `.bin`.
    pub fn sequence_pointer(&self, i: usize) -> u64 {
        self.check_seq(i);
        i64_at(&self.idx, self.pointers_at + 8 * i) as u64
    }

    /// The tokens of sequence `i`, zero copy.
    pub fn sequence(&self, i: usize) -> Tokens<'_> {
        let start = self.sequence_pointer(i) as usize;
        let end = start + self.sequence_length(i) * self.dtype.size();
        Tokens::from_bytes(self.dtype, &self.bin[start..end])
    }

    /// `length` tokens of sequence `i` from token `offset` (Megatron's `get(idx, offset, length)`).
    /// Panics if the range runs past the end of the sequence.
    pub fn sequence_slice(&self, i: usize, offset: usize, length: usize) -> Tokens<'_> {
        let len = self.sequence_length(i);
        assert!(
            offset.checked_add(length).is_some_and(|end| end <= len),
            "tokens {offset}..{offset}+{length} are outside sequence {i} of {} ({len} tokens)",
            self.prefix.display()
        );
        self.sequence(i).slice(offset..offset + length)
    }

    /// The tokens of the consecutive sequences `range`, as one zero-copy view (they are adjacent
    /// in the `.bin`).
    pub fn sequences_tokens(&self, range: Range<usize>) -> Tokens<'_> {
        assert!(range.start <= range.end && range.end <= self.sequences, "sequences {range:?} out of range ({} sequences)", self.sequences);
        if range.is_empty() {
            return Tokens::from_bytes(self.dtype, &[]);
        }
        let start = self.sequence_pointer(range.start) as usize;
        let last = range.end - 1;
        let end = self.sequence_pointer(last) as usize + self.sequence_length(last) * self.dtype.size();
        Tokens::from_bytes(self.dtype, &self.bin[start..end])
    }

    /// Every token of the shard, zero copy.
    pub fn all_tokens(&self) -> Tokens<'_> {
        Tokens::from_bytes(self.dtype, &self.bin)
    }

    /// Entry `d` of document_indices (`0..=num_documents`): the first sequence of document `d`.
    pub fn document_index(&self, d: usize) -> usize {
        assert!(d < self.doc_entries, "document index {d} out of range: {} has {} entries", self.prefix.display(), self.doc_entries);
        i64_at(&self.idx, self.docs_at + 8 * d) as usize
    }

    /// The sequences of document `doc`.
    pub fn document_sequences(&self, doc: usize) -> Range<usize> {
        assert!(doc < self.num_documents(), "document {doc} out of range: {} has {} documents", self.prefix.display(), self.num_documents());
        self.document_index(doc)..self.document_index(doc + 1)
    }

    /// The document that sequence `i` belongs to.
    pub fn document_of_sequence(&self, i: usize) -> usize {
        self.check_seq(i);
        // Number of entries <= i, minus one; entries are sorted and the last is N > i.
        let (mut lo, mut hi) = (0usize, self.doc_entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.document_index(mid) <= i {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }

    /// The sequence whose tokens hold byte `offset` of the `.bin` (offset < bin_bytes).
    pub fn sequence_at_byte(&self, offset: u64) -> usize {
        assert!(offset < self.bin_bytes(), "byte {offset} is past the end of {}", self.bin_path.display());
        let (mut lo, mut hi) = (0usize, self.sequences);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.sequence_pointer(mid) <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // The last sequence starting at or before `offset` ends after it (the next one, if any,
        // starts after it), so it is not empty and holds the byte.
        lo - 1
    }

    /// Copy of the sequence lengths.
    pub fn sequence_lengths(&self) -> Vec<u32> {
        (0..self.sequences).map(|i| i32_at(&self.idx, HEADER_LEN + 4 * i) as u32).collect()
    }

    /// Copy of the sequence pointers.
    pub fn sequence_pointers(&self) -> Vec<u64> {
        (0..self.sequences).map(|i| i64_at(&self.idx, self.pointers_at + 8 * i) as u64).collect()
    }

    /// Copy of document_indices (`num_documents + 1` entries).
    pub fn document_indices(&self) -> Vec<u64> {
        (0..self.doc_entries).map(|k| i64_at(&self.idx, self.docs_at + 8 * k) as u64).collect()
    }

    /// Whether the `.idx` carries the trailing i8[N] sequence modes (multimodal datasets).
    pub fn has_sequence_modes(&self) -> bool {
        self.modes_at.is_some()
    }

    /// Mode of sequence `i`, if the index has modes.
    pub fn sequence_mode(&self, i: usize) -> Option<i8> {
        self.check_seq(i);
        self.modes_at.map(|at| self.idx[at + i] as i8)
    }

    /// Counts for reports and manifests.
    pub fn summary(&self) -> ShardSummary {
        ShardSummary {
            prefix: self.prefix.clone(),
            dtype: self.dtype,
            sequences: self.sequences as u64,
            documents: self.num_documents() as u64,
            tokens: self.total_tokens,
            bin_bytes: self.bin_bytes(),
            idx_bytes: self.idx_bytes(),
        }
    }
}

impl std::fmt::Debug for IndexedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedDataset")
            .field("prefix", &self.prefix)
            .field("dtype", &self.dtype)
            .field("sequences", &self.sequences)
            .field("documents", &self.num_documents())
            .field("tokens", &self.total_tokens)
            .finish()
    }
}
