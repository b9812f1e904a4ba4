//! ZeRO-1, the sharded optimizer of data parallelism ([`Zero1`]): gradients reduce-scattered in
//! fp32 bucket by bucket, so each rank gets the averaged gradient of its slice of every bucket
//! (Megatron's distributed optimizer with `accumulate_allreduce_grads_in_fp32`); AdamW on those
//! slices' fp32 master weights and moments; then the updated parameters all-gathered into every
//! rank's model. A bucket's reduction can start as soon as its gradients are complete
//! ([`Zero1::grads_ready`], called from the backward pass), overlapped on NCCL with the rest of
//! the backward; [`Zero1::reduce_grads`] starts the others and waits. World size 1 runs the same code.

use std::ops::Range;
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use tch::{Device, Kind, Tensor};

use crate::comm::{Comm, ReduceOp};
use crate::layout::{FlatLayout, Param};
use crate::reshard::{self, ShardInfo};

/// A model parameter handed to [`Zero1`]: its name (for checkpoints and error messages), the
/// tensor (a shallow clone of the model's, sharing storage and gradient), whether AdamW decays it,
/// and its bucket key: the point of the backward pass after which its gradient is complete
/// (neighbouring parameters with the same key share a bucket).
pub struct NamedParam {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
    pub bucket: usize,
}

/// AdamW hyper-parameters (torch.optim.AdamW's update, decoupled weight decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// ZeRO-1: this rank's slices of the fp32 master weights and Adam moments.
pub struct Zero1 {
    params: Vec<NamedParam>,
    layout: FlatLayout,
    rank: usize,
    adam: AdamW,
    step: u64,
    /// Reduce-scatter input: every gradient, fp32, each bucket padded.
    grad_flat: Tensor,
    /// This rank's slices of the averaged gradient (its shard).
    grad: Tensor,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// All-gather output: every rank's shard in rank order, in the parameters' dtype (fp32: the
    /// storage of `grad_flat`, free once the gradients are reduced, as Megatron reuses its buffer).
    gathered: Tensor,
    param_kind: Kind,
    decay_ranges: Vec<Range<usize>>,
    /// The buckets whose reduction started since the last [`Zero1::reduce_grads`].
    started: Vec<bool>,
}

impl Zero1 {
    /// Take this rank's slices of the current parameters as fp32 master weights. Every rank must
    /// start from the same parameters (see [`Zero1::broadcast_params`]).
    pub fn new(params: Vec<NamedParam>, comm: &Comm, adam: AdamW) -> Result<Zero1, Failure> {
        let keys: Vec<usize> = params.iter().map(|p| p.bucket).collect();
        let described = params.iter().map(|p| Param { name: p.name.clone(), numel: p.tensor.numel(), decay: p.decay }).collect();
        let layout = FlatLayout::with_buckets(described, &keys, comm.world());
        let device = comm.device();
        let kinds: Vec<Kind> = params.iter().map(|p| p.tensor.kind()).collect();
        let param_kind = if kinds.windows(2).all(|w| w[0] == w[1]) { kinds.first().copied().unwrap_or(Kind::Float) } else { Kind::Float };
        for p in &params {
            if p.tensor.device() != device {
                return Err(Failure::software(format!("parameter {} is on {:?}, the communicator on {device:?}", p.name, p.tensor.device())));
            }
        }
        let n = layout.shard_len() as i64;
        let f32s = (Kind::Float, device);
        let master = Tensor::zeros([n], f32s);
        tch::no_grad(|| {
            for piece in layout.shard_pieces(comm.rank()) {
                let src = params[piece.param].tensor.reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64);
                master.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64).copy_(&src);
            }
        });
        let grad_flat = Tensor::zeros([layout.padded() as i64], f32s);
        let gathered = match param_kind {
            Kind::Float => grad_flat.shallow_clone(),
            kind => Tensor::zeros([layout.padded() as i64], (kind, device)),
        };
        Ok(Zero1 {
            decay_ranges: layout.decay_ranges(comm.rank()),
            grad_flat,
            gathered,
            grad: Tensor::zeros([n], f32s),
            exp_avg: Tensor::zeros([n], f32s),
            exp_avg_sq: Tensor::zeros([n], f32s),
            started: vec![false; layout.buckets().len()],
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

    /// The gradients of the parameters with bucket key `key` are complete (for this step): start
    /// averaging their buckets over ranks, overlapped with what the device does next. Every rank
    /// must call it with the same keys in the same order.
    pub fn grads_ready(&mut self, key: usize, comm: &mut Comm) -> Result<(), Failure> {
        for b in 0..self.layout.buckets().len() {
            if self.layout.buckets()[b].key == key && !self.started[b] {
                self.start_bucket(b, comm)?;
            }
        }
        Ok(())
    }

    /// Copy bucket `b`'s gradients into the fp32 buffer (a parameter without gradient counts as
    /// zeros) and start their reduce-scatter into this rank's slice.
    fn start_bucket(&mut self, b: usize, comm: &mut Comm) -> Result<(), Failure> {
        let bucket = &self.layout.buckets()[b];
        let dst = self.grad_flat.narrow(0, bucket.padded.start as i64, bucket.padded.len() as i64);
        tch::no_grad(|| {
            let _ = dst.narrow(0, bucket.flat.len() as i64, (bucket.padded.len() - bucket.flat.len()) as i64).zero_();
            for piece in self.layout.pieces(bucket.flat.clone()) {
                let mut part = dst.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64);
                let grad = self.params[piece.param].tensor.grad();
                if grad.defined() {
                    part.copy_(&grad.reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64));
                } else {
                    let _ = part.zero_();
                }
            }
        });
        let mine = bucket.in_shard(self.layout.world());
        let mut out = self.grad.narrow(0, mine.start as i64, mine.len() as i64);
        comm.reduce_scatter_overlapped(&dst, &mut out, ReduceOp::Avg)?;
        self.started[b] = true;
        Ok(())
    }

    /// Average the gradients over ranks into this rank's fp32 slices (after the backward pass):
    /// start every bucket [`Zero1::grads_ready`] has not, then wait for all of them.
    pub fn reduce_grads(&mut self, comm: &mut Comm) -> Result<(), Failure> {
        for b in 0..self.started.len() {
            if !self.started[b] {
                self.start_bucket(b, comm)?;
            }
        }
        self.started.iter_mut().for_each(|s| *s = false);
        comm.wait()
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

    /// Multiply this rank's gradient slices by `coef` (clipping with a norm computed by the caller).
    pub fn scale_grads(&mut self, coef: f64) {
        let _ = self.grad.g_mul_scalar_(coef);
    }

    /// This rank's averaged gradient slices, fp32, end to end as its shard holds them.
    pub fn grad_shard(&self) -> &Tensor {
        &self.grad
    }

    /// One AdamW step on this rank's slices with learning rate `lr`.
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

    /// All-gather every rank's shard and copy the slices into every rank's parameters.
    pub fn gather_params(&mut self, comm: &mut Comm) -> Result<(), Failure> {
        let mine = self.master.to_kind(self.param_kind);
        comm.all_gather(&mine, &mut self.gathered)?;
        let (world, shard) = (self.layout.world() as i64, self.layout.shard_len() as i64);
        let by_rank = self.gathered.view([world, shard]);
        tch::no_grad(|| {
            for b in self.layout.buckets() {
                let at = b.in_shard(world as usize);
                // Rank r's slice of the bucket is row r: rows end to end are the padded bucket.
                let bucket = by_rank.narrow(1, at.start as i64, at.len() as i64).reshape([-1]);
                for piece in self.layout.pieces(b.flat.clone()) {
                    let src = bucket.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64);
                    let p = self.params[piece.param].tensor.shallow_clone();
                    p.view([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64).copy_(&src);
                }
            }
        });
        Ok(())
    }

    /// `t`'s parts that hold this rank's flat ranges, end to end, on the host.
    fn owned_values(&self, t: &Tensor) -> Result<Vec<f32>, Failure> {
        let parts: Vec<Tensor> = self.layout.shard_ranges(self.rank).iter().map(|(at, _)| t.narrow(0, at.start as i64, at.len() as i64)).collect();
        let joined = if parts.is_empty() { Tensor::zeros([0], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&parts, 0).to_device(Device::Cpu) };
        Vec::<f32>::try_from(&joined).map_err(|e| Failure::software(e.to_string()))
    }

    /// Write this rank's state (`optim-RRRRR-of-WWWWW.safetensors` in `dir`); every rank calls it.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, Failure> {
        let (m, a, s) = (self.owned_values(&self.master)?, self.owned_values(&self.exp_avg)?, self.owned_values(&self.exp_avg_sq)?);
        let info = ShardInfo {
            rank: self.rank,
            world: self.layout.world(),
            ranges: self.layout.owned(self.rank),
            total: self.layout.total(),
            fingerprint: self.layout.fingerprint(),
            step: self.step,
        };
        reshard::save_shard(dir, &info, &[("master", &m), ("exp_avg", &a), ("exp_avg_sq", &s)])
    }

    /// Load this rank's slices from shards saved by any world size (call [`Zero1::gather_params`]
    /// afterwards, or rely on the same weights being loaded from the model checkpoint).
    pub fn load(&mut self, dir: &Path) -> Result<(), Failure> {
        let ranges = self.layout.shard_ranges(self.rank);
        let flat: Vec<Range<usize>> = ranges.iter().map(|(_, f)| f.clone()).collect();
        let (mut state, step) = reshard::load_ranges(dir, &flat, &["master", "exp_avg", "exp_avg_sq"], &self.layout.fingerprint())?;
        let device = self.master.device();
        let mut put = |name: &str| {
            let values = Tensor::from_slice(&state.remove(name).unwrap());
            let local = Tensor::zeros([self.layout.shard_len() as i64], (Kind::Float, Device::Cpu));
            let mut from = 0;
            for (at, _) in &ranges {
                local.narrow(0, at.start as i64, at.len() as i64).copy_(&values.narrow(0, from, at.len() as i64));
                from += at.len() as i64;
            }
            local.to_device(device)
        };
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
            .map(|(i, (v, &d))| NamedParam { name: format!("p{i}"), tensor: Tensor::from_slice(v).set_requires_grad(true), decay: d, bucket: 0 })
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

    /// Two ranks on threads (the TCP-store backend): buckets reduced as their keys come ready, in
    /// backward order, give the same gradient slices as all reduced at the end, and both the exact
    /// average of the ranks' gradients; after a step every rank's parameters are equal and the
    /// state saved by the two ranks reloads on one.
    #[test]
    fn buckets_reduced_early_or_late_give_the_averaged_gradient() {
        use crate::launch::Source;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_path_buf();
        // Sizes: a 3-element bucket (key 9), a 70 + 5 bucket (key 4), a 2-element one (key 9 again).
        let sizes = [3usize, 70, 5, 2];
        let keys = [9usize, 4, 4, 9];
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let state = state.clone();
                std::thread::spawn(move || {
                    let launch = Launch { rank, local_rank: rank, world: 2, master_addr: "127.0.0.1".into(), master_port: port, host: "h".into(), source: Source::Torchrun };
                    let mut comm = Comm::init(launch, Device::Cpu, CommOptions::default()).unwrap();
                    let make = || -> Vec<NamedParam> {
                        sizes
                            .iter()
                            .zip(keys)
                            .enumerate()
                            .map(|(i, (&n, k))| {
                                let t = Tensor::arange(n as i64, (Kind::Float, Device::Cpu)) * 0.1 + i as f64;
                                NamedParam { name: format!("p{i}"), tensor: t.set_requires_grad(true), decay: i != 2, bucket: k }
                            })
                            .collect()
                    };
                    // Rank r's gradient of parameter i: (r + 1) * (i + 1) * p; parameter 2 has none on rank 0.
                    let backward = |ts: &[Tensor]| {
                        for (i, t) in ts.iter().enumerate() {
                            if !(i == 2 && rank == 0) {
                                ((t * t).sum(Kind::Float) * (0.5 * ((rank + 1) * (i + 1)) as f64)).backward();
                            }
                        }
                    };
                    let adam = AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
                    let (early, late) = (make(), make());
                    let (early_model, late_model): (Vec<Tensor>, Vec<Tensor>) =
                        (early.iter().map(|p| p.tensor.shallow_clone()).collect(), late.iter().map(|p| p.tensor.shallow_clone()).collect());
                    let (mut a, mut b) = (Zero1::new(early, &comm, adam).unwrap(), Zero1::new(late, &comm, adam).unwrap());
                    assert_eq!(a.layout().buckets().len(), 3);
                    backward(&early_model);
                    backward(&late_model);
                    a.grads_ready(4, &mut comm).unwrap();
                    a.grads_ready(9, &mut comm).unwrap();
                    a.grads_ready(9, &mut comm).unwrap(); // once per step, whatever the calls
                    a.reduce_grads(&mut comm).unwrap();
                    b.reduce_grads(&mut comm).unwrap();
                    let (ga, gb) = (Vec::<f32>::try_from(a.grad_shard()).unwrap(), Vec::<f32>::try_from(b.grad_shard()).unwrap());
                    assert_eq!(ga, gb);
                    // The averaged gradient, element by element, from the owned ranges.
                    let mut expect = vec![0f32; a.layout().shard_len()];
                    for piece in a.layout().shard_pieces(rank) {
                        let i = piece.param;
                        let ranks: f32 = if i == 2 { 2.0 } else { 3.0 };
                        for (k, e) in piece.in_param.clone().zip(piece.in_range.clone()) {
                            expect[e] = ranks * (i + 1) as f32 * (k as f32 * 0.1 + i as f32) / 2.0;
                        }
                    }
                    for (g, e) in ga.iter().zip(&expect) {
                        assert!((g - e).abs() <= 1e-6 * e.abs().max(1.0), "rank {rank}: {ga:?} vs {expect:?}");
                    }
                    a.step(0.01);
                    a.gather_params(&mut comm).unwrap();
                    a.save(&state).unwrap();
                    comm.store().barrier("saved").unwrap();
                    (early_model.iter().map(|t| Vec::<f32>::try_from(&t.detach()).unwrap()).collect::<Vec<_>>(), a.steps())
                })
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got[0], got[1], "ranks hold the same parameters");
        assert_ne!(got[0].0[0], vec![0.0, 0.1, 0.2], "parameters moved");
        // Saved on two ranks (three buckets), loaded on one (one bucket): the same master weights.
        let comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let adam = AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let zeros = sizes.iter().enumerate().map(|(i, &n)| NamedParam { name: format!("p{i}"), tensor: Tensor::zeros([n as i64], (Kind::Float, Device::Cpu)), decay: i != 2, bucket: 0 });
        let mut one = Zero1::new(zeros.collect(), &comm, adam).unwrap();
        one.load(&state).unwrap();
        let master = Vec::<f32>::try_from(&one.master.narrow(0, 0, one.layout().total() as i64)).unwrap();
        assert_eq!(master, got[0].0.concat());
        assert_eq!(one.steps(), 1);
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
