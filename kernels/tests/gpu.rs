//! The shim on a CUDA device (run on the GPU machine: `gpu -- --ignored`): fused AdamW in fp32 and
//! bf16, gradient clipping, the current stream and a device sync, varlen flash attention
//! (forward and autograd backward) against attention computed one sequence at a time, and the
//! LM head's bf16 product written or added into an fp32 gradient.

use openseek_kernels::{addmm_accumulate, clip_grad_norm, current_stream, flash_attention_varlen, fused_adamw, synchronize, AdamW};
use tch::{Device, Kind, Tensor};

const H: AdamW = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, weight_decay: 0.1, eps: 1e-8, maximize: false, grad_scale: 1.0 };

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn cuda() -> Device {
    assert!(tch::Cuda::is_available(), "these tests need a CUDA device");
    Device::Cuda(0)
}

#[test]
#[ignore]
fn fused_adamw_on_cuda_equals_the_cpu_kernel() {
    let dev = cuda();
    for kind in [Kind::Float, Kind::BFloat16] {
        tch::manual_seed(11);
        let shapes: [&[i64]; 3] = [&[64, 33], &[1000], &[3, 7, 5]];
        let mut cpu_params: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)).to_kind(kind)).collect();
        let gpu_params: Vec<Tensor> = cpu_params.iter().map(|p| p.to_device(dev)).collect();
        let state = |d: Device| -> (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) {
            (
                shapes.iter().map(|s| Tensor::zeros(*s, (kind, d))).collect(),
                shapes.iter().map(|s| Tensor::zeros(*s, (kind, d))).collect(),
                shapes.iter().map(|_| Tensor::zeros([], (Kind::Float, d))).collect(),
            )
        };
        let (mut cm, mut cv, cs) = state(Device::Cpu);
        let initial = gpu_params[0].copy();
        let (gm, gv, gs) = state(dev);
        for _ in 0..3 {
            let grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)).to_kind(kind)).collect();
            let ggrads: Vec<Tensor> = grads.iter().map(|g| g.to_device(dev)).collect();
            if kind == Kind::Float {
                fused_adamw(&cpu_params, &grads, &cm, &cv, &cs, &H).unwrap();
            } else {
                // No bf16 CPU kernel: the reference steps fp32 copies and rounds.
                let p32: Vec<Tensor> = cpu_params.iter().map(|p| p.to_kind(Kind::Float)).collect();
                let m32: Vec<Tensor> = cm.iter().map(|p| p.to_kind(Kind::Float)).collect();
                let v32: Vec<Tensor> = cv.iter().map(|p| p.to_kind(Kind::Float)).collect();
                let g32: Vec<Tensor> = grads.iter().map(|p| p.to_kind(Kind::Float)).collect();
                fused_adamw(&p32, &g32, &m32, &v32, &cs, &H).unwrap();
                for i in 0..shapes.len() {
                    cpu_params[i].copy_(&p32[i]);
                    cm[i].copy_(&m32[i]);
                    cv[i].copy_(&v32[i]);
                }
            }
            fused_adamw(&gpu_params, &ggrads, &gm, &gv, &gs, &H).unwrap();
        }
        let diff = cpu_params.iter().zip(&gpu_params).map(|(c, g)| max_abs(c, &g.to_device(Device::Cpu))).fold(0f64, f64::max);
        let moved = max_abs(&gpu_params[0], &initial);
        eprintln!("fused AdamW {kind:?}: max |cuda - cpu| after 3 steps = {diff:.3e}; step counters {}", gs[0].double_value(&[]));
        let tol = if kind == Kind::Float { 1e-6 } else { 1.6e-2 };
        assert!(diff <= tol && moved > 1e-3, "{kind:?}: CUDA fused AdamW differs by {diff}");
        assert_eq!(gs[0].double_value(&[]), 3.0);
    }
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
