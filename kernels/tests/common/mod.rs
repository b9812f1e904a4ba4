//! What the CPU and GPU tests share: the reference formulas the kernels are checked against.

use tch::Tensor;

/// RoPE as the model's tensor ops compute it (`Rope::apply` of openseek-model): x [..., rope]
/// rotated by cos/sin tables broadcasting against it; pairs (x[2i], x[2i+1]) when `interleave`
/// (the tables' first half used for both members), else (x[i], x[rope/2 + i]) (rotate-half).
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor, interleave: bool) -> Tensor {
    let d = *x.size().last().unwrap();
    if interleave {
        let (cos, sin) = (cos.narrow(-1, 0, d / 2), sin.narrow(-1, 0, d / 2));
        let (x1, x2) = (x.slice(-1, 0, d, 2), x.slice(-1, 1, d, 2));
        Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x2 * &cos + &x1 * &sin], -1)
    } else {
        let (x1, x2) = (x.narrow(-1, 0, d / 2), x.narrow(-1, d / 2, d / 2));
        x * cos + Tensor::cat(&[-x2, x1], -1) * sin
    }
}
