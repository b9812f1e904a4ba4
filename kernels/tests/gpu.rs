//! The shim and the NVRTC kernels on a CUDA device (run on the GPU machine: `gpu -- --ignored`):
//! the AdamW kernel against its formula, the bf16-into-fp32 gradient sum against `add_`, per-tensor norms, the current stream and a device sync, CUDA graph replays, varlen attention
//! (forward and autograd backward) against attention computed one segment at a time, and the
//! LM head's bf16 product written or added into an fp32 gradient.

mod common;

use openseek_kernels::{accumulate_grad, adamw_update, addmm_accumulate, current_stream, foreach_norm, synchronize, AdamWStep, CudaGraph};
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

/// Milliseconds per call of `pass` on device 0: one warm-up call, then the mean of 20 (printed
/// figures, never asserted).
fn mean_ms(pass: impl Fn()) -> f64 {
    pass();
    synchronize(0).unwrap();
    let start = std::time::Instant::now();
    for _ in 0..20 {
        pass();
    }
    synchronize(0).unwrap();
    start.elapsed().as_secs_f64() * 50.0
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

/// The NVRTC AdamW kernel against the formula: fp32 and bf16 gradients, fp32 and bf16 moments,
/// with and without the bf16 copy, on sizes that take the vector path, its scalar tail, and
/// misaligned views (scalar path). With bf16 moments the formula's moments are rounded to bf16
/// after each step, as the kernel stores them: fp32 arithmetic in a different order can round a
/// moment to the neighbouring bf16 value, so they agree to one bf16 step (2^-7 of their largest),
/// and the weights to 2^-6 of how far the three updates moved them (a moment one bf16 step off
/// changes that step's update by up to ~2^-7 of itself; an H100 measured 2.7e-4 of a 1e-2 scale).
#[test]
#[ignore]
fn adamw_kernel_equals_the_formula() {
    let dev = cuda();
    tch::manual_seed(11);
    for (numel, offset) in [(4096i64, 0i64), (1001, 0), (777, 1)] {
        for moments in [Kind::Float, Kind::BFloat16] {
            for grad_kind in [Kind::Float, Kind::BFloat16] {
                for with_copy in [false, true] {
                    let alloc = |k: Kind| Tensor::randn([numel + offset], (Kind::Float, dev)).to_kind(k).narrow(0, offset, numel);
                    let w = alloc(Kind::Float);
                    let w0 = w.copy();
                    let (m, v) = ((alloc(Kind::Float) * 0.1).to_kind(moments), (alloc(Kind::Float).square() * 0.01).to_kind(moments));
                    let copy = with_copy.then(|| alloc(Kind::BFloat16));
                    let (mut rw, mut rm, mut rv) = (w.copy(), m.to_kind(Kind::Float).copy(), v.to_kind(Kind::Float).copy());
                    for step in 1..=3u64 {
                        let h = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 0.7 };
                        let g = alloc(grad_kind);
                        let squares = Tensor::zeros([openseek_kernels::adamw::MAX_BLOCKS], (Kind::Float, dev));
                        adamw_update(&w, copy.as_ref(), &g, &m, &v, &h, Some(&squares)).unwrap();
                        (rw, rm, rv) = reference_step(&rw, &g, &rm, &rv, &h);
                        if moments == Kind::BFloat16 {
                            (rm, rv) = (rm.to_kind(moments).to_kind(Kind::Float), rv.to_kind(moments).to_kind(Kind::Float));
                        }
                        let norm = squares.sum(Kind::Double).sqrt().double_value(&[]);
                        let want = rw.to_kind(Kind::Double).square().sum(Kind::Double).sqrt().double_value(&[]);
                        assert!((norm - want).abs() <= 1e-5 * want, "norm of the updated weights {norm} vs {want}");
                    }
                    let dw = max_abs(&w, &rw);
                    let relative = |a: &Tensor, b: &Tensor| max_abs(a, b) / b.abs().max().double_value(&[]);
                    let (dm, dv) = (relative(&m, &rm), relative(&v, &rv));
                    eprintln!("AdamW kernel, {numel} values at offset {offset}, {moments:?} moments, {grad_kind:?} grad, copy {with_copy}: max |kernel - formula| weights {dw:.2e}, moments {dm:.2e} / {dv:.2e} of their largest");
                    let (weights_tol, moments_tol) = if moments == Kind::Float { (1e-5, 1e-5) } else { (max_abs(&rw, &w0) / 64.0, 1.0 / 128.0) };
                    assert!(dw < weights_tol && dm <= moments_tol && dv <= moments_tol, "AdamW kernel differs from the formula");
                    if let Some(c) = &copy {
                        assert_eq!(max_abs(c, &w.to_kind(Kind::BFloat16)), 0.0, "the bf16 copy is the rounded master");
                    }
                }
            }
        }
    }
}

/// A bf16 gradient summed into fp32 equals ATen's mixed-dtype `add_` exactly (vector path, its
/// tail, misaligned views); then timed at the size of one expert weight stack of the benchmark
/// model against `add_` and the first micro-batch's `to_kind` (printed, not asserted).
#[test]
#[ignore]
fn accumulate_grad_equals_add_and_is_timed() {
    let dev = cuda();
    tch::manual_seed(5);
    for (numel, offset) in [(4096i64, 0i64), (1003, 0), (777, 1)] {
        let sum = Tensor::randn([numel + offset], (Kind::Float, dev)).narrow(0, offset, numel);
        let g = Tensor::randn([numel + offset], (Kind::Float, dev)).to_kind(Kind::BFloat16).narrow(0, offset, numel);
        let want = &sum + g.to_kind(Kind::Float);
        let mut got = sum.copy();
        accumulate_grad(&mut got, &g).unwrap();
        assert_eq!(max_abs(&got, &want), 0.0, "{numel} values at offset {offset}");
    }
    let n = 64 * 3 * 1280 * 896;
    let (mut sum, g) = (Tensor::zeros([n], (Kind::Float, dev)), Tensor::randn([n], (Kind::BFloat16, dev)));
    let gb = n as f64 * 10.0 / 1e9;
    let kernel = mean_ms(|| accumulate_grad(&mut sum.shallow_clone(), &g).unwrap());
    let add = mean_ms(|| {
        let _ = sum.shallow_clone().g_add_(&g);
    });
    let cast = mean_ms(|| {
        let _ = g.to_kind(Kind::Float);
    });
    eprintln!("fp32 += bf16 over {n} values: kernel {kernel:.3} ms ({:.0} GB/s), ATen add_ {add:.3} ms ({:.0} GB/s); to_kind {cast:.3} ms", gb / kernel * 1e3, gb / add * 1e3);
    let _ = sum.zero_();
}

#[test]
#[ignore]
fn norms_stream_and_sync_on_cuda() {
    let dev = cuda();
    tch::manual_seed(2);
    let grads: Vec<Tensor> = [[300i64, 20], [7, 1]].iter().map(|s| Tensor::randn(*s, (Kind::BFloat16, dev))).collect();
    for (n, g) in foreach_norm(&grads).unwrap().iter().zip(&grads) {
        let want = g.to_kind(Kind::Double).square().sum(Kind::Double).sqrt().double_value(&[]);
        assert_eq!((n.device(), n.kind()), (dev, Kind::Float));
        assert!((n.double_value(&[]) - want).abs() / want < 1e-3, "{} vs {want}", n.double_value(&[]));
    }
    let s = current_stream(0).unwrap();
    eprintln!("current stream: {s:?}");
    synchronize(0).unwrap();
}

/// A CUDA graph: the warm-up computes, the capture does not, each replay recomputes from what the
/// input tensor holds then (into the captured output), on the caller's stream, which is current
/// again after the capture.
#[test]
#[ignore]
fn cuda_graph_replays_on_new_input() {
    let dev = cuda();
    let before = current_stream(0).unwrap();
    let mut x = Tensor::from_slice(&[1f32, 2.0, 3.0]).to_device(dev);
    let w = Tensor::from_slice(&[10f32, 20.0, 30.0]).to_device(dev);
    let (graph, warm, out) = CudaGraph::capture(0, || (&x * 2.0 + &w).cumsum(0, Kind::Float)).unwrap();
    assert_eq!(current_stream(0).unwrap(), before, "the caller's stream is current again");
    assert_eq!(Vec::<f32>::try_from(&warm).unwrap(), [12.0, 36.0, 72.0]);
    for step in 0..3 {
        x.copy_(&Tensor::from_slice(&[step as f32, -1.0, 0.5]).to_device(dev));
        graph.replay().unwrap();
        let want = (&x * 2.0 + &w).cumsum(0, Kind::Float);
        assert!(out.equal(&want), "replay {step}: {out} vs {want}");
    }
}

/// Running starts of segments of the given lengths, int32 on `dev` (0 first, the total last).
fn cu_seqlens(lengths: &[i64], dev: Device) -> Tensor {
    let mut cu = vec![0i32];
    for l in lengths {
        cu.push(cu.last().unwrap() + *l as i32);
    }
    Tensor::from_slice(&cu).to_device(dev)
}

/// Varlen attention with MLA's head dims (q/k 192, v 128) against attention one segment at a time
/// in fp32 on the same bf16 inputs: the output and the gradients of q, k and v through autograd,
/// two calls' forward passes before both backward passes (as a model's layers run). Then the
/// benchmark's shape timed, forward + backward (printed, not asserted): 4 rows of 4096 tokens, 10
/// heads, as one segment per row (the work of plain causal attention, against SDPA's causal
/// attention, cuDNN), as documents of 256-1024 tokens (against the [B, 1, T, T] masked SDPA that
/// per-document attention used before) and of 32-96 tokens (the demo corpus' sizes).
#[test]
#[ignore]
fn varlen_attention_equals_attention_per_segment() {
    use openseek_kernels::{backward, varlen_attention};
    let dev = cuda();
    tch::manual_seed(4);
    let (heads, qk_dim, v_dim) = (4i64, 192i64, 128i64);
    let lengths = [5i64, 17, 9, 1, 130];
    let total: i64 = lengths.iter().sum();
    let cu = cu_seqlens(&lengths, dev);
    let max = *lengths.iter().max().unwrap();
    let scale = 1.0 / (qk_dim as f64).sqrt();
    let mk = |d: i64| Tensor::randn([total, heads, d], (Kind::BFloat16, dev));
    let (q, k, v) = (mk(qk_dim), mk(qk_dim), mk(v_dim));
    let probe = Tensor::randn([total, heads, v_dim], (Kind::BFloat16, dev)).to_kind(Kind::Float);
    // Output and gradients of (q, k, v) under sum(out * probe), in fp32.
    let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
        let leaves: Vec<Tensor> = [&q, &k, &v].iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let y = f(&leaves[0], &leaves[1], &leaves[2]);
        backward(&[&y], &[&probe.to_kind(y.kind())]).unwrap();
        let mut out = vec![y.detach().to_kind(Kind::Float)];
        out.extend(leaves.iter().map(|l| l.grad().to_kind(Kind::Float)));
        out
    };
    let per_segment = run(&|q, k, v| {
        let mut parts = vec![];
        let mut start = 0;
        for l in lengths {
            let s = |t: &Tensor| t.narrow(0, start, l).to_kind(Kind::Float).transpose(0, 1).unsqueeze(0);
            let y = Tensor::scaled_dot_product_attention::<Tensor>(&s(q), &s(k), &s(v), None, 0.0, true, scale, false);
            parts.push(y.squeeze_dim(0).transpose(0, 1));
            start += l;
        }
        Tensor::cat(&parts, 0)
    });
    // Two calls (the second on inputs scaled by 0.5) forward, then backward from both.
    let got = run(&|q, k, v| {
        let y = varlen_attention(q, k, v, &cu, max, scale).unwrap();
        let y2 = varlen_attention(&(q * 0.5), &(k * 0.5), &(v * 0.5), &cu, max, scale).unwrap();
        assert_eq!((y.size(), y.kind(), y.is_contiguous()), (vec![total, heads, v_dim], Kind::BFloat16, true));
        &y + &y2 * 0.0
    });
    for (name, a, b) in [("out", &got[0], &per_segment[0]), ("dq", &got[1], &per_segment[1]), ("dk", &got[2], &per_segment[2]), ("dv", &got[3], &per_segment[3])] {
        let rel = max_abs(a, b) / b.abs().max().double_value(&[]);
        eprintln!("varlen attention (bf16, MLA dims) {name}: max |diff| / max |per-segment fp32| = {rel:.3e}");
        assert!(rel <= 2e-2, "{name} differs from attention per segment by {rel:.3e} of its largest value");
    }
    let err = varlen_attention(&q, &k, &v, &cu.to_kind(Kind::Int64), max, scale).expect_err("int64 cu_seqlens are refused");
    assert!(err.to_string().contains("cu_seqlens"), "{err}");

    // The benchmark's shape: [B, T, H, d] projections handed over as views, as the model does.
    let (b, t, h) = (4i64, 4096i64, 10i64);
    let q = Tensor::randn([b, t, h, qk_dim], (Kind::BFloat16, dev)).set_requires_grad(true);
    let k = Tensor::randn([b, t, h, qk_dim], (Kind::BFloat16, dev)).set_requires_grad(true);
    let kv = Tensor::randn([b, t, h, 128 + v_dim], (Kind::BFloat16, dev)).set_requires_grad(true);
    let v = kv.narrow(-1, 128, v_dim);
    let dy = Tensor::randn([b, t, h, v_dim], (Kind::BFloat16, dev));
    let scale = 1.0 / (qk_dim as f64).sqrt();
    let rows = |x: &Tensor| x.view([b * t, h, -1]);
    let heads_first = |x: &Tensor| x.transpose(1, 2);
    let documents: Vec<i64> = (0..b * t / 512).map(|i| [256i64, 1024, 512, 256][i as usize % 4]).collect();
    let doc_mask = {
        let doc: Vec<i64> = documents.iter().enumerate().flat_map(|(i, &l)| std::iter::repeat_n(i as i64, l as usize)).collect();
        let doc = Tensor::from_slice(&doc).view([b, t]).to_device(dev);
        let causal = Tensor::ones([t, t], (Kind::Bool, dev)).tril(0);
        doc.unsqueeze(2).eq_tensor(&doc.unsqueeze(1)).logical_and(&causal).unsqueeze(1)
    };
    let sdpa = |mask: Option<&Tensor>| {
        let y = Tensor::scaled_dot_product_attention(&heads_first(&q), &heads_first(&k), &heads_first(&v), mask, 0.0, mask.is_none(), scale, false);
        backward(&[&y], &[&heads_first(&dy)]).unwrap();
    };
    let varlen = |lengths: &[i64]| {
        let cu = cu_seqlens(lengths, dev);
        let max = *lengths.iter().max().unwrap();
        let y = varlen_attention(&rows(&q), &rows(&k), &rows(&v), &cu, max, scale).unwrap();
        backward(&[&y], &[&rows(&dy)]).unwrap();
    };
    let whole_rows = [t; 4];
    let causal_ms = mean_ms(|| sdpa(None));
    let masked_ms = mean_ms(|| sdpa(Some(&doc_mask)));
    eprintln!("attention forward + backward, {b} x {t} tokens, {h} heads, q/k 192, v 128, bf16:");
    eprintln!("  SDPA causal over whole rows {causal_ms:.3} ms; SDPA with the [B, 1, T, T] document mask {masked_ms:.3} ms");
    let short: Vec<i64> = (0..b * t / 64).map(|i| [32i64, 96, 64, 64][i as usize % 4]).collect();
    let (whole, docs, short_docs) = (mean_ms(|| varlen(&whole_rows)), mean_ms(|| varlen(&documents)), mean_ms(|| varlen(&short)));
    eprintln!("  varlen (flash): one segment per row {whole:.3} ms, documents of 256-1024 tokens {docs:.3} ms, of 32-96 tokens {short_docs:.3} ms");
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
            mean_ms(pass)
        };
        let (fwd, both) = (time(false), time(true));
        eprintln!("swiglu [98304, 1792] bf16, {}: forward {fwd:.3} ms, forward + backward {both:.3} ms", if kernel { "kernels" } else { "ATen" });
    }
}

/// The softmax cross-entropy kernel against fp32 tensor ops (log_softmax over the valid columns,
/// softmax - one-hot, zeros in the padding): rows not a multiple of anything, vocab < cols, targets
/// at the first, last valid and padding-adjacent columns, and a target in the padding (NaN); with
/// the whole row, part of it and none of it kept in shared memory; scoring's `target_logprobs`
/// (the log-probabilities alone, the logits left as they are) against the same reference. Then the
/// head's shape timed against the tensor ops it replaces (printed, not asserted).
#[test]
#[ignore]
fn softmax_cross_entropy_equals_fp32_tensor_ops() {
    use openseek_kernels::cross_entropy::softmax_cross_entropy_cached;
    use openseek_kernels::{softmax_cross_entropy, target_logprobs};
    let dev = cuda();
    tch::manual_seed(12);
    for (rows, cols, vocab) in [(37i64, 1000i64, 993i64), (19, 40_000, 39_989), (5, 64, 64)] {
        let logits = (Tensor::randn([rows, cols], (Kind::Float, dev)) * 4.0).to_kind(Kind::BFloat16);
        let targets = Tensor::randint(vocab, [rows], (Kind::Int64, dev));
        for (i, t) in [(0, 0), (1, vocab - 1), (2, vocab / 8 * 8 - 1)] {
            let _ = targets.narrow(0, i, 1).fill_(t);
        }
        let valid = logits.narrow(1, 0, vocab).to_kind(Kind::Float);
        let logp = valid.log_softmax(-1, Kind::Float);
        let want_lp = logp.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
        let one_hot = Tensor::zeros([rows, vocab], (Kind::Float, dev)).scatter_value(1, &targets.unsqueeze(1), 1.0);
        let want = Tensor::cat(&[logp.exp() - one_hot, Tensor::zeros([rows, cols - vocab], (Kind::Float, dev))], 1);
        let before = logits.copy();
        let only = max_abs(&target_logprobs(&logits, &targets, vocab).unwrap(), &want_lp);
        eprintln!("target log-probs {rows} x {cols} (vocab {vocab}): max |log p - fp32| {only:.2e}");
        assert!(only < 1e-4, "target_logprobs differ by {only}");
        assert_eq!(max_abs(&logits, &before), 0.0, "target_logprobs leaves the logits as they are");
        for cache in [None, Some(16 * 1500), Some(0)] {
            let out = logits.copy();
            let lp = softmax_cross_entropy_cached(&out, &targets, vocab, cache).unwrap();
            let out = out.to_kind(Kind::Float);
            // One bf16 rounding (2^-9 relative) of a value good to a few fp32 ulps.
            let excess = ((&out - &want).abs() - want.abs() * (1.0 / 256.0) - 1e-7).max().double_value(&[]);
            let lp_diff = max_abs(&lp, &want_lp);
            eprintln!("softmax cross entropy {rows} x {cols} (vocab {vocab}), cache {cache:?}: max |log p - fp32| {lp_diff:.2e}, worst excess over bf16 rounding {excess:.2e}");
            assert!(excess <= 0.0, "softmax - one-hot beyond bf16 rounding of the fp32 reference by {excess}");
            assert!(lp_diff < 1e-4, "log-probabilities differ by {lp_diff}");
            if cols > vocab {
                assert_eq!(out.narrow(1, vocab, cols - vocab).abs().max().double_value(&[]), 0.0, "padding is written 0");
            }
        }
    }
    // A target outside the vocabulary: NaN log-probability, the row's probabilities as they are.
    let logits = Tensor::randn([2, 16], (Kind::Float, dev)).to_kind(Kind::BFloat16);
    let lp = softmax_cross_entropy(&logits.copy(), &Tensor::from_slice(&[3i64, 12]).to_device(dev), 12).unwrap();
    let nan: Vec<bool> = (0..2).map(|i| lp.double_value(&[i]).is_nan()).collect();
    assert_eq!(nan, [false, true], "a target past the vocabulary: NaN");
    let lp = target_logprobs(&logits, &Tensor::from_slice(&[3i64, 12]).to_device(dev), 12).unwrap();
    let nan: Vec<bool> = (0..2).map(|i| lp.double_value(&[i]).is_nan()).collect();
    assert_eq!(nan, [false, true], "target_logprobs: a target past the vocabulary gives NaN");

    // The LM head's shape: one chunk of 8192 tokens over the padded vocabulary.
    let (rows, cols, vocab) = (8192i64, 151_872i64, 151_851i64);
    let source = (Tensor::randn([rows, cols], (Kind::Float, dev)) * 3.0).to_kind(Kind::BFloat16);
    let targets = Tensor::randint(vocab, [rows], (Kind::Int64, dev));
    let work = source.copy();
    let minus_one = Tensor::full([rows, 1], -1.0, (Kind::BFloat16, dev));
    let time = |f: &dyn Fn()| {
        let mut best = f64::MAX;
        for _ in 0..4 {
            work.shallow_clone().copy_(&source);
            synchronize(0).unwrap();
            let t0 = std::time::Instant::now();
            f();
            synchronize(0).unwrap();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        best
    };
    let ops = time(&|| {
        let _ = work.narrow(1, vocab, cols - vocab).fill_(f64::NEG_INFINITY);
        let mut p = work.softmax(-1, Kind::BFloat16);
        let _picked = p.gather(1, &targets.unsqueeze(1), false).to_kind(Kind::Float).log();
        let _ = p.scatter_add_(1, &targets.unsqueeze(1), &minus_one);
    });
    let gb = (rows * cols * 2) as f64 / 1e9;
    for cache in [None, Some(0)] {
        let k = time(&|| {
            let _ = softmax_cross_entropy_cached(&work, &targets, vocab, cache).unwrap();
        });
        eprintln!(
            "softmax cross entropy {rows} x {cols}, cache {cache:?}: kernel {:.3} ms ({:.0} GB/s for one read and one write), tensor ops {:.3} ms: {:.2}x",
            k * 1e3,
            2.0 * gb / k,
            ops * 1e3,
            ops / k
        );
    }
    let only = time(&|| {
        let _ = target_logprobs(&work, &targets, vocab).unwrap();
    });
    eprintln!("target log-probs {rows} x {cols}: kernel {:.3} ms ({:.0} GB/s for one read)", only * 1e3, gb / only);
}

/// MLA's rotary joins on CUDA: the NVRTC kernels of `rope_query` and `rope_key` against the
/// model's tensor-op composition (`common::rope_reference`) and against the functions' ATen path,
/// forward and gradients through autograd, bf16 and fp32, both pair layouts, tables shared by the
/// batch and per sequence; odd batch, token and head counts with widths that take the 16-byte
/// path and widths that do not (an odd k_pe row stride, 6 pairs). Then the benchmark's shape timed
/// against the composition (printed, not asserted).
#[test]
#[ignore]
fn rope_kernels_equal_the_composition() {
    use openseek_kernels::{backward, rope_key, rope_query};
    /// (q, kv, kv_a) -> (query, key, values).
    type Joins<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> (Tensor, Tensor, Tensor) + 'a;
    let dev = cuda();
    tch::manual_seed(10);
    let apply = common::rope_reference;
    // (b, t, h, nope, rope, v, latent columns before k_pe)
    let shapes = [(3i64, 37i64, 5i64, 32i64, 16i64, 24i64, 16i64), (3, 37, 5, 32, 16, 24, 3), (2, 9, 3, 12, 12, 10, 5), (1, 64, 10, 128, 64, 128, 512)];
    for kind in [Kind::BFloat16, Kind::Float] {
        for &(b, t, h, nope, rope, v, lat) in &shapes {
            for interleave in [true, false] {
                for per_sequence in [false, true] {
                    let what = format!("{kind:?} b{b} t{t} h{h} nope {nope} rope {rope} v {v} k_pe at {lat}, interleave {interleave}, per-sequence {per_sequence}");
                    let table = if per_sequence { vec![b, t, rope] } else { vec![t, rope] };
                    let cos = Tensor::randn(table.as_slice(), (Kind::Float, dev)).to_kind(kind);
                    let sin = Tensor::randn(table.as_slice(), (Kind::Float, dev)).to_kind(kind);
                    let (c4, s4) = (cos.unsqueeze(-2), sin.unsqueeze(-2));
                    let q = (Tensor::randn([b, t, h, nope + rope], (Kind::Float, dev)) * 2.0).to_kind(kind);
                    let kv = Tensor::randn([b, t, h, nope + v], (Kind::Float, dev)).to_kind(kind);
                    let kv_a = Tensor::randn([b, t, lat + rope], (Kind::Float, dev)).to_kind(kind);
                    let (pq, pk, pv) = (
                        Tensor::randn([b, t, h, nope + rope], (Kind::Float, dev)).to_kind(kind),
                        Tensor::randn([b, t, h, nope + rope], (Kind::Float, dev)).to_kind(kind),
                        Tensor::randn([b, t, h, v], (Kind::Float, dev)).to_kind(kind),
                    );
                    // Outputs and gradients of (q, kv, kv_a) under sum(out * probe); the values and
                    // their gradient go through the transposed views attention takes.
                    let run = |f: &Joins<'_>| {
                        let leaves: Vec<Tensor> = [&q, &kv, &kv_a].iter().map(|t| t.detach().set_requires_grad(true)).collect();
                        let (yq, yk, yv) = f(&leaves[0], &leaves[1], &leaves[2]);
                        let yv = yv.transpose(1, 2);
                        backward(&[&yq, &yk, &yv], &[&pq, &pk, &pv.transpose(1, 2)]).unwrap();
                        (vec![yq.detach(), yk.detach(), yv.transpose(1, 2).contiguous()], leaves.iter().map(|l| l.grad()).collect::<Vec<_>>())
                    };
                    let fused = |kernel: bool, q: &Tensor, kv: &Tensor, kv_a: &Tensor| {
                        let yq = rope_query(q, &cos, &sin, nope, interleave, kernel).unwrap();
                        let (yk, yv) = rope_key(kv, &kv_a.narrow(-1, lat, rope), &cos, &sin, nope, interleave, kernel).unwrap();
                        (yq, yk, yv)
                    };
                    let composition = |q: &Tensor, kv: &Tensor, kv_a: &Tensor| {
                        let yq = Tensor::cat(&[q.narrow(-1, 0, nope), apply(&q.narrow(-1, nope, rope), &c4, &s4, interleave)], -1);
                        let k_rot = apply(&kv_a.narrow(-1, lat, rope).unsqueeze(2), &c4, &s4, interleave).expand([b, t, h, rope], false);
                        (yq, Tensor::cat(&[kv.narrow(-1, 0, nope), k_rot], -1), kv.narrow(-1, nope, v))
                    };
                    let (y_kernel, g_kernel) = run(&|q, kv, kv_a| fused(true, q, kv, kv_a));
                    let (y_aten, g_aten) = run(&|q, kv, kv_a| fused(false, q, kv, kv_a));
                    let (y_ref, g_ref) = run(&composition);
                    let rel = |a: &Tensor, b: &Tensor| max_abs(a, b) / b.to_kind(Kind::Float).abs().max().double_value(&[]);
                    let differ = |a: &Tensor, b: &Tensor| a.ne_tensor(b).sum(Kind::Int64).int64_value(&[]);
                    let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                    for (name, got, aten, want) in [
                        ("q", &y_kernel[0], &y_aten[0], &y_ref[0]),
                        ("k", &y_kernel[1], &y_aten[1], &y_ref[1]),
                        ("v", &y_kernel[2], &y_aten[2], &y_ref[2]),
                        ("dq", &g_kernel[0], &g_aten[0], &g_ref[0]),
                        ("dkv", &g_kernel[1], &g_aten[1], &g_ref[1]),
                        ("dk_pe", &g_kernel[2], &g_aten[2], &g_ref[2]),
                    ] {
                        assert_eq!(got.size(), want.size(), "{name} {what}: shape");
                        let (r, ra, d) = (rel(got, want), rel(aten, want), differ(got, want));
                        if r > 0.0 || ra > 0.0 {
                            eprintln!("rope {name} {what}: max rel diff kernel {r:.1e}, ATen path {ra:.1e}; elements differing {d}/{}", want.numel());
                        }
                        assert!(r <= tol && ra <= tol, "rope {name} {what}: differs from the composition");
                        // The kernels round where the composition does; only fp32 sums over heads
                        // may take another order.
                        if kind == Kind::BFloat16 || name != "dk_pe" {
                            assert!(d * 100 <= want.numel() as i64, "rope {name} {what}: more than 1% of the elements differ");
                        }
                    }
                }
            }
        }
    }
    // The benchmark's shape: 4 x 4096 tokens, 10 heads, nope 128, rope 64, v 128, k_pe after 512
    // latent columns; forward and backward from upstream gradients, kernels vs the composition.
    let (b, t, h) = (4i64, 4096i64, 10i64);
    let (cos, sin) = (Tensor::randn([t, 64], (Kind::BFloat16, dev)), Tensor::randn([t, 64], (Kind::BFloat16, dev)));
    let (c4, s4) = (cos.unsqueeze(-2), sin.unsqueeze(-2));
    let q = Tensor::randn([b, t, h, 192], (Kind::BFloat16, dev)).set_requires_grad(true);
    let kv = Tensor::randn([b, t, h, 256], (Kind::BFloat16, dev)).set_requires_grad(true);
    let kv_a = Tensor::randn([b, t, 576], (Kind::BFloat16, dev)).set_requires_grad(true);
    let (gq, gk, gv) = (Tensor::randn([b, t, h, 192], (Kind::BFloat16, dev)), Tensor::randn([b, t, h, 192], (Kind::BFloat16, dev)), Tensor::randn([b, t, h, 128], (Kind::BFloat16, dev)));
    for kernel in [true, false] {
        let time = |with_backward: bool| {
            let pass = || {
                let (yq, yk, yv) = if kernel {
                    let yq = rope_query(&q, &cos, &sin, 128, true, true).unwrap();
                    let (yk, yv) = rope_key(&kv, &kv_a.narrow(-1, 512, 64), &cos, &sin, 128, true, true).unwrap();
                    (yq, yk, yv)
                } else {
                    let yq = Tensor::cat(&[q.narrow(-1, 0, 128), apply(&q.narrow(-1, 128, 64), &c4, &s4, true)], -1);
                    let k_rot = apply(&kv_a.narrow(-1, 512, 64).unsqueeze(2), &c4, &s4, true).expand([b, t, h, 64], false);
                    (yq, Tensor::cat(&[kv.narrow(-1, 0, 128), k_rot], -1), kv.narrow(-1, 128, 128))
                };
                if with_backward {
                    backward(&[&yq, &yk, &yv], &[&gq, &gk, &gv]).unwrap();
                }
            };
            mean_ms(pass)
        };
        let (fwd, both) = (time(false), time(true));
        eprintln!("rope joins [4, 4096, 10, 192] bf16, {}: forward {fwd:.3} ms, forward + backward {both:.3} ms", if kernel { "kernels" } else { "composition" });
    }
}

/// combine_rows' NVRTC kernels against its ATen path (a gather and a batched product; the
/// backward's broadcast product gathered by `order`), forward and the gradients for y and w through
/// autograd, bf16 and fp32: widths that take the 16-byte path and odd ones (scalar path), k from 1
/// to 8, token counts not a multiple of a block's 8. Then the benchmark's MoE shape timed (printed,
/// not asserted).
#[test]
#[ignore]
fn combine_kernels_equal_the_aten_path() {
    use openseek_kernels::{backward, combine_rows};
    let dev = cuda();
    tch::manual_seed(13);
    let rel = |a: &Tensor, b: &Tensor| max_abs(a, b) / b.to_kind(Kind::Float).abs().max().double_value(&[]);
    for kind in [Kind::BFloat16, Kind::Float] {
        for (n, k, width) in [(37i64, 6i64, 1280i64), (29, 3, 18), (13, 1, 64), (5, 8, 40), (3, 6, 7)] {
            let order = Tensor::randperm(n * k, (Kind::Int64, dev));
            let rank = order.argsort(0, false);
            let y = Tensor::randn([n * k, width], (Kind::Float, dev)).to_kind(kind);
            let w = Tensor::rand([n, k], (Kind::Float, dev)).to_kind(kind);
            let probe = Tensor::randn([n, width], (Kind::Float, dev)).to_kind(kind);
            let run = |kernel: bool| {
                let (yl, wl) = (y.detach().set_requires_grad(true), w.detach().set_requires_grad(true));
                let out = combine_rows(&yl, &wl, &rank, &order, kernel).unwrap();
                backward(&[&out], &[&probe]).unwrap();
                (out.detach(), yl.grad(), wl.grad())
            };
            let (out_k, dy_k, dw_k) = run(true);
            let (out_a, dy_a, dw_a) = run(false);
            assert_eq!((out_k.size(), dy_k.size(), dw_k.size()), (vec![n, width], vec![n * k, width], vec![n, k]));
            assert_eq!((out_k.kind(), dy_k.kind(), dw_k.kind()), (kind, kind, kind));
            let (ro, rw) = (rel(&out_k, &out_a), rel(&dw_k, &dw_a));
            eprintln!("combine {kind:?} n {n} k {k} H {width}: max rel diff out {ro:.1e} dw {rw:.1e}");
            // dy is one rounded product either way: the same bits. Sums differ in order only.
            assert!(dy_k.equal(&dy_a), "dy differs from w * dout gathered by order");
            let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
            assert!(ro <= tol && rw <= tol, "combine kernels differ from the ATen path");
        }
    }
    // The benchmark's MoE shape: 16,384 tokens, 6 slots, H = 1280.
    let (n, k, width) = (16_384i64, 6i64, 1280i64);
    let order = Tensor::randperm(n * k, (Kind::Int64, dev));
    let rank = order.argsort(0, false);
    let y = Tensor::randn([n * k, width], (Kind::BFloat16, dev)).set_requires_grad(true);
    let w = Tensor::rand([n, k], (Kind::Float, dev)).to_kind(Kind::BFloat16).set_requires_grad(true);
    let probe = Tensor::randn([n, width], (Kind::BFloat16, dev));
    for kernel in [true, false] {
        let time = |with_backward: bool| {
            let pass = || {
                let out = combine_rows(&y, &w, &rank, &order, kernel).unwrap();
                if with_backward {
                    backward(&[&out], &[&probe]).unwrap();
                }
            };
            mean_ms(pass)
        };
        let (fwd, both) = (time(false), time(true));
        eprintln!("combine [16384 x 6, 1280] bf16, {}: forward {fwd:.3} ms, forward + backward {both:.3} ms", if kernel { "kernels" } else { "ATen" });
    }
}
