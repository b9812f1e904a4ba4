//! The shim on CPU: fused AdamW against a hand-written AdamW step, gradient-norm clipping against
//! the plain formula, and clear errors (not crashes) where ATen refuses.

use openseek_kernels::{clip_grad_norm, current_stream, flash_attention_varlen, foreach_norm, fused_adamw, AdamW};
use tch::{Device, Kind, Tensor};

const H: AdamW = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, weight_decay: 0.1, eps: 1e-8, maximize: false };

/// torch.optim.AdamW's step, written out in tch ops (fp32), on copies.
fn reference_step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, step: f64) -> (Tensor, Tensor, Tensor) {
    let p = p * (1.0 - H.lr * H.weight_decay);
    let m = m * H.beta1 + g * (1.0 - H.beta1);
    let v = v * H.beta2 + g * g * (1.0 - H.beta2);
    let bc1 = 1.0 - H.beta1.powf(step);
    let bc2 = 1.0 - H.beta2.powf(step);
    let denom = v.sqrt() / bc2.sqrt() + H.eps;
    let p = p - (&m / denom) * (H.lr / bc1);
    (p, m, v)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn fused_adamw_equals_a_hand_written_step() {
    tch::manual_seed(3);
    let shapes: [&[i64]; 3] = [&[7, 5], &[300], &[2, 3, 33]];
    let opts = (Kind::Float, Device::Cpu);
    let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
    let m: Vec<Tensor> = shapes.iter().map(|s| Tensor::zeros(*s, opts)).collect();
    let v: Vec<Tensor> = shapes.iter().map(|s| Tensor::zeros(*s, opts)).collect();
    let steps: Vec<Tensor> = shapes.iter().map(|_| Tensor::zeros([], opts)).collect();
    let (mut rp, mut rm, mut rv): (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) =
        (params.iter().map(|t| t.copy()).collect(), m.iter().map(|t| t.copy()).collect(), v.iter().map(|t| t.copy()).collect());
    for step in 1..=4 {
        let grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts) * 0.5).collect();
        let before = params[0].copy();
        fused_adamw(&params, &grads, &m, &v, &steps, &H).unwrap();
        assert!(max_abs(&before, &params[0]) > 1e-4, "the parameters did not move");
        let mut worst = 0f64;
        for i in 0..shapes.len() {
            let (p, mm, vv) = reference_step(&rp[i], &grads[i], &rm[i], &rv[i], step as f64);
            worst = worst.max(max_abs(&p, &params[i])).max(max_abs(&mm, &m[i])).max(max_abs(&vv, &v[i]));
            (rp[i], rm[i], rv[i]) = (p, mm, vv);
            assert_eq!(steps[i].double_value(&[]), step as f64, "the step counter counts steps");
        }
        eprintln!("step {step}: max |fused - hand-written| = {worst:.3e}");
        assert!(worst <= 2.5e-7, "fused AdamW differs from the hand-written step by {worst}");
    }
}

#[test]
fn fused_adamw_on_parameters_that_require_grad() {
    let p = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let g = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let (m, v, s) = (g.zeros_like(), g.zeros_like(), Tensor::zeros([], (Kind::Float, Device::Cpu)));
    fused_adamw(&[p.shallow_clone()], &[g], &[m], &[v], &[s], &H).unwrap();
    // Step 1 of Adam moves each weight by lr (times sign), after decay.
    let want = 1.0 * (1.0 - H.lr * H.weight_decay) - H.lr;
    assert!((p.double_value(&[0]) - want).abs() < 1e-6, "got {}", p.double_value(&[0]));
}

#[test]
fn mismatched_inputs_are_errors() {
    let a = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let b = Tensor::ones([5], (Kind::Float, Device::Cpu));
    let s = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let err = fused_adamw(&[a.copy()], &[], &[], &[], &[], &H).unwrap_err();
    assert!(err.to_string().contains("1 params but 0 grads"), "{err}");
    let err = fused_adamw(&[a.copy()], &[b], &[a.zeros_like()], &[a.zeros_like()], &[s.copy()], &H).unwrap_err();
    assert!(err.to_string().contains("entry 0: grad is [5]"), "{err}");
    let err = fused_adamw(&[a.copy()], &[a.copy()], &[a.zeros_like()], &[a.zeros_like()], &[s.to_kind(Kind::Int64)], &H).unwrap_err();
    assert!(err.to_string().contains("step counter"), "{err}");
    // ATen's own refusals come back as errors with its message.
    let q = Tensor::ones([6, 2, 8], (Kind::Float, Device::Cpu));
    let cu = Tensor::from_slice(&[0i32, 2, 6]);
    let err = flash_attention_varlen(&q, &q, &q, &cu, &cu, 4, 4, 0.0, true, 0.35).err().expect("no flash attention on CPU");
    assert!(matches!(err, tch::TchError::Torch(_)) && !err.to_string().is_empty(), "{err}");
    eprintln!("flash attention on CPU: {err}");
    if !tch::Cuda::is_available() {
        assert!(current_stream(0).is_err(), "no accelerator here, so no stream");
    }
}

#[test]
fn clip_grad_norm_is_torchs() {
    tch::manual_seed(5);
    let grads: Vec<Tensor> = [[3i64, 4], [10, 1], [1, 1]].iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
    let copies: Vec<Tensor> = grads.iter().map(|g| g.copy()).collect();
    let norms = foreach_norm(&grads).unwrap();
    for (n, g) in norms.iter().zip(&grads) {
        assert!((n.double_value(&[]) - g.square().sum(Kind::Double).sqrt().double_value(&[])).abs() < 1e-5);
    }
    let half = foreach_norm(&[Tensor::full([1000], 0.1, (Kind::BFloat16, Device::Cpu))]).unwrap();
    assert_eq!(half[0].kind(), Kind::Float);
    assert!((half[0].double_value(&[]) - 0.1f32 as f64 * 1000f64.sqrt()).abs() < 1e-2);
    let want = copies.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    // Above the limit: scaled to the limit.
    let total = clip_grad_norm(&grads, 1.0).unwrap();
    assert!((total.double_value(&[]) - want).abs() < 1e-5, "{} vs {want}", total.double_value(&[]));
    let coef = 1.0 / (want + 1e-6);
    for (g, c) in grads.iter().zip(&copies) {
        assert!(max_abs(g, &(c * coef)) < 1e-6);
    }
    let after = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    assert!((after - 1.0).abs() < 1e-5);
    // Below the limit: unchanged.
    let before: Vec<Tensor> = grads.iter().map(|g| g.copy()).collect();
    let _ = clip_grad_norm(&grads, 10.0).unwrap();
    for (g, b) in grads.iter().zip(&before) {
        assert!(g.equal(b));
    }
}
