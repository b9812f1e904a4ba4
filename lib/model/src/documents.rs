//! Attention within documents (Megatron's `reset_attention_mask` + `reset_position_ids`): rows of
//! packed documents where each token sees only the earlier tokens of its own document and
//! positions restart at each document. [`DocumentSegments`] is what the attention layers take for
//! it: on CUDA in 16-bit the documents are the segments of a variable-length attention kernel
//! (openseek-kernels' `varlen_attention`, flash attention's kernels, no [T, T] mask; the
//! `varlen_attention` fast path); elsewhere a [B, 1, T, T] mask for SDPA.

use crate::device::upload;
use std::cell::OnceCell;
use tch::{Device, Kind, Tensor};

/// The documents of a batch of rows [B, T].
pub struct DocumentSegments {
    /// Each token's position within its document, [B, T] int64 (0 at each document's start).
    pub positions: Tensor,
    /// The documents' running starts over the flattened rows (B * T tokens), int32 [documents + 1]:
    /// 0 first, B * T last; a row's first document starts at its row's first token.
    pub cu_seqlens: Tensor,
    /// The longest document, in tokens.
    pub max_len: i64,
    /// Each token's document (numbered over the batch), [B, T] int64, for the mask.
    document: Tensor,
    mask: OnceCell<Tensor>,
}

impl DocumentSegments {
    /// [B, 1, T, T] bool, true where a query may see a key (same document, not later); built on
    /// first use.
    pub fn mask(&self) -> &Tensor {
        self.mask.get_or_init(|| {
            let (seq, device) = (self.document.size()[1], self.document.device());
            let same = self.document.unsqueeze(2).eq_tensor(&self.document.unsqueeze(1));
            same.logical_and(&Tensor::ones([seq, seq], (Kind::Bool, device)).tril(0)).unsqueeze(1)
        })
    }
}

/// The documents of rows of `seq` tokens from each row's document starts (token offsets, ascending;
/// tokens before the first start belong to a document starting at 0; starts at or beyond `seq`
/// are ignored), on `device`.
pub fn document_attention(document_starts: &[Vec<u32>], seq: i64, device: Device) -> DocumentSegments {
    let rows = document_starts.len();
    let mut document = Vec::with_capacity(rows * seq as usize);
    let mut positions = Vec::with_capacity(document.capacity());
    let mut cu_seqlens = vec![0i32];
    let mut max_len = 0i64;
    for (r, starts) in document_starts.iter().enumerate() {
        let mut starts: Vec<u32> = starts.iter().copied().filter(|&s| (s as i64) < seq).collect();
        starts.dedup();
        if starts.first() != Some(&0) {
            starts.insert(0, 0);
        }
        let row_start = (r as i64 * seq) as i32;
        for (d, &start) in starts.iter().enumerate() {
            let end = starts.get(d + 1).map_or(seq as u32, |&e| e);
            let id = (cu_seqlens.len() - 1) as i64;
            for k in start..end {
                document.push(id);
                positions.push((k - start) as i64);
            }
            cu_seqlens.push(row_start + end as i32);
            max_len = max_len.max((end - start) as i64);
        }
    }
    let grid = |v: &[i64]| upload(v, device).view([rows as i64, seq]);
    DocumentSegments {
        positions: grid(&positions),
        cu_seqlens: upload(&cu_seqlens, device),
        max_len,
        document: grid(&document),
        mask: OnceCell::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_positions_and_mask_follow_the_document_starts() {
        // Row 0: documents at 0 and 3; row 1: one start past the row, a missing 0 and a repeat.
        let d = document_attention(&[vec![0, 3], vec![2, 2, 9]], 5, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(d.positions.view([-1])).unwrap(), [0, 1, 2, 0, 1, 0, 1, 0, 1, 2]);
        assert_eq!(Vec::<i32>::try_from(&d.cu_seqlens).unwrap(), [0, 3, 5, 7, 10]);
        assert_eq!(d.max_len, 3);
        let mask = d.mask();
        assert_eq!(mask.size(), [2, 1, 5, 5]);
        let row0: Vec<i64> = Vec::try_from(mask.get(0).view([-1]).to_kind(Kind::Int64)).unwrap();
        assert_eq!(row0, [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1]);
    }
}
