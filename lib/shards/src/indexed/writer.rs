//! Writing an indexed dataset with the semantics of Megatron's `IndexedDatasetBuilder`
//! (add_item / end_document / add_document / add_index / finalize): tokens stream into the
//! `.bin` temporary, per-sequence lengths stay in memory, and `finish` writes the `.idx`.
//! Both files go through `AtomicOutputs`, the `.idx` registered after the `.bin`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, Failure};

use super::dtype::{DType, Tokens};
use super::reader::IndexedDataset;
use super::{bin_path, idx_path, ShardSummary, MAGIC};

const BUFFER: usize = 4 << 20;

/// What a finished writer produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteSummary {
    pub dtype: DType,
    pub sequences: u64,
    pub documents: u64,
    pub tokens: u64,
    pub bin_bytes: u64,
}

/// Streaming writer of `PREFIX.bin` + `PREFIX.idx`.
pub struct IndexedDatasetWriter {
    prefix: PathBuf,
    bin_path: PathBuf,
    dtype: DType,
    bin: BufWriter<File>,
    scratch: Vec<u8>,
    lengths: Vec<i32>,
    document_indices: Vec<i64>,
    modes: Option<Vec<i8>>,
    tokens: u64,
    bin_bytes: u64,
}

impl IndexedDatasetWriter {
    /// Start a dataset at `prefix` (registers `PREFIX.bin` with `outputs`).
    pub fn create(prefix: &Path, dtype: DType, outputs: &mut AtomicOutputs) -> Result<Self, Failure> {
        Self::create_inner(prefix, dtype, false, outputs)
    }

    /// Like `create`, for a multimodal dataset: the `.idx` gets the trailing i8 sequence modes
    /// (Megatron's `IndexedDatasetBuilder(..., multimodal=True)`).
    pub fn create_multimodal(prefix: &Path, dtype: DType, outputs: &mut AtomicOutputs) -> Result<Self, Failure> {
        Self::create_inner(prefix, dtype, true, outputs)
    }

    fn create_inner(prefix: &Path, dtype: DType, multimodal: bool, outputs: &mut AtomicOutputs) -> Result<Self, Failure> {
        let bin_path = bin_path(prefix);
        let file = outputs.create(&bin_path)?;
        Ok(IndexedDatasetWriter {
            prefix: prefix.to_path_buf(),
            bin_path,
            dtype,
            bin: BufWriter::with_capacity(BUFFER, file),
            scratch: Vec::new(),
            lengths: Vec::new(),
            document_indices: vec![0],
            modes: multimodal.then(Vec::new),
            tokens: 0,
            bin_bytes: 0,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }
    /// Sequences added so far.
    pub fn num_sequences(&self) -> usize {
        self.lengths.len()
    }
    /// Documents ended so far.
    pub fn num_documents(&self) -> usize {
        self.document_indices.len() - 1
    }
    pub fn total_tokens(&self) -> u64 {
        self.tokens
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.bin.write_all(bytes).map_err(|e| Failure::io(format!("{}: cannot write: {e}", self.bin_path.display())))?;
        self.bin_bytes += bytes.len() as u64;
        Ok(())
    }

    fn push_length(&mut self, tokens: usize, mode: i8) -> Result<(), Failure> {
        let len = i32::try_from(tokens).map_err(|_| {
            Failure::data(format!(
                "{}: a sequence of {tokens} tokens is longer than the index can record (2^31 - 1); split it",
                self.bin_path.display()
            ))
        })?;
        self.lengths.push(len);
        if let Some(modes) = &mut self.modes {
            modes.push(mode);
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// Append one sequence (Megatron's `add_item`). Fails, writing nothing, if a token id does
    /// not fit the dtype.
    pub fn add_sequence(&mut self, tokens: &[u32]) -> Result<(), Failure> {
        self.add_sequence_with_mode(tokens, 0)
    }

    /// `add_sequence` with a mode (recorded only by a multimodal writer).
    pub fn add_sequence_with_mode(&mut self, tokens: &[u32], mode: i8) -> Result<(), Failure> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let encoded = self.dtype.encode_u32(tokens, &mut scratch).map_err(|e| {
            e.context(format!("{}: sequence {}", self.bin_path.display(), self.lengths.len()))
        });
        let result = encoded.and_then(|()| self.write_bytes(&scratch)).and_then(|()| self.push_length(tokens.len(), mode));
        self.scratch = scratch;
        result
    }

    /// Append one sequence already in this writer's dtype: a raw copy of its bytes.
    pub fn add_sequence_tokens(&mut self, tokens: Tokens<'_>) -> Result<(), Failure> {
        if tokens.dtype() != self.dtype {
            return Err(Failure::data(format!(
                "{}: cannot add {} tokens to a {} dataset; convert them first",
                self.bin_path.display(),
                tokens.dtype(),
                self.dtype
            )));
        }
        self.write_bytes(tokens.as_bytes())?;
        self.push_length(tokens.len(), 0)
    }

    /// Close the current document: document_indices gets the current sequence count.
    pub fn end_document(&mut self) {
        self.document_indices.push(self.lengths.len() as i64);
    }

    /// One sequence that is a whole document (`add_sequence` + `end_document`).
    pub fn add_document(&mut self, tokens: &[u32]) -> Result<(), Failure> {
        self.add_sequence(tokens)?;
        self.end_document();
        Ok(())
    }

    /// Append a whole dataset (Megatron's `add_index`): its sequences and documents follow ours,
    /// its `.bin` is copied raw. The dtypes must match. A multimodal writer needs a dataset with
    /// modes; a plain writer drops them, as Megatron does.
    pub fn add_dataset(&mut self, dataset: &IndexedDataset) -> Result<(), Failure> {
        if dataset.dtype() != self.dtype {
            return Err(Failure::data(format!(
                "{}: dtype {} differs from the output's {}; datasets can only be concatenated in one dtype",
                dataset.prefix().display(),
                dataset.dtype(),
                self.dtype
            )));
        }
        if self.modes.is_some() && !dataset.has_sequence_modes() && dataset.num_sequences() > 0 {
            return Err(Failure::data(format!(
                "{}: has no sequence modes, but the output is multimodal",
                dataset.idx_path().display()
            )));
        }
        let offset = self.lengths.len() as i64;
        self.write_bytes(dataset.all_tokens().as_bytes())?;
        let lengths = dataset.sequence_lengths();
        for (i, &len) in lengths.iter().enumerate() {
            self.push_length(len as usize, dataset.sequence_mode(i).unwrap_or(0))?;
        }
        for k in 1..=dataset.num_documents() {
            self.document_indices.push(offset + dataset.document_index(k) as i64);
        }
        Ok(())
    }

    /// Flush the `.bin` and write the `.idx` (registered with `outputs` after the `.bin`, so it is
    /// renamed into place last). The caller commits `outputs`. Sequences added after the last
    /// `end_document` are an error (Megatron would write an index its own reader rejects).
    pub fn finish(self, outputs: &mut AtomicOutputs) -> Result<WriteSummary, Failure> {
        let IndexedDatasetWriter { prefix, bin_path, dtype, bin, lengths, document_indices, modes, tokens, bin_bytes, .. } = self;
        let last = *document_indices.last().unwrap() as usize;
        if last != lengths.len() {
            return Err(Failure::software(format!(
                "{}: {} sequence(s) were added after the last end_document; end the document before finish",
                prefix.display(),
                lengths.len() - last
            )));
        }
        let file = bin.into_inner().map_err(|e| Failure::io(format!("{}: cannot write: {}", bin_path.display(), e.error())))?;
        drop(file);

        let idx_path = idx_path(&prefix);
        let io = |e: std::io::Error| Failure::io(format!("{}: cannot write: {e}", idx_path.display()));
        let mut idx = BufWriter::with_capacity(BUFFER, outputs.create(&idx_path)?);
        idx.write_all(MAGIC).map_err(io)?;
        idx.write_all(&1u64.to_le_bytes()).map_err(io)?;
        idx.write_all(&[dtype.code()]).map_err(io)?;
        idx.write_all(&(lengths.len() as u64).to_le_bytes()).map_err(io)?;
        idx.write_all(&(document_indices.len() as u64).to_le_bytes()).map_err(io)?;
        for &len in &lengths {
            idx.write_all(&len.to_le_bytes()).map_err(io)?;
        }
        let item = dtype.size() as i64;
        let mut pointer: i64 = 0;
        for &len in &lengths {
            idx.write_all(&pointer.to_le_bytes()).map_err(io)?;
            pointer = pointer
                .checked_add(len as i64 * item)
                .ok_or_else(|| Failure::data(format!("{}: the .bin would pass 2^63 bytes", bin_path.display())))?;
        }
        for &d in &document_indices {
            idx.write_all(&d.to_le_bytes()).map_err(io)?;
        }
        if let Some(modes) = &modes {
            let bytes: Vec<u8> = modes.iter().map(|&m| m as u8).collect();
            idx.write_all(&bytes).map_err(io)?;
        }
        idx.into_inner().map_err(|e| io(e.into_error()))?;
        debug_assert_eq!(pointer as u64, bin_bytes);
        Ok(WriteSummary {
            dtype,
            sequences: lengths.len() as u64,
            documents: document_indices.len() as u64 - 1,
            tokens,
            bin_bytes,
        })
    }
}

/// What `merge_detailed` read and wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    pub inputs: Vec<ShardSummary>,
    pub output: WriteSummary,
}

/// Concatenate datasets into `output` (Megatron's `add_index` over each input, in order). Every
/// input is opened and validated before anything is written; all must share one dtype. The
/// output has sequence modes if and only if every input has them.
pub fn merge(inputs: &[PathBuf], output: &Path, outputs: &mut AtomicOutputs) -> Result<WriteSummary, Failure> {
    merge_detailed(inputs, output, outputs).map(|r| r.output)
}

/// `merge`, also returning the counts of each input.
pub fn merge_detailed(inputs: &[PathBuf], output: &Path, outputs: &mut AtomicOutputs) -> Result<MergeReport, Failure> {
    if inputs.is_empty() {
        return Err(Failure::usage("merge needs at least one input dataset"));
    }
    let out_idx = idx_path(output);
    let out_bin = bin_path(output);
    let mut datasets = Vec::with_capacity(inputs.len());
    for input in inputs {
        if idx_path(input) == out_idx || bin_path(input) == out_bin {
            return Err(Failure::usage(format!(
                "{}: the output prefix is also an input; write the merge to a new prefix",
                output.display()
            )));
        }
        datasets.push(IndexedDataset::open(input)?);
    }
    let first = &datasets[0];
    if let Some(odd) = datasets.iter().find(|d| d.dtype() != first.dtype()) {
        return Err(Failure::data(format!(
            "{}: dtype {} differs from {} of the first input {}; merge needs one dtype (re-tokenize or convert the odd shard)",
            odd.prefix().display(),
            odd.dtype(),
            first.dtype(),
            first.prefix().display()
        )));
    }
    // Datasets without sequences carry no modes either way; they fit both kinds.
    let with_modes = datasets.iter().find(|d| d.has_sequence_modes());
    let without_modes = datasets.iter().find(|d| !d.has_sequence_modes() && d.num_sequences() > 0);
    if let (Some(with), Some(without)) = (with_modes, without_modes) {
        return Err(Failure::data(format!(
            "{} has per-sequence modes (multimodal) but {} does not; multimodal and plain datasets cannot be merged",
            with.idx_path().display(),
            without.idx_path().display(),
        )));
    }
    let mut writer = if with_modes.is_some() {
        IndexedDatasetWriter::create_multimodal(output, first.dtype(), outputs)?
    } else {
        IndexedDatasetWriter::create(output, first.dtype(), outputs)?
    };
    for dataset in &datasets {
        writer.add_dataset(dataset)?;
    }
    let output = writer.finish(outputs)?;
    Ok(MergeReport { inputs: datasets.iter().map(|d| d.summary()).collect(), output })
}
