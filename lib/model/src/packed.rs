//! Packed groups of tokens for scoring multiple-choice questions without padding: each group is a
//! shared prefix (the question's context) followed by branches (its choices), and all groups'
//! tokens run as one sequence through the projections, norms and experts. Only attention sees the
//! groups, each padded to the longest: a prefix token sees the earlier prefix tokens; a branch
//! token sees the whole prefix and the earlier tokens of its own branch, at positions continuing
//! the prefix. That is what each (context + choice) computes on its own, the context computed once.

use crate::model::DeepseekV3;
use crate::moe::AuxCoefficients;
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
        let seg = Tensor::from_slice(&seg).view([groups as i64, len as i64]).to_device(device);
        let (query_seg, key_seg) = (seg.unsqueeze(2), seg.unsqueeze(1));
        let idx = Tensor::arange(len as i64, (Kind::Int64, device));
        let (query, key) = (idx.unsqueeze(1), idx.unsqueeze(0));
        let visible = key_seg.eq(0).logical_or(&key_seg.eq_tensor(&query_seg)).logical_and(&key_seg.ge(0)).logical_and(&query_seg.ge(0)).logical_and(&key.le_tensor(&query));
        // Padding rows see themselves, so that their softmax has something to normalise.
        let mask = visible.logical_or(&key.eq_tensor(&query)).unsqueeze(1);
        TokenGroups {
            slot: Tensor::from_slice(&slot).to_device(device),
            groups: groups as i64,
            len: len as i64,
            positions: Tensor::from_slice(&positions).to_device(device).unsqueeze(0),
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

impl DeepseekV3 {
    /// Final hidden states [N, hidden] of the packed tokens `ids` laid out by `groups`.
    pub fn hidden_grouped(&self, ids: &[i64], groups: &TokenGroups) -> Tensor {
        let ids = Tensor::from_slice(ids).to_device(self.device()).unsqueeze(0);
        let (mut x, cos, sin) = self.embed(&ids, Some(&groups.positions));
        for layer in &self.layers {
            let mut attend = |a: &crate::attention::Attention, h: &Tensor| a.forward_grouped(h, &self.rope, &cos, &sin, groups);
            x = layer.forward_around(&x, &mut attend, &AuxCoefficients::default()).0;
        }
        self.norm.forward(&x).squeeze_dim(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_let_branches_see_the_prefix_and_themselves_only() {
        // Group 0: prefix 2, branches 1 and 2; group 1: prefix 1, an empty branch, a branch of 1.
        let g = TokenGroups::new(&[vec![2, 1, 2], vec![1, 0, 1]], Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(&g.positions.squeeze_dim(0)).unwrap(), vec![0, 1, 2, 2, 3, 0, 1]);
        let m = |grp: i64, q: i64| Vec::<bool>::try_from(&g.mask.get(grp).get(0).get(q)).unwrap();
        assert_eq!(m(0, 1), vec![true, true, false, false, false]);
        assert_eq!(m(0, 2), vec![true, true, true, false, false]);
        assert_eq!(m(0, 4), vec![true, true, false, true, true]);
        assert_eq!(m(1, 1), vec![true, true, false, false, false]);
        // Padding sees only itself.
        assert_eq!(m(1, 3), vec![false, false, false, true, false]);
        // spread and collect are inverse on the packed tokens.
        let t = Tensor::arange(7 * 3, (Kind::Float, Device::Cpu)).view([1, 7, 1, 3]).transpose(1, 2);
        assert_eq!(g.collect(&g.spread(&t)), t);
        assert_eq!(g.spread(&t).size(), vec![2, 1, 5, 3]);
    }
}
