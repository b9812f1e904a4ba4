//! The shim and the NVRTC kernels on a CUDA device (run on the GPU machine: `gpu -- --ignored`):
//! the AdamW kernel against its formula, gradient clipping, the current stream and a device sync, varlen flash attention
//! (forward and autograd backward) against attention computed one sequence at a time, and the
//! LM head's bf16 product written or added into an fp32 gradient.

use openseek_kernels::{adamw_update, addmm_accumulate, clip_grad_norm, current_stream, flash_attention_varlen, synchronize, AdamWStep};
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn cuda() -> Device {
    assert!(tch::Cuda::is_available(), "these tests need a CUDA device");
    Device::Cuda(0)
}

/// torch.optim.AdamW's step written out in fp32 tensor ops: (weights, exp_avg, exp_avg_sq).
fn reference_step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamWStep) -> (Tensor, Tensor, Tensor) {
    let g = g.to_kind(Kind::Float) * h.grad_scale;
    let p = p - p * (h.lr * h.weight_decay);
    let m = m * h.beta1 + &g * (1.0 - h.beta1);
    let v = v * h.beta2 + &g * &g * (1.0 - h.beta2);
    let t = h.step as i32;
    let denom = v.sqrt() / (1.0 - h.beta2.powi(t)).sqrt() + h.eps;
    let p = p - (&m / denom) * (h.lr / (1.0 - h.beta1.powi(t)));
    (p, m, v)
}

/// The NVRTC AdamW kernel against the formula: fp32 and bf16 gradients, with and without the bf16
/// copy, on sizes that take the vector path, its scalar tail, and misaligned views (scalar path).
#[test]
#[ignore]
fn adamw_kernel_equals_the_formula() {
    let dev = cuda();
    tch::manual_seed(11);
    for (numel, offset) in [(4096i64, 0i64), (1001, 0), (777, 1)] {
        for grad_kind in [Kind::Float, Kind::BFloat16] {
            for with_copy in [false, true] {
                let alloc = |k: Kind| Tensor::randn([numel + offset], (Kind::Float, dev)).to_kind(k).narrow(0, offset, numel);
                let (w, m, v) = (alloc(Kind::Float), alloc(Kind::Float) * 0.1, alloc(Kind::Float).square() * 0.01);
                let copy = with_copy.then(|| alloc(Kind::BFloat16));
                let (mut rw, mut rm, mut rv) = (w.copy(), m.copy(), v.copy());
                for step in 1..=3u64 {
                    let h = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 0.7 };
                    let g = alloc(grad_kind);
                    let squares = Tensor::zeros([openseek_kernels::adamw::MAX_BLOCKS], (Kind::Float, dev));
                    adamw_update(&w, copy.as_ref(), &g, &m, &v, &h, Some(&squares), None).unwrap();
                    (rw, rm, rv) = reference_step(&rw, &g, &rm, &rv, &h);
                    let norm = squares.sum(Kind::Double).sqrt().double_value(&[]);
                    let want = rw.to_kind(Kind::Double).square().sum(Kind::Double).sqrt().double_value(&[]);
                    assert!((norm - want).abs() <= 1e-5 * want, "norm of the updated weights {norm} vs {want}");
                }
                let worst = [(&w, &rw), (&m, &rm), (&v, &rv)].iter().map(|(a, b)| max_abs(a, b)).fold(0f64, f64::max);
                eprintln!("AdamW kernel, {numel} values at offset {offset}, {grad_kind:?} grad, copy {with_copy}: max |kernel - formula| {worst:.2e}");
                assert!(worst < 1e-5, "AdamW kernel differs from the formula by {worst}");
                if let Some(c) = &copy {
                    assert_eq!(max_abs(c, &w.to_kind(Kind::BFloat16)), 0.0, "the bf16 copy is the rounded master");
                }
            }
        }
    }
}

/// The same update on a side stream, ordered by events around torch's work: equal results, while
/// torch's stream goes on with other work.
#[test]
#[ignore]
fn adamw_on_a_side_stream_equals_torchs_stream() {
    use openseek_kernels::stream::SideStream;
    let dev = cuda();
    tch::manual_seed(12);
    let side = SideStream::new(0).unwrap();
    let make = || (Tensor::randn([1 << 22], (Kind::Float, dev)), Tensor::zeros([1 << 22], (Kind::Float, dev)), Tensor::zeros([1 << 22], (Kind::Float, dev)));
    let (w1, m1, v1) = make();
    let (w2, m2, v2) = (w1.copy(), m1.copy(), v1.copy());
    let h = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 1, grad_scale: 1.0 };
    for step in 1..=3u64 {
        let g = Tensor::randn([1 << 22], (Kind::Float, dev)).to_kind(Kind::BFloat16);
        let h = AdamWStep { step, ..h };
        adamw_update(&w1, None, &g, &m1, &v1, &h, None, None).unwrap();
        side.wait_for_torch().unwrap();
        adamw_update(&w2, None, &g, &m2, &v2, &h, None, Some(&side)).unwrap();
        let busy = Tensor::randn([2048, 2048], (Kind::BFloat16, dev)).matmul(&Tensor::randn([2048, 2048], (Kind::BFloat16, dev)));
        side.record().unwrap().block_torch(0).unwrap();
        drop((g, busy));
    }
    assert_eq!(max_abs(&w1, &w2), 0.0);
    assert_eq!(max_abs(&v1, &v2), 0.0);
}

#[test]
#[ignore]
fn clip_stream_and_sync_on_cuda() {
    let dev = cuda();
    tch::manual_seed(2);
    let grads: Vec<Tensor> = [[300i64, 20], [7, 1]].iter().map(|s| Tensor::randn(*s, (Kind::BFloat16, dev))).collect();
    let want = grads.iter().map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    let total = clip_grad_norm(&grads, 1.0).unwrap();
    assert_eq!(total.device(), dev);
    assert!((total.double_value(&[]) - want).abs() / want < 1e-3, "{} vs {want}", total.double_value(&[]));
    let after = grads.iter().map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    assert!((after - 1.0).abs() < 1e-2, "clipped norm {after}");
    let s = current_stream(0).unwrap();
    eprintln!("current stream: {s:?}; grad norm {want:.4} clipped to {after:.4}");
    synchronize(0).unwrap();
}

/// MLA's shapes: q/k head dim 192, v head dim 128, padded to 192 for flash attention and narrowed
/// after (as transformers does); compared with attention one sequence at a time on the unpadded v.
#[test]
#[ignore]
fn varlen_flash_attention_equals_attention_per_sequence() {
    let dev = cuda();
    tch::manual_seed(4);
    let (heads, qk_dim, v_dim) = (4i64, 192i64, 128i64);
    let lengths = [5i64, 17, 9, 1];
    let total: i64 = lengths.iter().sum();
    let mk = |d: i64| (Tensor::randn([total, heads, d], (Kind::BFloat16, dev))).set_requires_grad(true);
    let (q, k, v) = (mk(qk_dim), mk(qk_dim), mk(v_dim));
    let mut cu = vec![0i32];
    for l in lengths {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let cu = Tensor::from_slice(&cu).to_device(dev);
    let max = *lengths.iter().max().unwrap();
    let scale = 1.0 / (qk_dim as f64).sqrt();
    let v_padded = v.constant_pad_nd([0, qk_dim - v_dim]);
    let out = flash_attention_varlen(&q, &k, &v_padded, &cu, &cu, max, max, 0.0, true, scale).unwrap();
    assert_eq!(out.out.size(), vec![total, heads, qk_dim]);
    let y = out.out.narrow(-1, 0, v_dim);
    // Reference: each sequence alone, fp32 math attention.
    let (q32, k32, v32) = (q.to_kind(Kind::Float), k.to_kind(Kind::Float), v.to_kind(Kind::Float));
    let mut parts = vec![];
    let mut start = 0;
    for l in lengths {
        let s = |t: &Tensor| t.narrow(0, start, l).transpose(0, 1).unsqueeze(0);
        let y = Tensor::scaled_dot_product_attention::<Tensor>(&s(&q32), &s(&k32), &s(&v32), None, 0.0, true, scale, false);
        parts.push(y.squeeze_dim(0).transpose(0, 1));
        start += l;
    }
    let want = Tensor::cat(&parts, 0);
    let diff = max_abs(&y, &want);
    // Gradients through autograd against the reference's.
    let w = Tensor::randn([total, heads, v_dim], (Kind::Float, dev));
    let grads = Tensor::run_backward(&[(y.to_kind(Kind::Float) * &w).sum(Kind::Float)], &[&q, &k, &v], true, false);
    let grads_ref = Tensor::run_backward(&[(&want * &w).sum(Kind::Float)], &[&q, &k, &v], false, false);
    let gdiff = grads.iter().zip(&grads_ref).map(|(a, b)| max_abs(a, b) / b.abs().max().double_value(&[])).fold(0f64, f64::max);
    eprintln!("varlen flash attention (bf16, MLA dims): max |out - per-sequence fp32| = {diff:.3e}; max relative grad diff = {gdiff:.3e}");
    assert!(diff <= 2e-2, "flash output differs by {diff}");
    assert!(gdiff <= 3e-2, "flash gradients differ by {gdiff}");
    // Unpadded, v's other head dim is refused with ATen's message (seen on the H100: "v must have
    // shape (total_k, num_heads_k, head_size_og)").
    let err = flash_attention_varlen(&q, &k, &v, &cu, &cu, max, max, 0.0, true, scale).err().expect("flash needs equal head dims");
    assert!(err.to_string().contains("v must have shape"), "{err}");
}

/// bf16 operands, fp32 out (the LM head's weight gradient): the scaled product written into a
/// NaN-filled tensor (not read), then added; against fp32 on the CPU within bf16 rounding.
#[test]
#[ignore]
fn addmm_accumulate_bf16_into_fp32_on_cuda() {
    let dev = cuda();
    tch::manual_seed(5);
    let (a, b) = (Tensor::randn([260, 64], (Kind::Float, Device::Cpu)), Tensor::randn([64, 96], (Kind::Float, Device::Cpu)));
    let (a16, b16) = (a.to_kind(Kind::BFloat16), b.to_kind(Kind::BFloat16));
    let want = a16.to_kind(Kind::Float).narrow(0, 0, 256).mm(&b16.to_kind(Kind::Float)) * 0.25;
    let mut out = Tensor::empty([256, 96], (Kind::Float, dev));
    let _ = out.fill_(f64::NAN);
    addmm_accumulate(&out, &a16.to_device(dev), &b16.to_device(dev), 0.25, false).unwrap();
    let scale = want.abs().max().double_value(&[]);
    assert!(max_abs(&out.to_device(Device::Cpu), &want) < 1e-2 * scale, "written");
    addmm_accumulate(&out, &a16.to_device(dev), &b16.to_device(dev), 0.25, true).unwrap();
    assert!(max_abs(&out.to_device(Device::Cpu), &(&want * 2.0)) < 2e-2 * scale, "added");
}

/// SwiGLU's NVRTC kernels against the ATen composition silu(gate) * up (forward and the gradient
/// through autograd), bf16 and fp32: rows that take the 16-byte path, an odd width (scalar path),
/// a strided view, a 3-D input and an output gradient broadcast over rows (a sum's backward); then
/// both paths timed at the benchmark's MoE shape (printed, not asserted).
#[test]
#[ignore]
fn swiglu_kernels_equal_the_composition() {
    use openseek_kernels::swiglu;
    let dev = cuda();
    tch::manual_seed(8);
    let composition = |h: &Tensor| {
        let i = h.size().last().unwrap() / 2;
        h.narrow(-1, 0, i).silu() * h.narrow(-1, i, i)
    };
    for kind in [Kind::BFloat16, Kind::Float] {
        // (shape of the tensor h is cut from, columns kept, row-broadcast gradient)
        for (shape, width, broadcast) in [(vec![37i64, 128], 128i64, false), (vec![29, 18], 18, false), (vec![3, 11, 48], 48, false), (vec![41, 136], 128, false), (vec![23, 132], 128, false), (vec![16, 64], 64, true)] {
            let base = (Tensor::randn(shape.as_slice(), (Kind::Float, dev)) * 3.0).to_kind(kind);
            let h = base.narrow(-1, 0, width);
            let mut out_shape = h.size();
            *out_shape.last_mut().unwrap() = width / 2;
            let probe = Tensor::randn(if broadcast { vec![width / 2] } else { out_shape.clone() }.as_slice(), (Kind::Float, dev)).to_kind(kind);
            let run = |f: &dyn Fn(&Tensor) -> Tensor| {
                let leaf = h.detach().set_requires_grad(true);
                let y = f(&leaf);
                let probed = if broadcast { y.sum_dim_intlist(0, false, kind) * &probe } else { &y * &probe };
                probed.sum(Kind::Float).backward();
                (y.detach(), leaf.grad())
            };
            let (y_kernel, g_kernel) = run(&|l| swiglu(l, true).unwrap());
            let (y_aten, g_aten) = run(&|l| swiglu(l, false).unwrap());
            let (y_ref, g_ref) = run(&composition);
            assert_eq!(y_kernel.size(), out_shape);
            assert_eq!(g_kernel.size(), h.size());
            assert!(y_aten.equal(&y_ref) && g_aten.equal(&g_ref), "the ATen path is the composition");
            let rel = |a: &Tensor, b: &Tensor| max_abs(a, b) / b.to_kind(Kind::Float).abs().max().double_value(&[]);
            // Elements that differ at all: only a last-bit difference of an exp may flip a rounding.
            let differ = |a: &Tensor, b: &Tensor| a.ne_tensor(b).sum(Kind::Int64).int64_value(&[]);
            let (ry, rg) = (rel(&y_kernel, &y_ref), rel(&g_kernel, &g_ref));
            let (dy, dg) = (differ(&y_kernel, &y_ref), differ(&g_kernel, &g_ref));
            eprintln!(
                "swiglu {kind:?} {shape:?}[.., :{width}] broadcast {broadcast}: max rel diff out {ry:.1e} grad {rg:.1e}; elements differing {dy}/{} and {dg}/{}",
                y_ref.numel(),
                g_ref.numel()
            );
            let tol = if kind == Kind::Float { 1e-6 } else { 1e-2 };
            assert!(ry <= tol && rg <= tol, "swiglu kernel differs from the composition");
            assert!(dy * 100 <= y_ref.numel() as i64 && dg * 100 <= g_ref.numel() as i64, "more than 1% of the elements differ");
        }
    }
    // The benchmark's MoE shape: 98,304 rows of [gate | up], I = 896; the backward pass includes
    // the probe's product (one contiguous bf16 mul, the same for both paths).
    let h = Tensor::randn([98_304, 1792], (Kind::BFloat16, dev)).set_requires_grad(true);
    let probe = Tensor::randn([98_304, 896], (Kind::BFloat16, dev));
    for kernel in [true, false] {
        let time = |backward: bool| {
            let pass = || {
                let y = swiglu(&h, kernel).unwrap();
                if backward {
                    (y * &probe).sum(Kind::Float).backward();
                }
            };
            pass();
            synchronize(0).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..20 {
                pass();
            }
            synchronize(0).unwrap();
            start.elapsed().as_secs_f64() * 50.0
        };
        let (fwd, both) = (time(false), time(true));
        eprintln!("swiglu [98304, 1792] bf16, {}: forward {fwd:.3} ms, forward + backward {both:.3} ms", if kernel { "kernels" } else { "ATen" });
    }
}
