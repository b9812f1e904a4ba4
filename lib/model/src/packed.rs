//! Packed groups of tokens for scoring multiple-choice questions without padding: each group is a
//! shared prefix (the question's context) followed by branches (its choices), and all groups'
//! tokens run as one sequence through the projections, norms and experts. Only attention sees the
//! groups, each padded to the longest: a prefix token sees the earlier prefix tokens; a branch
//! token sees the whole prefix and the earlier tokens of its own branch, at positions continuing
//! the prefix. That is what each (context + choice) computes on its own, the context computed once.

use crate::model::DeepseekV3;
use crate::moe::AuxCoefficients;
use crate::token_groups::TokenGroups;
use tch::Tensor;


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
