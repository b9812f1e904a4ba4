//! Data-parallel training helpers on top of [`Comm`]: gradients averaged in fp32 buckets
//! ([`GradBuckets`], plain data parallelism), and [`Zero1`], the sharded optimizer: gradients
//! reduce-scattered in fp32 so each rank gets the averaged gradient of its contiguous slice of
//! the flat parameter vector, AdamW on that slice's fp32 master weights and moments, then the
//! updated parameters all-gathered into every rank's model. tch has no backward hooks, so the
//! reductions run after `backward()`, not overlapped with it. World size 1 runs the same code.

use std::ops::Range;
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use tch::{Device, Kind, Tensor};

use crate::comm::{Comm, ReduceOp};
use crate::layout::{self, FlatLayout, Param};
use crate::reshard::{self, ShardInfo};

/// A model parameter handed to the helpers: its name (for checkpoints and error messages), the
/// tensor (a shallow clone of the model's, sharing storage and gradient) and whether AdamW decays it.
pub struct NamedParam {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
}

fn layout_of(params: &[NamedParam], world: usize) -> FlatLayout {
    FlatLayout::new(params.iter().map(|p| Param { name: p.name.clone(), numel: p.tensor.numel(), decay: p.decay }).collect(), world)
}

/// Copy the gradients of `params` that fall into `range` of the flat vector into `dst`
/// (fp32; a parameter without gradient counts as zeros).
fn gather_grads(layout: &FlatLayout, params: &[NamedParam], range: Range<usize>, dst: &mut Tensor) {
    tch::no_grad(|| {
        let _ = dst.zero_();
        for piece in layout.pieces(range) {
            let grad = params[piece.param].tensor.grad();
            if grad.defined() {
                let src = grad.reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64);
                dst.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64).copy_(&src);
            }
        }
    })
}

/// Gradients averaged across ranks, bucket by bucket, in fp32 (Megatron's
/// `accumulate_allreduce_grads_in_fp32`): plain data parallelism, every rank keeps the full
/// optimizer. The averaged gradients are written back into the parameters' `.grad`.
pub struct GradBuckets {
    params: Vec<NamedParam>,
    layout: FlatLayout,
    buckets: Vec<Range<usize>>,
    flat: Tensor,
}

impl GradBuckets {
    /// `bucket_elems`: elements per all-reduce (Megatron's default bucket is 40 M).
    pub fn new(params: Vec<NamedParam>, device: Device, bucket_elems: usize) -> GradBuckets {
        let layout = layout_of(&params, 1);
        let buckets = layout::buckets(layout.total(), bucket_elems);
        let flat = Tensor::zeros([layout.total().max(1) as i64], (Kind::Float, device));
        GradBuckets { params, layout, buckets, flat }
    }

    /// Average the gradients over all ranks (call after `backward()`, before clipping).
    pub fn all_reduce(&mut self, comm: &mut Comm) -> Result<(), Failure> {
        for b in self.buckets.clone() {
            let mut bucket = self.flat.narrow(0, b.start as i64, b.len() as i64);
            gather_grads(&self.layout, &self.params, b.clone(), &mut bucket);
            comm.all_reduce(&mut bucket, ReduceOp::Avg)?;
            tch::no_grad(|| {
                for piece in self.layout.pieces(b.clone()) {
                    let grad = self.params[piece.param].tensor.grad();
                    if grad.defined() {
                        let src = bucket.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64);
                        grad.reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64).copy_(&src);
                    }
                }
            });
        }
        Ok(())
    }
}

/// AdamW hyper-parameters (torch.optim.AdamW's update, decoupled weight decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// ZeRO-1: this rank's slice of the fp32 master weights and Adam moments.
pub struct Zero1 {
    params: Vec<NamedParam>,
    layout: FlatLayout,
    rank: usize,
    adam: AdamW,
    step: u64,
    /// Reduce-scatter input: every gradient, fp32, padded.
    grad_flat: Tensor,
    /// This rank's averaged gradient slice.
    grad: Tensor,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// All-gather output, in the parameters' dtype.
    param_flat: Tensor,
    param_kind: Kind,
    decay_ranges: Vec<Range<usize>>,
}

impl Zero1 {
    /// Take this rank's slice of the current parameters as fp32 master weights. Every rank must
    /// start from the same parameters (see [`Zero1::broadcast_params`]).
    pub fn new(params: Vec<NamedParam>, comm: &Comm, adam: AdamW) -> Result<Zero1, Failure> {
        let layout = layout_of(&params, comm.world());
        let device = comm.device();
        let kinds: Vec<Kind> = params.iter().map(|p| p.tensor.kind()).collect();
        let param_kind = if kinds.windows(2).all(|w| w[0] == w[1]) { kinds.first().copied().unwrap_or(Kind::Float) } else { Kind::Float };
        for p in &params {
            if p.tensor.device() != device {
                return Err(Failure::software(format!("parameter {} is on {:?}, the communicator on {device:?}", p.name, p.tensor.device())));
            }
        }
        let shard = layout.shard(comm.rank());
        let n = layout.shard_len() as i64;
        let f32s = (Kind::Float, device);
        let master = Tensor::zeros([n], f32s);
        tch::no_grad(|| {
            for piece in layout.pieces(shard.clone()) {
                let src = params[piece.param].tensor.reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64);
                master.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64).copy_(&src);
            }
        });
        Ok(Zero1 {
            decay_ranges: layout.decay_ranges(shard),
            grad_flat: Tensor::zeros([layout.padded() as i64], f32s),
            grad: Tensor::zeros([n], f32s),
            exp_avg: Tensor::zeros([n], f32s),
            exp_avg_sq: Tensor::zeros([n], f32s),
            param_flat: Tensor::zeros([layout.padded() as i64], (param_kind, device)),
            master,
            param_kind,
            rank: comm.rank(),
            params,
            layout,
            adam,
            step: 0,
        })
    }

    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Make every rank's parameters rank 0's (call once before [`Zero1::new`] when ranks
    /// initialise weights independently).
    pub fn broadcast_params(params: &[NamedParam], comm: &mut Comm) -> Result<(), Failure> {
        for p in params {
            let mut t = p.tensor.shallow_clone();
            tch::no_grad(|| comm.broadcast(&mut t, 0))?;
        }
        Ok(())
    }

    /// Average the gradients over ranks into this rank's fp32 slice (after `backward()`).
    pub fn reduce_grads(&mut self, comm: &mut Comm) -> Result<(), Failure> {
        gather_grads(&self.layout, &self.params, 0..self.layout.padded(), &mut self.grad_flat);
        comm.reduce_scatter(&self.grad_flat, &mut self.grad, ReduceOp::Avg)
    }

    /// The global gradient norm (all ranks' slices together); a host sync.
    pub fn grad_norm(&self, comm: &mut Comm) -> Result<f64, Failure> {
        let mut sq = [self.grad.square().sum(Kind::Double).double_value(&[])];
        comm.all_reduce_f64(&mut sq, ReduceOp::Sum)?;
        Ok(sq[0].sqrt())
    }

    /// Scale the gradient so its global norm is at most `max_norm` (torch's clip_grad_norm_);
    /// returns the norm before clipping.
    pub fn clip_grads(&mut self, comm: &mut Comm, max_norm: f64) -> Result<f64, Failure> {
        let norm = self.grad_norm(comm)?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            self.scale_grads(coef);
        }
        Ok(norm)
    }

    /// Multiply this rank's gradient slice by `coef` (clipping with a norm computed by the caller).
    pub fn scale_grads(&mut self, coef: f64) {
        let _ = self.grad.g_mul_scalar_(coef);
    }

    /// One AdamW step on this rank's slice with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let AdamW { beta1, beta2, eps, weight_decay } = self.adam;
        self.step += 1;
        tch::no_grad(|| {
            if weight_decay != 0.0 {
                for r in &self.decay_ranges {
                    let _ = self.master.narrow(0, r.start as i64, r.len() as i64).g_mul_scalar_(1.0 - lr * weight_decay);
                }
            }
            let _ = self.exp_avg.lerp_(&self.grad, 1.0 - beta1);
            let _ = self.exp_avg_sq.g_mul_scalar_(beta2);
            let _ = self.exp_avg_sq.g_add_(&(self.grad.square() * (1.0 - beta2)));
            let t = self.step as i32;
            let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
            let denom = self.exp_avg_sq.sqrt() / bc2.sqrt() + eps;
            let _ = self.master.g_sub_(&(&self.exp_avg / denom * (lr / bc1)));
        });
    }

    /// All-gather the updated slices and copy them into every rank's parameters.
    pub fn gather_params(&mut self, comm: &mut Comm) -> Result<(), Failure> {
        let mine = self.master.to_kind(self.param_kind);
        comm.all_gather(&mine, &mut self.param_flat)?;
        tch::no_grad(|| {
            for (i, p) in self.params.iter().enumerate() {
                let src = self.param_flat.narrow(0, self.layout.offset(i) as i64, p.tensor.numel() as i64);
                p.tensor.shallow_clone().view([-1]).copy_(&src);
            }
        });
        Ok(())
    }

    /// Write this rank's slice (`optim-RRRRR-of-WWWWW.safetensors` in `dir`); every rank calls it.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, Failure> {
        let host = |t: &Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu)).map_err(|e| Failure::software(e.to_string()));
        let (m, a, s) = (host(&self.master)?, host(&self.exp_avg)?, host(&self.exp_avg_sq)?);
        let info = ShardInfo {
            rank: self.rank,
            world: self.layout.world(),
            offset: self.layout.shard(self.rank).start,
            total: self.layout.total(),
            fingerprint: self.layout.fingerprint(),
            step: self.step,
        };
        reshard::save_shard(dir, &info, &[("master", &m), ("exp_avg", &a), ("exp_avg_sq", &s)])
    }

    /// Load this rank's slice from shards saved by any world size, then put the master weights
    /// into the model (call [`Zero1::gather_params`] afterwards, or rely on the same weights
    /// being loaded from the model checkpoint).
    pub fn load(&mut self, dir: &Path) -> Result<(), Failure> {
        let range = self.layout.shard(self.rank);
        let (mut state, step) = reshard::load_range(dir, range, &["master", "exp_avg", "exp_avg_sq"], &self.layout.fingerprint())?;
        let device = self.master.device();
        let mut put = |name: &str| Tensor::from_slice(&state.remove(name).unwrap()).to_device(device);
        self.master = put("master");
        self.exp_avg = put("exp_avg");
        self.exp_avg_sq = put("exp_avg_sq");
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::CommOptions;
    use crate::launch::Launch;

    fn params(values: &[&[f32]], decay: &[bool]) -> Vec<NamedParam> {
        values
            .iter()
            .zip(decay)
            .enumerate()
            .map(|(i, (v, &d))| NamedParam { name: format!("p{i}"), tensor: Tensor::from_slice(v).set_requires_grad(true), decay: d })
            .collect()
    }

    /// Zero1 at world size 1 is torch's AdamW: the same update as a hand-written reference.
    #[test]
    fn zero1_world_one_matches_a_reference_adamw() {
        let mut comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let ps = params(&[&[1.0, -2.0, 3.0], &[0.5, 0.25]], &[true, false]);
        let model: Vec<Tensor> = ps.iter().map(|p| p.tensor.shallow_clone()).collect();
        let adam = AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = Zero1::new(ps, &comm, adam).unwrap();
        // Reference state, in f64.
        let mut p: Vec<f64> = vec![1.0, -2.0, 3.0, 0.5, 0.25];
        let (mut m, mut v) = (vec![0.0; 5], vec![0.0; 5]);
        let lr = 0.01;
        for step in 1..=5 {
            for t in &model {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let loss = (&model[0] * &model[0]).sum(Kind::Float) * 0.5 + model[1].sum(Kind::Float) * 3.0;
            loss.backward();
            let g: Vec<f64> = vec![p[0], p[1], p[2], 3.0, 3.0];
            opt.reduce_grads(&mut comm).unwrap();
            opt.step(lr);
            opt.gather_params(&mut comm).unwrap();
            for i in 0..5 {
                if i < 3 {
                    p[i] *= 1.0 - lr * 0.1;
                }
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i];
                let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.95f64.powi(step));
                p[i] -= lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = model.iter().flat_map(|t| Vec::<f32>::try_from(&t.detach()).unwrap()).collect();
        for (g, r) in got.iter().zip(&p) {
            assert!((*g as f64 - r).abs() < 1e-5, "{got:?} vs {p:?}");
        }
        assert_eq!(opt.steps(), 5);
    }

    #[test]
    fn grad_buckets_world_one_keep_gradients_and_handle_missing_ones() {
        let mut comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let ps = params(&[&[1.0, 2.0, 3.0], &[4.0], &[5.0, 6.0]], &[true, true, true]);
        let model: Vec<Tensor> = ps.iter().map(|p| p.tensor.shallow_clone()).collect();
        ((&model[0] * 2.0).sum(Kind::Float) + (&model[2] * &model[2]).sum(Kind::Float)).backward();
        let mut b = GradBuckets::new(ps, Device::Cpu, 2);
        b.all_reduce(&mut comm).unwrap();
        assert_eq!(Vec::<f32>::try_from(&model[0].grad()).unwrap(), [2.0, 2.0, 2.0]);
        assert!(!model[1].grad().defined());
        assert_eq!(Vec::<f32>::try_from(&model[2].grad()).unwrap(), [10.0, 12.0]);
    }

    #[test]
    fn zero1_state_saves_and_reloads_with_its_step() {
        let comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let adam = AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Zero1::new(params(&[&[1.0, 2.0], &[3.0]], &[true, false]), &comm, adam).unwrap();
        opt.grad = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).pad([0, opt.layout.shard_len() as i64 - 3], "constant", Some(0.0));
        opt.step(0.1);
        let dir = tempfile::tempdir().unwrap();
        opt.save(dir.path()).unwrap();
        let mut other = Zero1::new(params(&[&[0.0, 0.0], &[0.0]], &[true, false]), &comm, adam).unwrap();
        other.load(dir.path()).unwrap();
        assert_eq!(other.steps(), 1);
        for (a, b) in [(&opt.master, &other.master), (&opt.exp_avg, &other.exp_avg), (&opt.exp_avg_sq, &other.exp_avg_sq)] {
            assert_eq!(Vec::<f32>::try_from(a).unwrap(), Vec::<f32>::try_from(b).unwrap());
        }
        let e = Zero1::new(params(&[&[0.0, 0.0, 0.0]], &[true]), &comm, adam).unwrap().load(dir.path()).unwrap_err();
        assert!(e.message.contains("another parameter layout"), "{}", e.message);
    }
}
