//! AdamW as `torch.optim.AdamW` computes it: decoupled weight decay (none on norms, biases and
//! the router's correction bias), bias-corrected moments kept in fp32, and global gradient-norm
//! clipping as `clip_grad_norm_`. On CUDA with fp32 weights the update is PyTorch's fused kernel
//! (`_fused_adamw_`, through openseek-kernels) and the norms `_foreach_norm`; elsewhere (the CPU
//! path, pure bf16 weights) the same formulas run as tensor ops, one parameter at a time.

use openseek_common::Failure;
use openseek_model::safetensors::{self, SafetensorsFile};
use std::path::Path;
use tch::{Kind, Tensor};

pub struct Param {
    pub name: String,
    /// The weight the model uses (a leaf that requires grad): fp32 master or pure bf16.
    pub tensor: Tensor,
    pub decay: bool,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates taken so far (the bias-correction count).
    pub steps: u64,
    /// Whether the fused CUDA path is used.
    fused: bool,
}

/// Norms, biases and the router's correction bias get no weight decay.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias") || name.ends_with("e_score_correction_bias"))
}

impl AdamW {
    /// Optimise `params` (name, leaf tensor); moments start at zero, fp32, on the params' device.
    pub fn new(params: Vec<(String, Tensor)>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> AdamW {
        let params = params
            .into_iter()
            .map(|(name, tensor)| {
                let zeros = || Tensor::zeros(tensor.size(), (Kind::Float, tensor.device()));
                Param { decay: decays(&name), exp_avg: zeros(), exp_avg_sq: zeros(), name, tensor }
            })
            .collect();
        let mut opt = AdamW { params, beta1, beta2, eps, weight_decay, steps: 0, fused: false };
        opt.fused = opt.params.first().is_some_and(|p| p.tensor.device().is_cuda()) && opt.params.iter().all(|p| p.tensor.kind() == Kind::Float);
        opt
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.tensor.grad()).filter(|g| g.defined()).collect()
    }

    /// sqrt of the sum of squared gradient entries, all parameters together (fp32 accumulation per tensor).
    pub fn grad_norm(&self) -> Tensor {
        let grads = self.grads();
        let norms: Vec<Tensor> = if self.fused {
            openseek_kernels::foreach_norm(&grads).expect("_foreach_norm")
        } else {
            grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect()
        };
        Tensor::stack(&norms, 0).norm()
    }

    pub fn param_norm(&self) -> Tensor {
        let norms: Vec<Tensor> = self.params.iter().map(|p| p.tensor.detach().to_kind(Kind::Float).norm()).collect();
        Tensor::stack(&norms, 0).norm()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One update at learning rate `lr`, gradients scaled by `grad_scale` (the clipping factor).
    pub fn step(&mut self, lr: f64, grad_scale: f64) {
        if self.fused {
            return self.step_fused(lr, grad_scale);
        }
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias_correction1 = 1.0 - b1.powi(t);
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        let _guard = tch::no_grad_guard();
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let g = if grad_scale != 1.0 { g * grad_scale } else { g };
            let master = p.tensor.kind() == Kind::Float;
            let mut w = if master { p.tensor.shallow_clone() } else { p.tensor.to_kind(Kind::Float) };
            if p.decay && self.weight_decay != 0.0 {
                let _ = w.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = p.exp_avg.lerp_(&g, 1.0 - b1);
            // addcmul_(g, g, value=1-b2) evaluates (value * g) * g.
            let _ = p.exp_avg_sq.g_mul_scalar_(b2).g_add_(&((&g * (1.0 - b2)) * &g));
            let denom = (p.exp_avg_sq.sqrt() / bias_correction2_sqrt) + self.eps;
            let _ = w.addcdiv_(&(&p.exp_avg * -step_size), &denom);
            if !master {
                p.tensor.copy_(&w);
            }
        }
    }

    fn step_fused(&mut self, lr: f64, grad_scale: f64) {
        let _guard = tch::no_grad_guard();
        let device = self.params[0].tensor.device();
        let scale = Tensor::from(grad_scale as f32).to_device(device);
        let with_grad: Vec<&Param> = self.params.iter().filter(|p| p.tensor.grad().defined()).collect();
        if grad_scale != 1.0 {
            for p in &with_grad {
                let _ = p.tensor.grad().g_mul_(&scale);
            }
        }
        for decay in [true, false] {
            let group: Vec<&&Param> = with_grad.iter().filter(|p| p.decay == decay).collect();
            if group.is_empty() {
                continue;
            }
            let list = |f: &dyn Fn(&Param) -> Tensor| group.iter().map(|p| f(p)).collect::<Vec<Tensor>>();
            // The kernel increments the counts before using them.
            let steps = list(&|_| Tensor::from(self.steps as f32).to_device(device));
            let h = openseek_kernels::AdamW {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                weight_decay: if decay { self.weight_decay } else { 0.0 },
                eps: self.eps,
                maximize: false,
            };
            openseek_kernels::fused_adamw(
                &list(&|p| p.tensor.shallow_clone()),
                &list(&|p| p.tensor.grad()),
                &list(&|p| p.exp_avg.shallow_clone()),
                &list(&|p| p.exp_avg_sq.shallow_clone()),
                &steps,
                &h,
            )
            .expect("_fused_adamw_");
        }
        self.steps += 1;
    }

    /// The moments, for a checkpoint (the step count goes into the trainer state).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.shallow_clone()));
        }
        out
    }

    pub fn save(&self, path: &Path, out: &mut openseek_common::AtomicOutputs) -> Result<(), Failure> {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(out.create(path)?);
        safetensors::write(&mut w, &self.state())?;
        w.flush().map_err(|e| Failure::io_at(path, "cannot write", &e))
    }

    pub fn load(&mut self, path: &Path, steps: u64) -> Result<(), Failure> {
        let f = SafetensorsFile::open(path)?;
        self.steps = steps;
        for p in &mut self.params {
            for (what, dst) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                let t = f.tensor(&format!("{what}.{}", p.name), Kind::Float)?;
                if t.size() != dst.size() {
                    return Err(Failure::data(format!("{}: {what}.{} is {:?}, the model's is {:?}", path.display(), p.name, t.size(), dst.size())));
                }
                *dst = t.to_device(dst.device());
            }
        }
        Ok(())
    }
}
