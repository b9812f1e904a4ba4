//! ZeRO-1, the sharded optimizer of data parallelism ([`Zero1`]), as Megatron's distributed
//! optimizer runs it. The model's parameters live in one flat buffer per bucket (each leaf a view
//! into it; bf16 for mixed precision, or the leaf's own dtype), so the all-gather of updated
//! parameters writes straight into the model. A step's micro-batch gradients are summed in fp32
//! into a bucketed gradient buffer (`accumulate_allreduce_grads_in_fp32`), which is reduce-scattered
//! bucket by bucket as the last micro-batch's backward pass completes each bucket
//! ([`Zero1::grads_ready`], overlapped on NCCL with the rest of the backward), so each rank gets the
//! averaged gradient of its slice of every bucket. AdamW updates that slice's fp32 master weights
//! and moments (on CUDA openseek-kernels' one-pass kernel, which also writes the rank's slice of the
//! bf16 parameter buffer), then each bucket is all-gathered in place; with `overlap` the gathers run
//! on NCCL's stream while the next forward pass goes on, each part of the model waiting only for
//! its own bucket ([`Zero1::params_ready`]; Megatron's `overlap_param_gather`).
//!
//! Per rank this holds: the parameters (bf16, or fp32 where a leaf stays fp32), the fp32 gradient
//! buffer, and 1/world of the fp32 master weights and both moments; nothing else of model size.
//! World size 1 runs the same code.

use std::ops::Range;
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use tch::{Device, Kind, Tensor};

use crate::comm::{Comm, Mark, ReduceOp};
use crate::layout::{FlatLayout, Param};
use crate::reshard::{self, ShardInfo};

/// A model parameter handed to [`Zero1`]: its name (for checkpoints and error messages), the
/// tensor (a shallow clone of the model's leaf: [`Zero1::new`] moves its data into a bucket
/// buffer, which the model sees), whether AdamW decays it, its bucket key (the point of the
/// backward pass after which its gradient is complete, and of the forward pass before which its
/// value is needed; neighbouring parameters with the same key share a bucket) and the dtype its
/// leaf has in training (bf16 for mixed precision: its fp32 value lives on as the master).
pub struct NamedParam {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
    pub bucket: usize,
    pub leaf_kind: Kind,
}

/// AdamW hyper-parameters (torch.optim.AdamW's update, decoupled weight decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// The moments' dtype: fp32, or bf16 (computed in fp32, stored rounded; saved as fp32).
    pub moments: Kind,
}

/// A run of this rank's shard inside one bucket with one weight decay (the update's unit).
#[derive(Debug, Clone)]
struct Run {
    bucket: usize,
    /// Where in the shard.
    shard: Range<usize>,
    decay: bool,
}

/// ZeRO-1: the bucket buffers the model's leaves live in, the fp32 gradient buffer, and this
/// rank's slices of the fp32 master weights and Adam moments.
pub struct Zero1 {
    params: Vec<NamedParam>,
    layout: FlatLayout,
    rank: usize,
    adam: AdamWConfig,
    step: u64,
    /// Micro-batch gradients summed into the buffer by openseek-kernels' `accumulate_grad` (else `add_`).
    pub accumulate_kernel: bool,
    /// Per bucket: the parameters' values end to end (padded), in the bucket's leaf dtype.
    buffers: Vec<Tensor>,
    /// Reduce-scatter input: the step's gradients summed in fp32, each bucket padded.
    grad_buffer: Tensor,
    /// `grad_buffer` holds sums of this step's micro-batches (else it is stale and is overwritten).
    /// After the reduce-scatter (in place), this rank's slice of each bucket holds the averaged
    /// gradient of its shard.
    accumulating: bool,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    runs: Vec<Run>,
    /// The buckets whose reduction started since the last [`Zero1::reduce_grads`].
    started: Vec<bool>,
    /// Per bucket, the point after its overlapped all-gather (waited for by [`Zero1::params_ready`]).
    gathers: Vec<Option<Mark>>,
    /// After a kernel update: partial sums of the updated master weights' squares.
    squares: Option<Tensor>,
}

/// A bucket key from a ready key and the leaf dtype (buckets hold one dtype).
fn layout_key(ready: usize, kind: Kind) -> usize {
    ready.wrapping_mul(2) + usize::from(kind == Kind::Float)
}

impl Zero1 {
    /// Move the parameters into bucket buffers (the model's leaves become views of them, in their
    /// `leaf_kind`) and take this rank's slices of their current values as fp32 master weights.
    /// Every rank must start from the same parameters (see [`Zero1::broadcast_params`]).
    pub fn new(mut params: Vec<NamedParam>, comm: &Comm, adam: AdamWConfig) -> Result<Zero1, Failure> {
        let device = comm.device();
        for p in &params {
            if p.tensor.device() != device {
                return Err(Failure::software(format!("parameter {} is on {:?}, the communicator on {device:?}", p.name, p.tensor.device())));
            }
        }
        let keys: Vec<usize> = params.iter().map(|p| layout_key(p.bucket, p.leaf_kind)).collect();
        let described = params.iter().map(|p| Param { name: p.name.clone(), numel: p.tensor.numel(), decay: p.decay }).collect();
        let layout = FlatLayout::with_buckets(described, &keys, comm.world());
        let (rank, world) = (comm.rank(), comm.world());
        let n = layout.shard_len() as i64;
        let f32s = (Kind::Float, device);
        let master = Tensor::zeros([n], f32s);
        tch::no_grad(|| {
            for piece in layout.shard_pieces(rank) {
                let src = params[piece.param].tensor.detach().reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64);
                master.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64).copy_(&src);
            }
        });
        let mut buffers = Vec::with_capacity(layout.buckets().len());
        for b in layout.buckets() {
            let kind = layout.pieces(b.flat.clone()).first().map_or(Kind::Float, |p| params[p.param].leaf_kind);
            let buffer = Tensor::zeros([b.padded.len() as i64], (kind, device));
            for piece in layout.pieces(b.flat.clone()) {
                let p = &mut params[piece.param];
                let mut view = buffer.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64);
                tch::no_grad(|| view.copy_(&p.tensor.detach().reshape([-1])));
                // The leaf's data becomes the view (as Megatron's `param.data = buffer[...]`).
                p.tensor.set_data(&view.view(p.tensor.size().as_slice()));
            }
            buffers.push(buffer);
        }
        let mut runs: Vec<Run> = vec![];
        for (bi, b) in layout.buckets().iter().enumerate() {
            let at = b.in_shard(world).start;
            let owned = b.owned(world, rank);
            for piece in layout.pieces(owned.clone()) {
                let shard = at + piece.in_range.start..at + piece.in_range.end;
                let decay = layout.params()[piece.param].decay;
                match runs.last_mut() {
                    Some(r) if r.bucket == bi && r.decay == decay && r.shard.end == shard.start => r.shard.end = shard.end,
                    _ => runs.push(Run { bucket: bi, shard, decay }),
                }
            }
        }
        let buckets = layout.buckets().len();
        Ok(Zero1 {
            grad_buffer: Tensor::zeros([layout.padded() as i64], f32s),
            accumulating: false,
            exp_avg: Tensor::zeros([n], (adam.moments, device)),
            exp_avg_sq: Tensor::zeros([n], (adam.moments, device)),
            started: vec![false; buckets],
            gathers: (0..buckets).map(|_| None).collect(),
            squares: None,
            master,
            buffers,
            runs,
            rank,
            params,
            layout,
            adam,
            step: 0,
            accumulate_kernel: true,
        })
    }

    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Bytes held per rank: (parameter buffers, gradient buffer, optimizer shard: masters + moments).
    pub fn memory_bytes(&self) -> (usize, usize, usize) {
        let bytes = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        let params = self.buffers.iter().map(bytes).sum();
        (params, bytes(&self.grad_buffer), bytes(&self.master) + bytes(&self.exp_avg) + bytes(&self.exp_avg_sq))
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

    /// Add the parameters' gradients in `flat` (a bucket's elements, or all) into the gradient
    /// buffer (the first micro-batch of a step overwrites it; a parameter without gradient
    /// counts as zeros) and clear them.
    fn take_grads(&mut self, flat: Range<usize>) {
        let first = !self.accumulating;
        tch::no_grad(|| {
            for b in self.layout.buckets() {
                let (lo, hi) = (b.flat.start.max(flat.start), b.flat.end.min(flat.end));
                if lo >= hi {
                    continue;
                }
                let dst = self.grad_buffer.narrow(0, b.padded.start as i64, b.padded.len() as i64);
                for piece in self.layout.pieces(lo..hi) {
                    let at = piece.in_range.start + (lo - b.flat.start);
                    let mut part = dst.narrow(0, at as i64, piece.in_range.len() as i64);
                    let p = &self.params[piece.param];
                    let grad = p.tensor.grad();
                    if grad.defined() {
                        let g = grad.reshape([-1]).narrow(0, piece.in_param.start as i64, piece.in_param.len() as i64);
                        if first {
                            part.copy_(&g);
                        } else {
                            if self.accumulate_kernel {
                                openseek_kernels::accumulate_grad(&mut part, &g).expect("summing a gradient into the bucket buffer");
                            } else {
                                let _ = part.g_add_(&g);
                            }
                        }
                    } else if first {
                        let _ = part.zero_();
                    }
                }
            }
        });
        for piece in self.layout.pieces(flat) {
            let p = &self.params[piece.param];
            if p.tensor.grad().defined() && piece.in_param.end == p.tensor.numel() {
                openseek_kernels::set_grad(&p.tensor, None).expect("clearing a gradient");
            }
        }
    }

    /// After each micro-batch but the last of a step: its gradients summed into the fp32 buffer.
    pub fn accumulate_grads(&mut self) {
        self.take_grads(0..self.layout.total());
        self.accumulating = true;
    }

    /// The gradients of the parameters with bucket key `key` are complete (for this step): start
    /// averaging their buckets over ranks, overlapped with what the device does next. Every rank
    /// must call it with the same keys in the same order.
    pub fn grads_ready(&mut self, key: usize, comm: &mut Comm) -> Result<(), Failure> {
        for b in 0..self.layout.buckets().len() {
            if self.layout.buckets()[b].key / 2 == key && !self.started[b] {
                self.start_bucket(b, comm)?;
            }
        }
        Ok(())
    }

    /// Sum bucket `b`'s last gradients into the buffer and start its reduce-scatter into this
    /// rank's slice.
    fn start_bucket(&mut self, b: usize, comm: &mut Comm) -> Result<(), Failure> {
        let bucket = self.layout.buckets()[b].clone();
        self.take_grads(bucket.flat.clone());
        let src = self.grad_buffer.narrow(0, bucket.padded.start as i64, bucket.padded.len() as i64);
        // In place: this rank's slice of the bucket receives the average.
        let mut out = self.grad_slice(b);
        comm.reduce_scatter_overlapped(&src, &mut out, ReduceOp::Avg)?;
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
        self.accumulating = false;
        comm.wait()
    }

    /// This rank's slice of bucket `b` in the gradient buffer (after the reduction: its averaged gradient).
    fn grad_slice(&self, b: usize) -> Tensor {
        let bucket = &self.layout.buckets()[b];
        let len = bucket.slice_len(self.layout.world());
        self.grad_buffer.narrow(0, (bucket.padded.start + self.rank * len) as i64, len as i64)
    }

    /// The gradient of this rank's shard range `shard` (within one bucket's slice).
    fn grad_of(&self, bucket: usize, shard: &Range<usize>) -> Tensor {
        let at = self.layout.buckets()[bucket].in_shard(self.layout.world()).start;
        self.grad_slice(bucket).narrow(0, (shard.start - at) as i64, shard.len() as i64)
    }

    /// The global gradient norm (all ranks' slices together); a host sync.
    pub fn grad_norm(&self, comm: &mut Comm) -> Result<f64, Failure> {
        let slices: Vec<Tensor> = (0..self.buffers.len()).map(|b| self.grad_slice(b)).collect();
        // Per slice an fp32 norm (no squared copy of the gradient), squares summed in fp64.
        let norms: Vec<Tensor> = if self.grad_buffer.device().is_cuda() {
            openseek_kernels::foreach_norm(&slices).map_err(|e| Failure::software(format!("_foreach_norm: {e}")))?
        } else {
            slices.iter().map(|t| t.norm()).collect()
        };
        let local = Tensor::stack(&norms, 0).to_kind(Kind::Double).square().sum(Kind::Double);
        let mut sq = [local.double_value(&[])];
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
        for b in 0..self.buffers.len() {
            let _ = self.grad_slice(b).g_mul_scalar_(coef);
        }
    }

    /// This rank's averaged gradient slices, fp32, end to end as its shard holds them (a copy).
    pub fn grad_shard(&self) -> Tensor {
        Tensor::cat(&(0..self.buffers.len()).map(|b| self.grad_slice(b)).collect::<Vec<_>>(), 0)
    }

    /// This rank's part of bucket `b`'s buffer (what its all-gather sends).
    fn own_slice(&self, b: usize) -> Tensor {
        let bucket = &self.layout.buckets()[b];
        let len = bucket.slice_len(self.layout.world());
        self.buffers[b].narrow(0, (self.rank * len) as i64, len as i64)
    }

    /// One AdamW step on this rank's slices with learning rate `lr`, the gradients multiplied by
    /// `grad_scale` (the clipping factor); the updated slices are written into this rank's part of
    /// the parameter buffers ([`Zero1::gather_params`] sends them to the other ranks).
    pub fn step(&mut self, lr: f64, grad_scale: f64) {
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = self.adam;
        self.step += 1;
        self.squares = None;
        let _guard = tch::no_grad_guard();
        if self.master.device().is_cuda() {
            let h = openseek_kernels::AdamWStep { lr, beta1, beta2, eps, weight_decay: 0.0, step: self.step, grad_scale };
            let squares = Tensor::zeros([self.runs.len().max(1) as i64, openseek_kernels::adamw::MAX_BLOCKS], (Kind::Float, self.master.device()));
            for (i, run) in self.runs.iter().enumerate() {
                let (at, len) = (run.shard.start as i64, run.shard.len() as i64);
                let bucket_at = self.layout.buckets()[run.bucket].in_shard(self.layout.world()).start;
                let mut leaf = self.own_slice(run.bucket).narrow(0, (run.shard.start - bucket_at) as i64, len);
                let h = openseek_kernels::AdamWStep { weight_decay: if run.decay { weight_decay } else { 0.0 }, ..h };
                let w = self.master.narrow(0, at, len);
                let bf16 = leaf.kind() == Kind::BFloat16;
                openseek_kernels::adamw_update(
                    &w,
                    bf16.then_some(&leaf),
                    &self.grad_of(run.bucket, &run.shard),
                    &self.exp_avg.narrow(0, at, len),
                    &self.exp_avg_sq.narrow(0, at, len),
                    &h,
                    Some(&squares.get(i as i64)),
                )
                .unwrap_or_else(|e| panic!("AdamW kernel on a ZeRO-1 slice: {e}"));
                if !bf16 {
                    leaf.copy_(&w);
                }
            }
            self.squares = Some(squares);
            return;
        }
        if grad_scale != 1.0 {
            self.scale_grads(grad_scale);
        }
        let grad = self.grad_shard();
        for run in self.runs.iter().filter(|r| r.decay) {
            if weight_decay != 0.0 {
                let _ = self.master.narrow(0, run.shard.start as i64, run.shard.len() as i64).g_mul_scalar_(1.0 - lr * weight_decay);
            }
        }
        // The moments in fp32 (themselves when they are fp32), stored back when they are bf16.
        let (mut exp_avg, mut exp_avg_sq) = (self.exp_avg.to_kind(Kind::Float), self.exp_avg_sq.to_kind(Kind::Float));
        let _ = exp_avg.lerp_(&grad, 1.0 - beta1);
        let _ = exp_avg_sq.g_mul_scalar_(beta2);
        let _ = exp_avg_sq.g_add_(&(grad.square() * (1.0 - beta2)));
        if self.exp_avg.kind() != Kind::Float {
            self.exp_avg.copy_(&exp_avg);
            self.exp_avg_sq.copy_(&exp_avg_sq);
            (exp_avg, exp_avg_sq) = (self.exp_avg.to_kind(Kind::Float), self.exp_avg_sq.to_kind(Kind::Float));
        }
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        let denom = exp_avg_sq.sqrt() / bc2.sqrt() + eps;
        let _ = self.master.g_sub_(&(&exp_avg / denom * (lr / bc1)));
        for b in 0..self.buffers.len() {
            let at = self.layout.buckets()[b].in_shard(self.layout.world());
            let mut mine = self.own_slice(b);
            mine.copy_(&self.master.narrow(0, at.start as i64, at.len() as i64));
        }
    }

    /// The L2 norm of all master weights (every rank's shard); a host sync.
    pub fn weight_norm(&mut self, comm: &mut Comm) -> Result<f64, Failure> {
        let local = match self.squares.take() {
            Some(q) => q.sum(Kind::Double),
            None => self.master.square().sum(Kind::Double),
        };
        let mut sq = [local.double_value(&[])];
        comm.all_reduce_f64(&mut sq, ReduceOp::Sum)?;
        Ok(sq[0].sqrt())
    }

    /// All-gather every bucket in place, so every rank's parameters hold the updated values. With
    /// `overlap` (NCCL) the gathers run behind the work that follows; [`Zero1::params_ready`]
    /// makes the device wait for a part of the model before it is used.
    pub fn gather_params(&mut self, comm: &mut Comm, overlap: bool) -> Result<(), Failure> {
        for b in 0..self.buffers.len() {
            let (mine, mut all) = (self.own_slice(b), self.buffers[b].shallow_clone());
            if overlap {
                comm.all_gather_overlapped(&mine, &mut all)?;
                self.gathers[b] = Some(comm.mark()?);
            } else {
                comm.all_gather(&mine, &mut all)?;
            }
        }
        Ok(())
    }

    /// Before the parameters with bucket key `key` are used: the device waits for their
    /// overlapped all-gather (and those queued before it).
    pub fn params_ready(&mut self, key: usize, comm: &mut Comm) -> Result<(), Failure> {
        let Some(last) = (0..self.gathers.len()).rev().find(|&b| self.layout.buckets()[b].key / 2 == key && self.gathers[b].is_some()) else { return Ok(()) };
        let mark = self.gathers[last].take().unwrap();
        self.gathers[..last].iter_mut().for_each(|g| *g = None);
        comm.wait_mark(mark)
    }

    /// The device waits for every overlapped all-gather still pending.
    pub fn all_params_ready(&mut self, comm: &mut Comm) -> Result<(), Failure> {
        match (0..self.gathers.len()).rev().find(|&b| self.gathers[b].is_some()) {
            Some(last) => {
                let mark = self.gathers[last].take().unwrap();
                self.gathers.iter_mut().for_each(|g| *g = None);
                comm.wait_mark(mark)
            }
            None => Ok(()),
        }
    }

    /// (name, fp32 master) of every parameter whose leaf is not fp32, gathered from all ranks
    /// onto the host (every rank calls it; a checkpoint saves these in place of the bf16 leaves).
    pub fn full_masters(&self, comm: &mut Comm) -> Result<Vec<(String, Tensor)>, Failure> {
        let world = self.layout.world();
        let mut out = vec![];
        for (b, bucket) in self.layout.buckets().iter().enumerate() {
            if self.buffers[b].kind() == Kind::Float {
                continue;
            }
            let at = bucket.in_shard(world);
            let mine = self.master.narrow(0, at.start as i64, at.len() as i64);
            let mut all = Tensor::zeros([bucket.padded.len() as i64], (Kind::Float, self.master.device()));
            comm.all_gather(&mine, &mut all)?;
            let all = all.to_device(Device::Cpu);
            for piece in self.layout.pieces(bucket.flat.clone()) {
                let p = &self.params[piece.param];
                let values = all.narrow(0, piece.in_range.start as i64, piece.in_range.len() as i64).view(p.tensor.size().as_slice());
                out.push((p.name.clone(), values));
            }
        }
        Ok(out)
    }

    /// `t`'s parts that hold this rank's flat ranges, end to end, on the host.
    fn owned_values(&self, t: &Tensor) -> Result<Vec<f32>, Failure> {
        let parts: Vec<Tensor> = self.layout.shard_ranges(self.rank).iter().map(|(at, _)| t.narrow(0, at.start as i64, at.len() as i64)).collect();
        let joined = if parts.is_empty() { Tensor::zeros([0], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&parts, 0).to_device(Device::Cpu).to_kind(Kind::Float) };
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
        self.exp_avg = put("exp_avg").to_kind(self.adam.moments);
        self.exp_avg_sq = put("exp_avg_sq").to_kind(self.adam.moments);
        self.step = step;
        // The parameters from the masters (exact where the model files held rounded values).
        tch::no_grad(|| {
            for b in 0..self.buffers.len() {
                let at = self.layout.buckets()[b].in_shard(self.layout.world());
                let mut mine = self.own_slice(b);
                mine.copy_(&self.master.narrow(0, at.start as i64, at.len() as i64));
            }
        });
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
            .map(|(i, (v, &d))| NamedParam { name: format!("p{i}"), tensor: Tensor::from_slice(v).set_requires_grad(true), decay: d, bucket: 0, leaf_kind: Kind::Float })
            .collect()
    }

    /// Zero1 at world size 1 is torch's AdamW: the same update as a hand-written reference.
    #[test]
    fn zero1_world_one_matches_a_reference_adamw() {
        let mut comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let ps = params(&[&[1.0, -2.0, 3.0], &[0.5, 0.25]], &[true, false]);
        let model: Vec<Tensor> = ps.iter().map(|p| p.tensor.shallow_clone()).collect();
        let adam = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, moments: Kind::Float };
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
            opt.step(lr, 1.0);
            opt.gather_params(&mut comm, false).unwrap();
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
                                NamedParam { name: format!("p{i}"), tensor: t.set_requires_grad(true), decay: i != 2, bucket: k, leaf_kind: Kind::Float }
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
                    let adam = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, moments: Kind::Float };
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
                    let (ga, gb) = (Vec::<f32>::try_from(&a.grad_shard()).unwrap(), Vec::<f32>::try_from(&b.grad_shard()).unwrap());
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
                    a.step(0.01, 1.0);
                    a.gather_params(&mut comm, false).unwrap();
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
        let adam = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, moments: Kind::Float };
        let zeros = sizes.iter().enumerate().map(|(i, &n)| NamedParam { name: format!("p{i}"), tensor: Tensor::zeros([n as i64], (Kind::Float, Device::Cpu)), decay: i != 2, bucket: 0, leaf_kind: Kind::Float });
        let mut one = Zero1::new(zeros.collect(), &comm, adam).unwrap();
        one.load(&state).unwrap();
        let master = Vec::<f32>::try_from(&one.master.narrow(0, 0, one.layout().total() as i64)).unwrap();
        assert_eq!(master, got[0].0.concat());
        assert_eq!(one.steps(), 1);
    }

    #[test]
    fn zero1_state_saves_and_reloads_with_its_step() {
        let comm = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let adam = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, moments: Kind::Float };
        let mut opt = Zero1::new(params(&[&[1.0, 2.0], &[3.0]], &[true, false]), &comm, adam).unwrap();
        let mut g = opt.grad_slice(0).narrow(0, 0, 3);
        g.copy_(&Tensor::from_slice(&[0.5f32, -1.0, 2.0]));
        opt.step(0.1, 1.0);
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
