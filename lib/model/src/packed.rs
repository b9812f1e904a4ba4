//! Packed groups of tokens for scoring multiple-choice questions without padding: each group is a
//! shared prefix (the question's context) followed by branches (its choices), and all groups'
//! tokens run as one sequence through the projections, norms and experts. Only attention sees the
//! groups, each padded to the longest: a prefix token sees the earlier prefix tokens; a branch
//! token sees the whole prefix and the earlier tokens of its own branch, at positions continuing
//! the prefix. That is what each (context + choice) computes on its own, the context computed once.
//!
//! Whole documents (groups without branches, as perplexity scoring runs them) take the varlen
//! kernels where they can ([`DeepseekV3::hidden_documents`]): one row of document segments, nothing
//! padded, as os-train's per-document attention runs.

use crate::device::upload;
use crate::documents::document_attention;
use crate::model::DeepseekV3;
use crate::moe::AuxCoefficients;
use crate::token_groups::TokenGroups;
use tch::{Kind, Tensor};


impl DeepseekV3 {
    /// Final hidden states [N, hidden] of the packed tokens `ids` laid out by `groups`.
    pub fn hidden_grouped(&self, ids: &[i64], groups: &TokenGroups) -> Tensor {
        let ids = upload(ids, self.device()).unsqueeze(0);
        let (mut x, cos, sin) = self.embed(&ids, Some(&groups.positions));
        for layer in &self.layers {
            let mut attend = |a: &crate::attention::Attention, h: &Tensor| a.forward_grouped(h, &self.rope, &cos, &sin, groups);
            x = layer.forward_around(&x, &mut attend, &AuxCoefficients::default()).0;
        }
        self.norm.forward(&x).squeeze_dim(0)
    }

    /// Final hidden states [N, hidden] of whole documents packed one after another (`lens[i]`
    /// tokens each, positions from 0), each token seeing only the earlier tokens of its document.
    /// On CUDA in 16-bit with the `varlen_attention` fast path the documents are the segments of
    /// one row (crate::documents: flash attention's varlen kernels, nothing padded); elsewhere
    /// groups of one segment each ([`DeepseekV3::hidden_grouped`]: attention padded per document
    /// and masked). The two agree up to rounding (lib/model/tests/generate.rs, on the GPU).
    pub fn hidden_documents(&self, ids: &[i64], lens: &[usize]) -> Tensor {
        let device = self.device();
        let varlen = self.norm.fast.varlen_attention && device.is_cuda() && matches!(self.compute_kind, Kind::BFloat16 | Kind::Half);
        if !varlen {
            let segments: Vec<Vec<usize>> = lens.iter().map(|&n| vec![n]).collect();
            return self.hidden_grouped(ids, &TokenGroups::new(&segments, device));
        }
        let starts: Vec<u32> = lens.iter().scan(0u32, |at, &n| {
            let start = *at;
            *at += n as u32;
            Some(start)
        }).collect();
        let documents = document_attention(&[starts], ids.len() as i64, device);
        let (mut x, cos, sin) = self.embed(&upload(ids, device).unsqueeze(0), Some(&documents.positions));
        for layer in &self.layers {
            x = layer.forward_train(&x, &self.rope, &cos, &sin, Some(&documents), &AuxCoefficients::default()).0;
        }
        self.norm.forward(&x).squeeze_dim(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

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
