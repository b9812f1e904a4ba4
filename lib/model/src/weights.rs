//! A model's weights as a named set of tensors (the Hugging Face state dict, experts fused), and
//! taking them out one by one as the modules are built.

use std::collections::BTreeMap;
use tch::Tensor;

/// A named set of tensors, the HF state dict (fused experts).
pub type Weights = BTreeMap<String, Tensor>;

/// Take the weight `name` out of `w` (the checkpoint loader has checked every name first).
pub(crate) fn take(w: &mut Weights, name: &str) -> Tensor {
    w.remove(name).unwrap_or_else(|| panic!("weight {name} missing (the checkpoint loader checks names first)"))
}
