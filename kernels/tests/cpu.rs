//! The shim on CPU: per-tensor norms against the plain formula, the MoE autograd functions and the accumulating GEMM against their tensor-op
//! compositions, and clear errors (not crashes) where ATen refuses.

mod common;

use openseek_kernels::{
    adamw_update, backward, addmm_accumulate, combine_rows, current_stream, foreach_norm, gather_rows, set_grad, swiglu, varlen_attention,
    AdamWStep, CudaGraph,
};
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn mismatched_inputs_are_errors() {
    // The AdamW kernel runs on CUDA only, and says so.
    let a = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let h = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 1, grad_scale: 1.0 };
    let err = adamw_update(&a, None, &a.copy(), &a.zeros_like(), &a.zeros_like(), &h, None).unwrap_err();
    assert!(err.to_string().contains("runs on CUDA"), "{err}");
    // ATen's own refusals come back as errors with its message.
    let q = Tensor::ones([6, 2, 8], (Kind::Float, Device::Cpu));
    let cu = Tensor::from_slice(&[0i32, 2, 6]);
    let err = varlen_attention(&q, &q, &q, &cu, 4, 0.35).expect_err("no varlen attention on CPU");
    assert!(matches!(err, tch::TchError::Torch(_)) && !err.to_string().is_empty(), "{err}");
    eprintln!("varlen attention on CPU: {err}");
    if !tch::Cuda::is_available() {
        assert!(current_stream(0).is_err(), "no accelerator here, so no stream");
        let err = CudaGraph::capture(0, || 1).err().expect("no CUDA graph without a CUDA device");
        eprintln!("CUDA graph without a device: {err}");
    }
}

#[test]
fn foreach_norm_is_torchs() {
    tch::manual_seed(5);
    let grads: Vec<Tensor> = [[3i64, 4], [10, 1], [1, 1]].iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
    let norms = foreach_norm(&grads).unwrap();
    for (n, g) in norms.iter().zip(&grads) {
        assert!((n.double_value(&[]) - g.square().sum(Kind::Double).sqrt().double_value(&[])).abs() < 1e-5);
    }
    let half = foreach_norm(&[Tensor::full([1000], 0.1, (Kind::BFloat16, Device::Cpu))]).unwrap();
    assert_eq!(half[0].kind(), Kind::Float);
    assert!((half[0].double_value(&[]) - 0.1f32 as f64 * 1000f64.sqrt()).abs() < 1e-2);
    assert!(foreach_norm(&[]).unwrap().is_empty());
}

/// Gradients of `leaves` under `f` for a fixed probe of the output (a formula, not the global
/// generator, which tests running in parallel share).
fn grads_of(leaves: &[&Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) -> (Tensor, Vec<Tensor>) {
    let leaves: Vec<Tensor> = leaves.iter().map(|t| t.detach().copy().set_requires_grad(true)).collect();
    let y = f(&leaves);
    let probe = (Tensor::arange(y.numel() as i64, (Kind::Float, Device::Cpu)) * 0.7).sin().view(y.size().as_slice());
    (&y * &probe).sum(Kind::Float).backward();
    (y.detach(), leaves.iter().map(|l| l.grad()).collect())
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let scale = b.abs().max().double_value(&[]);
    let diff = max_abs(a, b);
    assert!(scale > 1e-3, "{what}: all zero");
    assert!(diff <= tol * scale, "{what}: max |diff| {diff:e} of max {scale:e}");
}

#[test]
fn moe_functions_equal_their_compositions() {
    tch::manual_seed(4);
    let opts = (Kind::Float, Device::Cpu);
    let (n, k, width, inter) = (9i64, 3i64, 8i64, 5i64);
    // SwiGLU: exactly the ops autograd runs for silu(gate) * up.
    let hid = Tensor::randn([n * k, 2 * inter], opts);
    let (y1, g1) = grads_of(&[&hid], &|l| swiglu(&l[0], true).unwrap());
    let (y2, g2) = grads_of(&[&hid], &|l| l[0].narrow(1, 0, inter).silu() * l[0].narrow(1, inter, inter));
    assert!(y1.equal(&y2) && g1[0].equal(&g2[0]), "swiglu differs from silu(gate) * up");
    // Rows sorted by a random permutation; rank = where each (token, slot) pair went.
    let order = Tensor::randperm(n * k, (Kind::Int64, Device::Cpu));
    let rank = order.argsort(0, false);
    let x = Tensor::randn([n, width], opts);
    let (r1, gx1) = grads_of(&[&x], &|l| gather_rows(&l[0], &order.floor_divide_scalar(k), &rank).unwrap());
    let (r2, gx2) = grads_of(&[&x], &|l| l[0].index_select(0, &order.floor_divide_scalar(k)));
    assert!(r1.equal(&r2), "gathered rows");
    assert_close("gather_rows dx", &gx1[0], &gx2[0], 1e-6);
    let (y, w) = (Tensor::randn([n * k, width], opts), Tensor::rand([n, k], opts));
    let (c1, gc1) = grads_of(&[&y, &w], &|l| combine_rows(&l[0], &l[1], &rank, &order, true).unwrap());
    let (c2, gc2) = grads_of(&[&y, &w], &|l| (l[0].index_select(0, &rank).view([n, k, width]) * l[1].unsqueeze(-1)).sum_dim_intlist(1, false, Kind::Float));
    assert_close("combine_rows", &c1, &c2, 1e-6);
    assert_close("combine_rows dy", &gc1[0], &gc2[0], 1e-6);
    assert_close("combine_rows dw", &gc1[1], &gc2[1], 1e-6);
}

#[test]
fn addmm_accumulate_and_set_grad() {
    tch::manual_seed(6);
    let opts = (Kind::Float, Device::Cpu);
    let (a, b) = (Tensor::randn([7, 4], opts), Tensor::randn([4, 3], opts));
    let mut out = Tensor::randn([7, 3], opts);
    let want = &out + a.mm(&b) * 0.5;
    addmm_accumulate(&out, &a, &b, 0.5, true).unwrap();
    assert!(max_abs(&out, &want) < 1e-6);
    // Written, not added: what `out` held (NaN here) is not read.
    let _ = out.fill_(f64::NAN);
    addmm_accumulate(&out, &a, &b, 0.5, false).unwrap();
    assert!(max_abs(&out, &(a.mm(&b) * 0.5)) < 1e-6);
    // A transposed operand with padding rows (the LM head's padded logits gradient): dropped.
    let wide = Tensor::randn([4, 9], opts);
    let out2 = Tensor::zeros([7, 3], opts);
    addmm_accumulate(&out2, &wide.tr(), &b, 1.0, true).unwrap();
    assert!(max_abs(&out2, &wide.narrow(1, 0, 7).tr().mm(&b)) < 1e-6);
    let p = Tensor::ones([3], opts).set_requires_grad(true);
    set_grad(&p, Some(&Tensor::full([3], 2.0, opts))).unwrap();
    (&p * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&p.grad()).unwrap(), [5.0, 5.0, 5.0], "backward adds to the grad that was set");
    set_grad(&p, None).unwrap();
    assert!(!p.grad().defined());
    (&p * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&p.grad()).unwrap(), [3.0, 3.0, 3.0]);
}

/// A backward pass from tensors with upstream gradients gives the gradients of sum(t * g).
#[test]
fn backward_with_upstream_gradients_equals_the_dot_product_objective() {
    tch::manual_seed(4);
    let w = Tensor::randn([5, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let x = Tensor::randn([7, 5], (Kind::Float, Device::Cpu));
    let g = Tensor::randn([7, 3], (Kind::Float, Device::Cpu));
    x.mm(&w).tanh().multiply(&g).sum(Kind::Float).backward();
    let want = w.grad().copy();
    let _ = w.grad().zero_();
    let (y, aux) = (x.mm(&w).tanh(), w.square().sum(Kind::Float));
    backward(&[&y, &aux], &[&g, &aux.ones_like()]).unwrap();
    assert!(w.grad().allclose(&(want + w.detach() * 2.0), 1e-6, 1e-6, false));
    assert!(backward(&[&y], &[]).is_err());
}

/// MLA's rotary joins (`rope_query`, `rope_key`) against the model's tensor-op composition
/// (`common::rope_reference`, `Rope::apply` of openseek-model), forward and gradients: both pair layouts, tables
/// shared by the batch and per sequence (random, so a wrong column of them shows), odd sizes, and
/// the values view's gradient reaching kv through the key function.
#[test]
fn rope_functions_equal_the_composition() {
    use openseek_kernels::{rope_key, rope_query};
    tch::manual_seed(9);
    let opts = (Kind::Float, Device::Cpu);
    let (b, t, h, nope, rope, v) = (3i64, 5i64, 2i64, 6i64, 8i64, 4i64);
    let apply = common::rope_reference;
    for interleave in [true, false] {
        for per_sequence in [false, true] {
            let table = if per_sequence { vec![b, t, rope] } else { vec![t, rope] };
            let (cos, sin) = (Tensor::randn(table.as_slice(), opts), Tensor::randn(table.as_slice(), opts));
            // The composition's broadcast over heads: [T, 1, rope] or [B, T, 1, rope].
            let (c4, s4) = (cos.unsqueeze(-2), sin.unsqueeze(-2));
            let what = format!("interleave {interleave}, per-sequence tables {per_sequence}");
            let q = Tensor::randn([b, t, h, nope + rope], opts);
            let (y1, g1) = grads_of(&[&q], &|l| rope_query(&l[0], &cos, &sin, nope, interleave, true).unwrap());
            let (y2, g2) = grads_of(&[&q], &|l| Tensor::cat(&[l[0].narrow(-1, 0, nope), apply(&l[0].narrow(-1, nope, rope), &c4, &s4, interleave)], -1));
            assert_close(&format!("rope_query {what}"), &y1, &y2, 1e-6);
            assert_close(&format!("rope_query dq {what}"), &g1[0], &g2[0], 1e-6);
            // k_pe as the model takes it: the last columns of a wider projection.
            let kv = Tensor::randn([b, t, h, nope + v], opts);
            let kv_a = Tensor::randn([b, t, 3 + rope], opts);
            let joined = |k: &Tensor, val: &Tensor| Tensor::cat(&[k.flatten(0, -1), val.flatten(0, -1)], 0);
            let (y1, g1) = grads_of(&[&kv, &kv_a], &|l| {
                let (k, val) = rope_key(&l[0], &l[1].narrow(-1, 3, rope), &cos, &sin, nope, interleave, true).unwrap();
                assert_eq!(k.size(), [b, t, h, nope + rope]);
                joined(&k, &val)
            });
            let (y2, g2) = grads_of(&[&kv, &kv_a], &|l| {
                let k_rot = apply(&l[1].narrow(-1, 3, rope).unsqueeze(2), &c4, &s4, interleave).expand([b, t, h, rope], false);
                joined(&Tensor::cat(&[l[0].narrow(-1, 0, nope), k_rot], -1), &l[0].narrow(-1, nope, v))
            });
            assert_close(&format!("rope_key {what}"), &y1, &y2, 1e-6);
            assert_close(&format!("rope_key dkv {what}"), &g1[0], &g2[0], 1e-6);
            assert_close(&format!("rope_key dk_pe {what}"), &g1[1], &g2[1], 1e-6);
        }
    }
    let q = Tensor::randn([b, t, h, nope + rope], opts);
    let err = rope_query(&q, &Tensor::ones([t + 1, rope], opts), &Tensor::ones([t + 1, rope], opts), nope, true, true).unwrap_err().to_string();
    assert!(err.contains("rope tables"), "{err}");
}
