//! The reader os-train uses: micro-batches for one data-parallel rank, with tokens, labels, loss
//! mask, position ids and document boundaries, as Megatron's GPTDataset and
//! `get_ltor_masks_and_position_ids` make them (FORMATS.md §4), and a cursor that checkpoints and
//! resumes exactly.
//!
//! Order is Megatron's `MegatronPretrainingSampler`: from `consumed_samples`, each step takes the
//! next `micro_batch_size * dp_size` samples of the store and rank `r` gets the `r`-th run of
//! `micro_batch_size` of them; `consumed_samples` grows by that amount per step. The cursor is that
//! one global number, so a resume with a different number of ranks (or micro-batch size) carries
//! on with the very next sample.

use openseek_common::Failure;
use serde::{Deserialize, Serialize};

use crate::store::SampleStore;

/// Where document boundaries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Boundaries {
    /// After every EOD token, as Megatron does (the default).
    #[default]
    Eod,
    /// Where the store's document pieces start (packed stores: each packed document), and where
    /// padding starts.
    Pieces,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReaderOptions {
    /// Positions restart at 0 at every document start.
    pub reset_position_ids: bool,
    /// Attention does not cross document boundaries (`cu_seqlens` holds every document).
    pub reset_attention_mask: bool,
    /// Loss mask 0 on EOD tokens of the input.
    pub eod_mask_loss: bool,
    /// The EOD token id (needed for `Boundaries::Eod` and `eod_mask_loss`).
    pub eod_token: Option<u32>,
    /// Megatron's pad handling: loss 0 where the label is pad, and pad ids replaced by 0 in tokens
    /// and labels. Padding positions of packed stores get loss 0 whatever this is.
    pub pad_token: Option<u32>,
    pub boundaries: Boundaries,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            reset_position_ids: false,
            reset_attention_mask: false,
            eod_mask_loss: false,
            eod_token: None,
            pad_token: None,
            boundaries: Boundaries::Eod,
        }
    }
}

/// The training cursor: samples consumed by all ranks together. Save it in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub consumed_samples: u64,
}

/// One rank's micro-batch, row-major `[micro_batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatch {
    pub seq_len: usize,
    /// Store sample number of each row.
    pub sample_ids: Vec<u64>,
    pub tokens: Vec<u32>,
    pub labels: Vec<u32>,
    pub loss_mask: Vec<f32>,
    pub position_ids: Vec<u32>,
    /// Per row, the start of every document within the row (always begins with 0).
    pub document_starts: Vec<Vec<u32>>,
    /// Per row, the attention blocks as cumulative offsets `[0, ..., seq_len]`: the documents when
    /// `reset_attention_mask`, else the whole row.
    pub cu_seqlens: Vec<Vec<u32>>,
}

/// One sample turned into training arrays (all `seq_len` long).
pub struct Row {
    pub tokens: Vec<u32>,
    pub labels: Vec<u32>,
    pub loss_mask: Vec<f32>,
    pub position_ids: Vec<u32>,
    pub document_starts: Vec<u32>,
    pub cu_seqlens: Vec<u32>,
}

/// Build the training arrays of store sample `i`.
pub fn row(store: &SampleStore, i: u64, o: &ReaderOptions) -> Result<Row, Failure> {
    let seq = store.seq_len() as usize;
    let (text, src) = store.sample(i);
    let mut tokens = text[..seq].to_vec();
    let mut labels = text[1..].to_vec();
    let real = seq + 1 - src.padding as usize; // positions of `text` holding real tokens
    let need_eod = o.eod_mask_loss || (o.boundaries == Boundaries::Eod && (o.reset_position_ids || o.reset_attention_mask));
    let eod = match (o.eod_token, need_eod) {
        (Some(e), _) => Some(e),
        (None, true) => {
            return Err(Failure::usage(
                "the reader needs the EOD token id for eod_mask_loss or EOD-based document boundaries; set eod_token",
            ))
        }
        (None, false) => None,
    };
    // Document starts within the row.
    let mut starts: Vec<u32> = vec![0];
    match o.boundaries {
        Boundaries::Eod => {
            if let Some(e) = eod {
                for (k, &t) in tokens.iter().enumerate() {
                    if t == e && k + 1 < seq {
                        starts.push(k as u32 + 1);
                    }
                }
            }
        }
        Boundaries::Pieces => {
            let mut at = 0u64;
            for p in &src.pieces {
                if at > 0 && (at as usize) < seq {
                    starts.push(at as u32);
                }
                at += p.len;
            }
            if src.padding > 0 && (at as usize) < seq && at > 0 {
                starts.push(at as u32);
            }
        }
    }
    let mut loss_mask = vec![1.0f32; seq];
    if o.eod_mask_loss {
        let e = eod.unwrap();
        for (m, &t) in loss_mask.iter_mut().zip(&tokens) {
            if t == e {
                *m = 0.0;
            }
        }
    }
    // Labels that are padding positions (label k is text[k+1]).
    for (k, m) in loss_mask.iter_mut().enumerate() {
        if k + 1 >= real {
            *m = 0.0;
        }
    }
    if let Some(p) = o.pad_token {
        for (m, l) in loss_mask.iter_mut().zip(labels.iter_mut()) {
            if *l == p {
                *m = 0.0;
                *l = 0;
            }
        }
        for t in tokens.iter_mut() {
            if *t == p {
                *t = 0;
            }
        }
    }
    let mut position_ids: Vec<u32> = (0..seq as u32).collect();
    if o.reset_position_ids {
        let mut s = 0usize;
        for (k, position) in position_ids.iter_mut().enumerate() {
            while s + 1 < starts.len() && starts[s + 1] as usize <= k {
                s += 1;
            }
            *position = k as u32 - starts[s];
        }
    }
    let mut cu = if o.reset_attention_mask { starts.clone() } else { vec![0] };
    cu.push(seq as u32);
    Ok(Row { tokens, labels, loss_mask, position_ids, document_starts: starts, cu_seqlens: cu })
}

/// Micro-batches for one data-parallel rank, from a cursor.
pub struct DataLoader<'a> {
    store: &'a SampleStore,
    options: ReaderOptions,
    dp_rank: usize,
    dp_size: usize,
    micro_batch_size: usize,
    cursor: Cursor,
}

impl<'a> DataLoader<'a> {
    pub fn new(
        store: &'a SampleStore,
        options: ReaderOptions,
        dp_rank: usize,
        dp_size: usize,
        micro_batch_size: usize,
        cursor: Cursor,
    ) -> Result<Self, Failure> {
        if dp_size == 0 || micro_batch_size == 0 || dp_rank >= dp_size {
            return Err(Failure::usage(format!(
                "data-parallel rank {dp_rank} of {dp_size} with micro-batch size {micro_batch_size}: need 0 <= rank < size and sizes >= 1"
            )));
        }
        if cursor.consumed_samples > store.len() {
            return Err(Failure::usage(format!(
                "the cursor says {} samples were consumed but the store {} has {}; is this the store the checkpoint was trained on?",
                cursor.consumed_samples,
                store.dir().display(),
                store.len()
            )));
        }
        Ok(DataLoader { store, options, dp_rank, dp_size, micro_batch_size, cursor })
    }

    /// The cursor after the micro-batches returned so far (what a checkpoint saves).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Samples one step (all ranks together) consumes.
    pub fn step_samples(&self) -> u64 {
        (self.micro_batch_size * self.dp_size) as u64
    }

    /// The sample ids this rank gets at the current cursor, or `None` when fewer than a full step remain.
    pub fn next_sample_ids(&self) -> Option<Vec<u64>> {
        let start = self.cursor.consumed_samples;
        if start + self.step_samples() > self.store.len() {
            return None;
        }
        let mine = start + (self.dp_rank * self.micro_batch_size) as u64;
        Some((mine..mine + self.micro_batch_size as u64).collect())
    }

    /// This rank's next micro-batch, advancing the cursor by one step; `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<MicroBatch>, Failure> {
        let Some(ids) = self.next_sample_ids() else { return Ok(None) };
        let seq = self.store.seq_len() as usize;
        let mut b = MicroBatch {
            seq_len: seq,
            sample_ids: ids.clone(),
            tokens: Vec::with_capacity(ids.len() * seq),
            labels: Vec::with_capacity(ids.len() * seq),
            loss_mask: Vec::with_capacity(ids.len() * seq),
            position_ids: Vec::with_capacity(ids.len() * seq),
            document_starts: Vec::new(),
            cu_seqlens: Vec::new(),
        };
        for &i in &ids {
            let r = row(self.store, i, &self.options)?;
            b.tokens.extend(r.tokens);
            b.labels.extend(r.labels);
            b.loss_mask.extend(r.loss_mask);
            b.position_ids.extend(r.position_ids);
            b.document_starts.push(r.document_starts);
            b.cu_seqlens.push(r.cu_seqlens);
        }
        self.cursor.consumed_samples += self.step_samples();
        Ok(Some(b))
    }
}
