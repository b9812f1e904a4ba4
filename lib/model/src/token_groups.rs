//! Groups of tokens packed into one sequence (a shared prefix, then branches): where each token sits
//! in its group and what it may attend to (used by `crate::packed` to score multiple-choice
//! questions without padding).

use crate::device::upload;
use tch::{Device, Kind, Tensor};

/// Where the packed tokens sit in their groups, and what each may attend to.
pub struct TokenGroups {
    /// [N] int64: each packed token's place in the padded [groups * len] layout.
    slot: Tensor,
    groups: i64,
    len: i64,
    /// [1, N] int64: each token's position within its prefix + branch.
    pub positions: Tensor,
    /// [groups, 1, len, len] bool, true where a query may see a key.
    pub mask: Tensor,
}

impl TokenGroups {
    /// `segments[g]`: the lengths of group g's prefix and then of each branch, in packed order
    /// (groups one after another). Branches may be empty; the prefix must not be.
    pub fn new(segments: &[Vec<usize>], device: Device) -> TokenGroups {
        let len = segments.iter().map(|s| s.iter().sum::<usize>()).max().unwrap_or(1).max(1);
        let groups = segments.len().max(1);
        // seg[g * len + l]: 0 in the prefix, b + 1 in branch b, -1 for padding.
        let mut seg = vec![-1i64; groups * len];
        let (mut slot, mut positions) = (Vec::new(), Vec::new());
        for (g, s) in segments.iter().enumerate() {
            let prefix = s[0];
            let mut l = 0;
            for (b, &n) in s.iter().enumerate() {
                for j in 0..n {
                    seg[g * len + l] = b as i64;
                    slot.push((g * len + l) as i64);
                    positions.push((if b == 0 { j } else { prefix + j }) as i64);
                    l += 1;
                }
            }
        }
        let seg = upload(&seg, device).view([groups as i64, len as i64]);
        let (query_seg, key_seg) = (seg.unsqueeze(2), seg.unsqueeze(1));
        let idx = Tensor::arange(len as i64, (Kind::Int64, device));
        let (query, key) = (idx.unsqueeze(1), idx.unsqueeze(0));
        let visible = key_seg.eq(0).logical_or(&key_seg.eq_tensor(&query_seg)).logical_and(&key_seg.ge(0)).logical_and(&query_seg.ge(0)).logical_and(&key.le_tensor(&query));
        // Padding rows see themselves, so that their softmax has something to normalise.
        let mask = visible.logical_or(&key.eq_tensor(&query)).unsqueeze(1);
        TokenGroups {
            slot: upload(&slot, device),
            groups: groups as i64,
            len: len as i64,
            positions: upload(&positions, device).unsqueeze(0),
            mask,
        }
    }

    /// Packed [1, H, N, d] -> grouped [groups, H, len, d] (zeros at padding).
    pub fn spread(&self, t: &Tensor) -> Tensor {
        let (heads, dim) = (t.size()[1], t.size()[3]);
        let tokens = t.squeeze_dim(0).transpose(0, 1);
        let padded = Tensor::zeros([self.groups * self.len, heads, dim], (t.kind(), t.device())).index_copy(0, &self.slot, &tokens);
        padded.view([self.groups, self.len, heads, dim]).transpose(1, 2)
    }

    /// Grouped [groups, H, len, d] -> packed [1, H, N, d].
    pub fn collect(&self, y: &Tensor) -> Tensor {
        let (heads, dim) = (y.size()[1], y.size()[3]);
        y.transpose(1, 2).reshape([self.groups * self.len, heads, dim]).index_select(0, &self.slot).transpose(0, 1).unsqueeze(0)
    }
}
