//! AdamW as `torch.optim.AdamW` computes it: decoupled weight decay (none on norms, biases and
//! the router's correction bias), bias-corrected moments kept in fp32, and global gradient-norm
//! clipping as `clip_grad_norm_`. The moments are fp32, or bf16 with `adam_moments_dtype = "bf16"`
//! (the arithmetic in fp32, the stored moments rounded; checkpoints hold them as fp32).
//!
//! Mixed precision as Megatron keeps it: the model's weights are bf16 leaves (so the forward and
//! backward passes cast nothing and the gradients come out in bf16) and the optimizer holds their
//! fp32 master copies; each update rewrites a leaf from its master. With several micro-batches per
//! step the gradients are summed in fp32 after each one. The LM head (tied embedding) and the
//! router stay fp32 leaves: the head's gradient is summed over loss chunks in fp32 in place, and
//! the router computes in fp32.
//!
//! On CUDA each update is one pass of an NVRTC kernel per parameter (openseek-kernels'
//! `adamw_update`, which also writes the bf16 leaf and the weights' sums of squares for the
//! parameter norm) and the gradient norm `_foreach_norm`; elsewhere (the CPU path, pure bf16
//! weights) the same formulas run as tensor ops, one parameter at a time.
//! Nothing waits for the update on the host: the next step's work queues behind it (the log's
//! parameter norm, from the kernel's sums of squares, is read at the next synchronisation).
//! [`Optimizer`] picks it at world size 1 and openseek-dist's ZeRO-1 over several ranks (or with
//! NCCL forced on one), which runs the same mixed precision on its shard: bf16 parameters in
//! bucket buffers, fp32 masters and moments 1/world per rank, the same kernel; both save the same
//! re-shardable optimizer files.

use openseek_common::Failure;
use openseek_dist::layout::{FlatLayout, Param as LayoutParam};
use openseek_dist::reshard::{self, ShardInfo};
use openseek_dist::{Comm, NamedParam, Zero1};
use crate::microbatch::GradReady;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub struct Param {
    pub name: String,
    /// The weight the model uses (a leaf that requires grad): fp32, or bf16 with a `master`.
    pub tensor: Tensor,
    /// The fp32 master weights of a bf16 leaf.
    pub master: Option<Tensor>,
    /// The fp32 sum of the finished micro-batches' gradients of a bf16 leaf ([`AdamW::accumulate_grads`]).
    main_grad: Option<Tensor>,
    pub decay: bool,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

impl Param {
    /// The fp32 weights the update applies to (the master, else the leaf itself).
    pub fn weights(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.tensor)
    }

    /// The step's gradient so far (undefined when the parameter got none).
    fn grad(&self) -> Tensor {
        match &self.main_grad {
            Some(g) => g.shallow_clone(),
            None => self.tensor.grad(),
        }
    }
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates taken so far (the bias-correction count).
    pub steps: u64,
    /// Whether the CUDA kernel is used (every parameter has fp32 weights on a CUDA device).
    fused: bool,
    /// After a kernel update of every parameter: partial sums of the updated weights' squares
    /// ([`AdamW::weight_norm`] without another pass over the weights).
    squares: Option<Tensor>,
    /// Clear gradients to none after an update (else zero them; see `clear_grad`).
    pub grad_none: bool,
    /// Sum micro-batch gradients with openseek-kernels' `accumulate_grad` (else `add_`).
    pub accumulate_kernel: bool,
}

/// Norms, biases and the router's correction bias get no weight decay.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias") || name.ends_with("e_score_correction_bias"))
}

/// Parameters that stay fp32 leaves under mixed precision: the LM head (or the tied embedding),
/// whose gradient the loss sums over chunks in fp32 in place, and the router, which computes in fp32.
fn stays_fp32(name: &str) -> bool {
    name == "model.embed_tokens.weight" || name == "lm_head.weight" || name.ends_with(".mlp.gate.weight")
}

/// After an update: no gradient (`zero_grad(set_to_none=True)`, PyTorch's default), so the next
/// backward pass stores each gradient rather than adding it to zeros, and no gradient memory is
/// held through the forward pass; with `to_none` false (the `grad_none` fast path off) zeroed in place.
fn clear_grad(t: &mut Tensor, to_none: bool) {
    if to_none {
        openseek_kernels::set_grad(t, None).expect("clearing a gradient");
    } else {
        t.zero_grad();
    }
}

impl AdamW {
    /// Optimise `params` (name, leaf tensor); moments start at zero, of kind `moments` (fp32 or
    /// bf16), on the params' device. With `bf16_leaves`, fp32 leaves (but those that
    /// [`stays_fp32`]) become bf16 in place (the model sees the change) and their fp32 values the
    /// optimizer's masters.
    pub fn new(params: Vec<(String, Tensor)>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, bf16_leaves: bool, moments: Kind) -> AdamW {
        let params: Vec<Param> = params
            .into_iter()
            .map(|(name, mut tensor)| {
                let zeros = || Tensor::zeros(tensor.size(), (moments, tensor.device()));
                let (exp_avg, exp_avg_sq) = (zeros(), zeros());
                let master = (bf16_leaves && tensor.kind() == Kind::Float && !stays_fp32(&name)).then(|| {
                    let master = tensor.detach().copy();
                    tensor.set_data(&master.to_kind(Kind::BFloat16));
                    master
                });
                Param { decay: decays(&name), exp_avg, exp_avg_sq, master, main_grad: None, name, tensor }
            })
            .collect();
        let mut opt = AdamW { params, beta1, beta2, eps, weight_decay, steps: 0, fused: false, squares: None, grad_none: true, accumulate_kernel: true };
        opt.fused = opt.params.first().is_some_and(|p| p.tensor.device().is_cuda()) && opt.params.iter().all(|p| p.weights().kind() == Kind::Float);
        opt
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect()
    }

    /// After a micro-batch of a step that has several: add the bf16 leaves' gradients into their
    /// fp32 sums and clear them (fp32 leaves keep summing in their own `.grad`).
    pub fn accumulate_grads(&mut self) {
        let _guard = tch::no_grad_guard();
        for p in self.params.iter_mut().filter(|p| p.master.is_some()) {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            match &mut p.main_grad {
                Some(sum) if self.accumulate_kernel => openseek_kernels::accumulate_grad(sum, &g).unwrap_or_else(|e| panic!("summing the gradient of {}: {e}", p.name)),
                Some(sum) => {
                    let _ = sum.g_add_(&g);
                }
                None => p.main_grad = Some(g.to_kind(Kind::Float)),
            }
            clear_grad(&mut p.tensor, self.grad_none);
        }
    }

    /// sqrt of the sum of squared gradient entries, all parameters together (fp32 accumulation per tensor).
    pub fn grad_norm(&self) -> Tensor {
        norm_of(&self.grads().iter().collect::<Vec<_>>())
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            clear_grad(&mut p.tensor, self.grad_none);
            p.main_grad = None;
        }
    }

    /// One update at learning rate `lr`, gradients scaled by `grad_scale` (the clipping factor).
    pub fn step(&mut self, lr: f64, grad_scale: f64) {
        self.steps += 1;
        self.squares = None;
        let _guard = tch::no_grad_guard();
        if self.fused {
            let h = openseek_kernels::AdamWStep {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: 0.0,
                step: self.steps,
                grad_scale,
            };
            let squares = Tensor::zeros([self.params.len() as i64, openseek_kernels::adamw::MAX_BLOCKS], (Kind::Float, self.params[0].tensor.device()));
            let mut all = true;
            for (i, p) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    all = false;
                    continue;
                }
                let h = openseek_kernels::AdamWStep { weight_decay: if p.decay { self.weight_decay } else { 0.0 }, ..h };
                openseek_kernels::adamw_update(p.weights(), p.master.as_ref().map(|_| &p.tensor), &g, &p.exp_avg, &p.exp_avg_sq, &h, Some(&squares.get(i as i64)))
                    .unwrap_or_else(|e| panic!("AdamW kernel on {}: {e}", p.name));
            }
            self.squares = all.then_some(squares);
            return;
        }
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias_correction1 = 1.0 - b1.powi(t);
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        for p in &mut self.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let g = if grad_scale != 1.0 { g * grad_scale } else { g };
            let fp32 = p.weights().kind() == Kind::Float;
            let mut w = if fp32 { p.weights().shallow_clone() } else { p.tensor.to_kind(Kind::Float) };
            if p.decay && self.weight_decay != 0.0 {
                let _ = w.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            // The moments in fp32 (themselves when they are fp32), stored back when they are bf16.
            let (mut exp_avg, mut exp_avg_sq) = (p.exp_avg.to_kind(Kind::Float), p.exp_avg_sq.to_kind(Kind::Float));
            let _ = exp_avg.lerp_(&g, 1.0 - b1);
            // addcmul_(g, g, value=1-b2) evaluates (value * g) * g.
            let _ = exp_avg_sq.g_mul_scalar_(b2).g_add_(&((&g * (1.0 - b2)) * &g));
            if p.exp_avg.kind() != Kind::Float {
                p.exp_avg.copy_(&exp_avg);
                p.exp_avg_sq.copy_(&exp_avg_sq);
                (exp_avg, exp_avg_sq) = (p.exp_avg.to_kind(Kind::Float), p.exp_avg_sq.to_kind(Kind::Float));
            }
            let denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt) + self.eps;
            let _ = w.addcdiv_(&(&exp_avg * -step_size), &denom);
            if p.master.is_some() || !fp32 {
                p.tensor.copy_(&w);
            }
        }
    }

    /// The L2 norm of all weights (fp32 masters where the leaves are bf16 copies): from the last
    /// kernel update's sums of squares when it covered every parameter, else one pass.
    fn weight_norm(&mut self) -> Tensor {
        if let Some(q) = self.squares.take() {
            return q.sum(Kind::Float).sqrt();
        }
        let weights: Vec<&Tensor> = self.params.iter().map(|p| p.weights()).collect();
        norm_of(&weights)
    }

    /// The flat layout of the parameters at world size 1 (the one [`Zero1`] uses at any world size).
    fn layout(&self) -> FlatLayout {
        FlatLayout::new(self.params.iter().map(|p| LayoutParam { name: p.name.clone(), numel: p.tensor.numel(), decay: p.decay }).collect(), 1)
    }

    /// Write the state as the one shard of a world of one (`optim-00000-of-00001.safetensors`:
    /// flat fp32 master weights and moments), which [`Zero1::load`] re-shards on any world size.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, Failure> {
        let flat = |f: &dyn Fn(&Param) -> Tensor| -> Result<Vec<f32>, Failure> {
            let parts: Vec<Tensor> = self.params.iter().map(|p| f(p).detach().to_kind(Kind::Float).reshape([-1]).to_device(Device::Cpu)).collect();
            Vec::<f32>::try_from(&Tensor::cat(&parts, 0)).map_err(|e| Failure::software(format!("optimizer state to host: {e}")))
        };
        let (m, a, s) = (flat(&|p| p.weights().shallow_clone())?, flat(&|p| p.exp_avg.shallow_clone())?, flat(&|p| p.exp_avg_sq.shallow_clone())?);
        let layout = self.layout();
        let info = ShardInfo { rank: 0, world: 1, ranges: layout.owned(0), total: layout.total(), fingerprint: layout.fingerprint(), step: self.steps };
        reshard::save_shard(dir, &info, &[("master", &m), ("exp_avg", &a), ("exp_avg_sq", &s)])
    }

    /// Read the moments and the step count from the shards in `dir`, saved on any world size.
    pub fn load(&mut self, dir: &Path) -> Result<(), Failure> {
        let layout = self.layout();
        let (mut state, steps) = reshard::load_ranges(dir, &layout.owned(0), &["exp_avg", "exp_avg_sq"], &layout.fingerprint())?;
        for what in ["exp_avg", "exp_avg_sq"] {
            let all = Tensor::from_slice(&state.remove(what).unwrap());
            for (i, p) in self.params.iter_mut().enumerate() {
                let dst = if what == "exp_avg" { &mut p.exp_avg } else { &mut p.exp_avg_sq };
                let part = all.narrow(0, layout.offset(i) as i64, p.tensor.numel() as i64).view(dst.size().as_slice());
                *dst = part.to_device(dst.device()).to_kind(dst.kind());
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// The optimizer's settings (from the training config).
#[derive(Debug, Clone, Copy)]
pub struct OptimizerConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Mixed precision: bf16 leaves with fp32 masters (else the leaves keep their dtype).
    pub bf16_leaves: bool,
    /// Adam's moments: fp32 or bf16.
    pub moments: Kind,
    /// Clear gradients to none after an update (else zero them).
    pub grad_none: bool,
    /// Sum micro-batch gradients with one CUDA kernel (else `add_`).
    pub accumulate_kernel: bool,
    /// ZeRO-1: the parameter all-gathers overlap the next forward pass.
    pub overlap_param_gather: bool,
}

/// The optimizer of a run: [`AdamW`] with the whole state when the collectives are local (one
/// rank), or [`Zero1`] (the state sharded, gradients reduce-scattered in fp32, parameters
/// all-gathered) over several ranks or with NCCL forced on one. Both save the same re-shardable
/// files, so a run resumes on any number of ranks.
pub enum Optimizer {
    Full(AdamW),
    Sharded { zero: Box<Zero1>, leaves: Vec<Tensor>, overlap_param_gather: bool },
}

impl Optimizer {
    /// `params` are the model's trainable leaves. With `bf16_leaves` (mixed precision) they become
    /// bf16 leaves with fp32 masters in the optimizer, but those that [`stays_fp32`].
    pub fn new(params: Vec<(String, Tensor)>, comm: &mut Comm, c: OptimizerConfig) -> Result<Optimizer, Failure> {
        if comm.is_local() {
            let mut adam = AdamW::new(params, c.beta1, c.beta2, c.eps, c.weight_decay, c.bf16_leaves, c.moments);
            adam.grad_none = c.grad_none;
            adam.accumulate_kernel = c.accumulate_kernel;
            return Ok(Optimizer::Full(adam));
        }
        let named: Vec<NamedParam> = params
            .iter()
            .map(|(n, t)| {
                let mixed = c.bf16_leaves && t.kind() == Kind::Float && !stays_fp32(n);
                let leaf_kind = if mixed { Kind::BFloat16 } else { t.kind() };
                NamedParam { name: n.clone(), tensor: t.shallow_clone(), decay: decays(n), bucket: GradReady::of(n).key(), leaf_kind }
            })
            .collect();
        // Ranks that built their weights independently start from rank 0's.
        Zero1::broadcast_params(&named, comm)?;
        let leaves = params.into_iter().map(|(_, t)| t).collect();
        let adam = openseek_dist::AdamWConfig { beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay, moments: c.moments };
        let mut zero = Zero1::new(named, comm, adam)?;
        zero.accumulate_kernel = c.accumulate_kernel;
        Ok(Optimizer::Sharded { zero: Box::new(zero), leaves, overlap_param_gather: c.overlap_param_gather })
    }

    /// What the optimizer holds per rank, in GiB, for the log: parameters, gradient buffer and
    /// optimizer state (masters, moments, this rank's gradient slices).
    pub fn memory_line(&self) -> String {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let (params, grads, state) = match self {
            Optimizer::Full(a) => {
                let bytes = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
                let params = a.params.iter().map(|p| bytes(&p.tensor)).sum();
                let state = a.params.iter().map(|p| bytes(&p.exp_avg) + bytes(&p.exp_avg_sq) + p.master.as_ref().map_or(0, bytes)).sum();
                (params, 0, state)
            }
            Optimizer::Sharded { zero, .. } => zero.memory_bytes(),
        };
        let kind = match self {
            Optimizer::Full(_) => "AdamW, whole state; gradients in the leaves",
            Optimizer::Sharded { .. } => "ZeRO-1",
        };
        format!("parameters {:.2} GiB, gradient buffer {:.2} GiB, optimizer state {:.2} GiB ({kind})", gib(params), gib(grads), gib(state))
    }

    /// The trainable leaves (shallow clones sharing storage and gradients with the model).
    pub fn leaves(&self) -> Vec<&Tensor> {
        match self {
            Optimizer::Full(a) => a.params.iter().map(|p| &p.tensor).collect(),
            Optimizer::Sharded { leaves, .. } => leaves.iter().collect(),
        }
    }

    /// In the last micro-batch's backward pass, the gradients complete at `point`: the sharded
    /// optimizer starts averaging them over ranks (overlapped with the rest of the pass).
    pub fn grads_ready(&mut self, comm: &mut Comm, point: GradReady) -> Result<(), Failure> {
        match self {
            Optimizer::Full(_) => Ok(()),
            Optimizer::Sharded { zero, .. } => zero.grads_ready(point.key(), comm),
        }
    }

    /// In the forward pass, before the parameters of `point` are used: the device waits for their
    /// overlapped all-gather (the head's point waits for all that remain).
    pub fn params_needed(&mut self, comm: &mut Comm, point: GradReady) -> Result<(), Failure> {
        match self {
            Optimizer::Full(_) => Ok(()),
            Optimizer::Sharded { zero, .. } if point == GradReady::Head => zero.all_params_ready(comm),
            Optimizer::Sharded { zero, .. } => zero.params_ready(point.key(), comm),
        }
    }

    /// After the last micro-batch's backward: average the gradients over ranks (in fp32, each rank
    /// keeping its slices; what [`Optimizer::grads_ready`] has not started) and return the global
    /// gradient norm.
    pub fn reduce_grads(&mut self, comm: &mut Comm) -> Result<f64, Failure> {
        match self {
            Optimizer::Full(a) => Ok(a.grad_norm().double_value(&[])),
            Optimizer::Sharded { zero, .. } => {
                zero.reduce_grads(comm)?;
                zero.grad_norm(comm)
            }
        }
    }

    /// One update at `lr` with the gradients scaled by `grad_scale`; the sharded optimizer
    /// all-gathers the updated parameters into every rank's model (overlapped with the next
    /// forward pass when `overlap_param_gather`).
    pub fn step(&mut self, comm: &mut Comm, lr: f64, grad_scale: f64) -> Result<(), Failure> {
        match self {
            Optimizer::Full(a) => a.step(lr, grad_scale),
            Optimizer::Sharded { zero, overlap_param_gather, .. } => {
                zero.step(lr, grad_scale);
                zero.gather_params(comm, *overlap_param_gather)?;
            }
        }
        Ok(())
    }

    /// After each micro-batch of a step that has several: the gradients summed in fp32 (see
    /// [`AdamW::accumulate_grads`], [`Zero1::accumulate_grads`]).
    pub fn accumulate_grads(&mut self) {
        match self {
            Optimizer::Full(a) => a.accumulate_grads(),
            Optimizer::Sharded { zero, .. } => zero.accumulate_grads(),
        }
    }

    /// (name, fp32 master) of the parameters whose model leaves are bf16 copies: what a checkpoint
    /// saves in their place. Every rank calls it (the sharded optimizer gathers the masters).
    pub fn masters(&self, comm: &mut Comm) -> Result<Vec<(String, Tensor)>, Failure> {
        match self {
            Optimizer::Full(a) => Ok(a.params.iter().filter_map(|p| p.master.as_ref().map(|m| (p.name.clone(), m.shallow_clone()))).collect()),
            Optimizer::Sharded { zero, .. } => zero.full_masters(comm),
        }
    }

    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::Full(a) => a.steps,
            Optimizer::Sharded { zero, .. } => zero.steps(),
        }
    }

    pub fn zero_grad(&mut self) {
        match self {
            Optimizer::Full(a) => a.zero_grad(),
            Optimizer::Sharded { leaves, .. } => leaves.iter_mut().for_each(|t| clear_grad(t, true)),
        }
    }

    /// The L2 norm of all weights (the fp32 masters where the leaves are bf16 copies); every rank calls it.
    pub fn param_norm(&mut self, comm: &mut Comm) -> Result<f64, Failure> {
        match self {
            Optimizer::Full(a) => Ok(a.weight_norm().double_value(&[])),
            Optimizer::Sharded { zero, .. } => zero.weight_norm(comm),
        }
    }

    /// This rank's state file in the checkpoint directory `dir` (every rank calls it).
    pub fn save(&self, dir: &Path) -> Result<PathBuf, Failure> {
        match self {
            Optimizer::Full(a) => a.save(dir),
            Optimizer::Sharded { zero, .. } => zero.save(dir),
        }
    }

    /// The state saved in `dir` on any world size (the sharded optimizer then sets every rank's
    /// parameters from the masters).
    pub fn load(&mut self, dir: &Path, comm: &mut Comm) -> Result<(), Failure> {
        match self {
            Optimizer::Full(a) => a.load(dir),
            Optimizer::Sharded { zero, .. } => {
                zero.load(dir)?;
                zero.gather_params(comm, false)
            }
        }
    }
}

/// The L2 norm of `tensors` together (fp32 accumulation per tensor; one multi-tensor kernel on CUDA).
fn norm_of(tensors: &[&Tensor]) -> Tensor {
    let norms: Vec<Tensor> = if tensors.first().is_some_and(|t| t.device().is_cuda()) {
        openseek_kernels::foreach_norm(&tensors.iter().map(|t| t.detach()).collect::<Vec<_>>()).expect("_foreach_norm")
    } else {
        tensors.iter().map(|t| t.detach().to_kind(Kind::Float).norm()).collect()
    };
    Tensor::stack(&norms, 0).norm()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openseek_dist::{CommOptions, Launch};

    fn model(values: &[&[f32]]) -> Vec<(String, Tensor)> {
        let names = ["layers.0.mlp.weight", "layers.0.input_layernorm.weight"];
        values.iter().zip(names).map(|(v, n)| (n.to_string(), Tensor::from_slice(v).view([-1, 1]).set_requires_grad(true))).collect()
    }

    fn moments(opt: &AdamW) -> Vec<Vec<f32>> {
        opt.params.iter().flat_map(|p| [&p.exp_avg, &p.exp_avg_sq]).map(|t| Vec::<f32>::try_from(&t.reshape([-1]).to_kind(Kind::Float)).unwrap()).collect()
    }

    /// Mixed precision: the leaves become bf16 copies of fp32 masters that step exactly as fp32
    /// leaves given the same gradients; micro-batch gradients are summed in fp32; the router stays fp32.
    #[test]
    fn bf16_leaves_step_their_fp32_masters() {
        let names = ["model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.gate.weight"];
        let values: [&[f32]; 2] = [&[1.0, -2.0, 3.0001, 0.1], &[0.5, 0.25]];
        let params = || values.iter().zip(names).map(|(v, n)| (n.to_string(), Tensor::from_slice(v).set_requires_grad(true))).collect::<Vec<_>>();
        let mut fp32 = AdamW::new(params(), 0.9, 0.95, 1e-8, 0.1, false, Kind::Float);
        let mut mixed = AdamW::new(params(), 0.9, 0.95, 1e-8, 0.1, true, Kind::Float);
        assert_eq!((mixed.params[0].tensor.kind(), mixed.params[1].tensor.kind()), (Kind::BFloat16, Kind::Float));
        assert!(mixed.params[0].master.as_ref().unwrap().equal(&fp32.params[0].tensor), "the master is the fp32 value");
        for step in 0..3 {
            // Two micro-batches of bf16 gradients; the fp32 run gets their fp32 sum.
            let micro: Vec<Tensor> = (0..2).map(|k| Tensor::from_slice(&[0.3f32, -1.7, 0.011, 2.5]).g_mul_scalar((step * 2 + k + 1) as f64 * 0.37).to_kind(Kind::BFloat16)).collect();
            for g in &micro {
                openseek_kernels::set_grad(&mixed.params[0].tensor, Some(g)).unwrap();
                openseek_kernels::set_grad(&mixed.params[1].tensor, Some(&Tensor::from_slice(&[0.5f32, -0.5]))).unwrap();
                mixed.accumulate_grads();
            }
            let sum = micro.iter().map(|g| g.to_kind(Kind::Float)).reduce(|a, b| a + b).unwrap();
            openseek_kernels::set_grad(&fp32.params[0].tensor, Some(&sum)).unwrap();
            openseek_kernels::set_grad(&fp32.params[1].tensor, Some(&Tensor::from_slice(&[0.5f32, -0.5]))).unwrap();
            assert!(mixed.grads()[0].equal(&sum), "fp32 sum of the micro-batches");
            mixed.step(0.01, 0.8);
            fp32.step(0.01, 0.8);
            mixed.zero_grad();
            fp32.zero_grad();
        }
        let (m, f) = (&mixed.params[0], &fp32.params[0]);
        assert!(m.master.as_ref().unwrap().equal(&f.tensor), "the master steps as an fp32 leaf");
        assert!(m.tensor.equal(&f.tensor.to_kind(Kind::BFloat16)), "the leaf is the rounded master");
        assert!(mixed.params[1].tensor.equal(&fp32.params[1].tensor));
        assert_eq!(mixed.params[0].exp_avg_sq.kind(), Kind::Float);
    }

    /// AdamW's files are ZeRO-1's: AdamW -> AdamW, AdamW -> Zero1 -> AdamW keep the moments, the
    /// step count and (Zero1's master) the weights.
    #[test]
    fn full_state_round_trips_through_the_sharded_optimizer() {
        let params = model(&[&[1.0, -2.0, 3.0], &[0.5, 0.25]]);
        let mut opt = AdamW::new(params, 0.9, 0.95, 1e-8, 0.1, false, Kind::Float);
        for _ in 0..3 {
            opt.zero_grad();
            let leaves: Vec<Tensor> = opt.params.iter().map(|p| p.tensor.shallow_clone()).collect();
            ((&leaves[0] * &leaves[0]).sum(Kind::Float) + leaves[1].sum(Kind::Float) * 3.0).backward();
            opt.step(0.01, 1.0);
        }
        let dir = tempfile::tempdir().unwrap();
        opt.save(dir.path()).unwrap();
        let mut again = AdamW::new(model(&[&[0.0; 3], &[0.0; 2]]), 0.9, 0.95, 1e-8, 0.1, false, Kind::Float);
        again.load(dir.path()).unwrap();
        assert_eq!((moments(&again), again.steps), (moments(&opt), 3));

        let mut comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let fresh = model(&[&[0.0; 3], &[0.0; 2]]);
        let leaves: Vec<Tensor> = fresh.iter().map(|(_, t)| t.shallow_clone()).collect();
        let named = fresh.into_iter().map(|(n, t)| NamedParam { decay: decays(&n), name: n, tensor: t, bucket: 0, leaf_kind: Kind::Float }).collect();
        let mut zero = Zero1::new(named, &comm, openseek_dist::AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, moments: Kind::Float }).unwrap();
        zero.load(dir.path()).unwrap();
        zero.gather_params(&mut comm, false).unwrap();
        for (l, p) in leaves.iter().zip(&opt.params) {
            assert_eq!(Vec::<f32>::try_from(&l.reshape([-1])).unwrap(), Vec::<f32>::try_from(&p.tensor.reshape([-1])).unwrap());
        }
        let dir2 = tempfile::tempdir().unwrap();
        zero.save(dir2.path()).unwrap();
        let mut back = AdamW::new(model(&[&[0.0; 3], &[0.0; 2]]), 0.9, 0.95, 1e-8, 0.1, false, Kind::Float);
        back.load(dir2.path()).unwrap();
        assert_eq!((moments(&back), back.steps), (moments(&opt), 3));
        // Another model's state is refused.
        let mut other = AdamW::new(model(&[&[0.0; 4], &[0.0; 2]]), 0.9, 0.95, 1e-8, 0.1, false, Kind::Float);
        assert!(other.load(dir.path()).unwrap_err().message.contains("another parameter layout"));
    }

    /// bf16 moments (`adam_moments_dtype = "bf16"`): each stored moment is the fp32 moment rounded
    /// to bf16 and the weights step from the stored moments; the state saves as fp32 and loads back
    /// unchanged into bf16 moments, also through ZeRO-1's files.
    #[test]
    fn bf16_moments_are_rounded_and_round_trip() {
        let (lr, b1, b2, eps) = (0.01, 0.9, 0.95, 1e-8);
        let mut opt = AdamW::new(model(&[&[1.0, -2.0, 3.0], &[0.5, 0.25]]), b1, b2, eps, 0.0, false, Kind::BFloat16);
        let (mut w, mut m, mut v) = (vec![], vec![], vec![]);
        for p in &opt.params {
            w.push(p.tensor.detach().copy());
            m.push(Tensor::zeros(p.tensor.size(), (Kind::Float, Device::Cpu)));
            v.push(Tensor::zeros(p.tensor.size(), (Kind::Float, Device::Cpu)));
        }
        for step in 1..=3 {
            opt.zero_grad();
            let leaves: Vec<Tensor> = opt.params.iter().map(|p| p.tensor.shallow_clone()).collect();
            ((&leaves[0] * &leaves[0]).sum(Kind::Float) * 1.37 + leaves[1].sum(Kind::Float) * 3.1).backward();
            for (i, p) in opt.params.iter().enumerate() {
                let g = p.tensor.grad();
                let round = |t: Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
                m[i] = round(&m[i] * b1 + &g * (1.0 - b1));
                v[i] = round(&v[i] * b2 + &g * &g * (1.0 - b2));
                let denom = v[i].sqrt() / (1.0 - b2.powi(step)).sqrt() + eps;
                w[i] = &w[i] - &m[i] / denom * (lr / (1.0 - b1.powi(step)));
            }
            opt.step(lr, 1.0);
        }
        for (i, p) in opt.params.iter().enumerate() {
            assert_eq!((p.exp_avg.kind(), p.exp_avg_sq.kind()), (Kind::BFloat16, Kind::BFloat16));
            assert!(p.exp_avg.to_kind(Kind::Float).equal(&m[i]) && p.exp_avg_sq.to_kind(Kind::Float).equal(&v[i]), "moments of {}", p.name);
            let d = (&p.tensor - &w[i]).abs().max().double_value(&[]);
            assert!(d < 1e-6, "weights of {} differ by {d}", p.name);
        }
        let dir = tempfile::tempdir().unwrap();
        opt.save(dir.path()).unwrap();
        let mut again = AdamW::new(model(&[&[0.0; 3], &[0.0; 2]]), b1, b2, eps, 0.0, false, Kind::BFloat16);
        again.load(dir.path()).unwrap();
        assert_eq!(moments(&again), moments(&opt));
        assert_eq!(again.params[0].exp_avg.kind(), Kind::BFloat16);

        let mut comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let named = model(&[&[0.0; 3], &[0.0; 2]]).into_iter().map(|(n, t)| NamedParam { decay: decays(&n), name: n, tensor: t, bucket: 0, leaf_kind: Kind::Float }).collect();
        let adam = openseek_dist::AdamWConfig { beta1: b1, beta2: b2, eps, weight_decay: 0.0, moments: Kind::BFloat16 };
        let mut zero = Zero1::new(named, &comm, adam).unwrap();
        zero.load(dir.path()).unwrap();
        zero.gather_params(&mut comm, false).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        zero.save(dir2.path()).unwrap();
        let mut back = AdamW::new(model(&[&[0.0; 3], &[0.0; 2]]), b1, b2, eps, 0.0, false, Kind::BFloat16);
        back.load(dir2.path()).unwrap();
        assert_eq!(moments(&back), moments(&opt));
    }
}
