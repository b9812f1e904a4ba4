//! One training step, as torchtitan's `train_step`: the step's micro-batches from the data cursor,
//! each one's forward and backward (crate::microbatch), the gradients reduced over ranks, the
//! NaN/inf check, the update or a skip, the routers' bias update.
//!
//! Loss averaging (`loss_averaging`): `per_micro_batch` (Megatron's default) divides each
//! micro-batch's sum of masked token losses by its own loss-token count times the micro-batches
//! per step, so the step's loss is the mean over micro-batches (and, as the gradients are averaged
//! over ranks, over ranks) of the micro-batch means; `per_token` (Megatron's
//! `--calculate-per-token-loss`) divides by the global batch's loss-token count over the ranks, so
//! the step's loss is the mean over all its loss tokens. A micro-batch without loss tokens counts
//! one (its loss is 0, where Megatron's would be 0/0).
//!
//! Skipped steps (`on_nan = "skip"`) as Megatron-LM's `train_step`: the learning-rate schedule
//! advances only when the update is taken (`opt_param_scheduler.step` runs only if
//! `update_successful`), while the data cursor moves on; the routers' biases are updated from the
//! step's loads whether or not the update is taken (`finalize_model_grads` runs
//! `_update_router_expert_bias` before the optimizer step).

use crate::config::{LossAveraging, OnNan};
use crate::microbatch::{self, GradReady, MicroBatch, MicroBatchPlan, MicroOutput, PassPoint};
use crate::metrics::sync;
use crate::setup::Trainer;
use crate::mtp;
use openseek_common::Failure;
use openseek_dist::ReduceOp;
use openseek_mix::reader;
use openseek_model::device::upload;
use openseek_model::model::FeedForward;
use openseek_model::moe::AuxCoefficients;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What a step did, for its log record.
pub struct StepOutcome {
    /// The LM loss as the step averaged it (see the module comment), averaged over ranks.
    pub loss: f64,
    pub seq_aux_loss: f64,
    pub z_loss: f64,
    /// The multi-token-prediction loss (before `mtp_loss_coeff`, averaged like `loss`), when it ran.
    pub mtp_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    /// The update was not taken (a non-finite loss or gradient norm).
    pub skipped: bool,
    /// This rank's samples of the step.
    pub sample_ids: Vec<u64>,
    /// Tokens per expert over the step and all ranks, per MoE layer.
    pub loads: Vec<Tensor>,
    pub data_wait_s: f64,
    pub fwd_bwd_s: f64,
    /// On CUDA the time to queue the update: it runs ahead of the next step's work.
    pub optimizer_s: f64,
    pub step_time_s: f64,
}

fn to_i64(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&t| t as i64).collect()
}

impl Trainer<'_> {
    /// Run one step: `accumulation` micro-batches on this rank, then the update.
    pub fn train_step(&mut self) -> Result<StepOutcome, Failure> {
        let started = Instant::now();
        let device = self.comm.device();
        let trace = Trace::start(self.cfg.debug.trace.as_deref().filter(|_| self.steps_run == 2))?;
        let (batches, sample_ids) = self.next_micro_batches()?;
        let denominators = self.loss_denominators(&batches)?;
        let data_wait_s = started.elapsed().as_secs_f64();

        let mut losses = [(); 4].map(|_| Tensor::zeros([], (Kind::Float, device)));
        let mut loads: Vec<Tensor> = vec![];
        let mut mtp_ran = false;
        for (k, (b, denominator)) in batches.iter().zip(denominators).enumerate() {
            let out = self.micro_batch(b, denominator, k + 1 == batches.len())?;
            mtp_ran = out.mtp_loss.is_some();
            let mtp_loss = out.mtp_loss.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, device)));
            for (sum, part) in losses.iter_mut().zip([out.lm_loss, out.seq_aux_loss, out.z_loss, mtp_loss]) {
                *sum += part;
            }
            if loads.is_empty() {
                loads = out.loads;
            } else {
                loads.iter_mut().zip(out.loads).for_each(|(a, l)| *a += l);
            }
        }
        self.state.consumed_samples = self.loader.cursor().consumed_samples;
        let loads = self.sum_loads_over_ranks(loads)?;
        let grad_norm = self.opt.reduce_grads(&mut self.comm)?;
        sync(device);
        let fwd_bwd_s = started.elapsed().as_secs_f64() - data_wait_s;
        // The previous step's update has run: its record can have its parameter norm.
        self.emit_pending()?;
        let mut losses = losses.map(|l| l.double_value(&[]));
        self.comm.all_reduce_f64(&mut losses, ReduceOp::Avg)?;
        let [loss, seq_aux_loss, z_loss, mtp_loss] = losses;
        let mtp_loss = mtp_ran.then_some(mtp_loss);

        let lr = self.cfg.schedule().lr(self.state.schedule_samples());
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        if skipped {
            eprintln!(
                "os-train: step {}: loss {loss}, grad norm {grad_norm}; samples {sample_ids:?}{}",
                self.state.step + 1,
                if self.cfg.on_nan == OnNan::Skip { "; skipping the update" } else { "" }
            );
            if self.cfg.on_nan == OnNan::Stop {
                return Err(Failure::data(format!(
                    "step {}: loss {loss}, grad norm {grad_norm} (not finite) on samples {sample_ids:?} of {}; stopped (on_nan = stop)",
                    self.state.step + 1,
                    self.cfg.data.display()
                )));
            }
            self.state.skipped_steps += 1;
        } else {
            let clip = self.cfg.clip_grad;
            let scale = if clip > 0.0 { (clip / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
            self.opt.step(&mut self.comm, lr, scale)?;
            self.state.optimizer_steps = self.opt.steps();
            self.state.schedule_samples = Some(self.state.schedule_samples() + self.cfg.global_batch_size as u64);
        }
        self.update_router_biases(&loads);
        let optimizer_s = started.elapsed().as_secs_f64() - data_wait_s - fwd_bwd_s;
        self.opt.zero_grad();
        trace.stop(device)?;
        self.state.step += 1;
        self.steps_run += 1;
        Ok(StepOutcome {
            loss,
            seq_aux_loss,
            z_loss,
            mtp_loss,
            lr,
            grad_norm,
            skipped,
            sample_ids,
            loads,
            data_wait_s,
            fwd_bwd_s,
            optimizer_s,
            step_time_s: started.elapsed().as_secs_f64(),
        })
    }

    /// This rank's micro-batches of the step, and their sample ids; tokens outside the model's
    /// vocabulary are a data error.
    fn next_micro_batches(&mut self) -> Result<(Vec<reader::MicroBatch>, Vec<u64>), Failure> {
        let vocab = self.model.config.vocab_size;
        let mut batches = Vec::with_capacity(self.accumulation);
        let mut sample_ids = vec![];
        for _ in 0..self.accumulation {
            let b = self.loader.next_batch()?.ok_or_else(|| Failure::software("the store ran out of samples"))?;
            if let Some(&bad) = b.tokens.iter().chain(&b.labels).find(|&&t| t as i64 >= vocab) {
                return Err(Failure::data(format!(
                    "{}: samples {:?} hold token {bad}, outside the model's vocabulary of {vocab}",
                    self.cfg.data.display(),
                    b.sample_ids
                )));
            }
            sample_ids.extend_from_slice(&b.sample_ids);
            batches.push(b);
        }
        Ok((batches, sample_ids))
    }

    /// Per micro-batch, what its sum of masked token losses is divided by (the module comment).
    fn loss_denominators(&mut self, batches: &[reader::MicroBatch]) -> Result<Vec<f64>, Failure> {
        let counts: Vec<f64> = batches.iter().map(|b| b.loss_mask.iter().map(|&m| m as f64).sum()).collect();
        Ok(match self.cfg.loss_averaging {
            LossAveraging::PerToken => {
                let mut total = [counts.iter().sum::<f64>()];
                self.comm.all_reduce_f64(&mut total, ReduceOp::Sum)?;
                // Each rank's gradient is its tokens' loss over the global count times the world
                // size, so the average over ranks is the gradient of the global batch's mean loss.
                vec![total[0].max(1.0) / self.comm.world() as f64; counts.len()]
            }
            LossAveraging::PerMicroBatch => counts.iter().map(|c| c.max(1.0) * counts.len() as f64).collect(),
        })
    }

    /// One micro-batch's forward and backward; during the step's last one the gradients are
    /// handed to the optimizer's reduction as they complete (`overlap_grad_reduce`); each part of
    /// the model waits for its parameters' all-gather (`overlap_param_gather`).
    /// A micro-batch's tensors on the device, copied through pinned memory without waiting for the
    /// device (a copy from pageable memory would wait for the queued work: the round-5 trace showed
    /// ~0.9 ms of idle GPU at each micro-batch's start).
    fn upload(&self, b: &reader::MicroBatch) -> MicroBatch {
        let device = self.comm.device();
        let rows = b.sample_ids.len() as i64;
        MicroBatch {
            ids: upload(&to_i64(&b.tokens), device).view([rows, self.seq]),
            labels: upload(&to_i64(&b.labels), device),
            loss_mask: upload(&b.loss_mask, device),
            per_document: self.cfg.attention_per_document.then(|| openseek_model::document_attention(&b.document_starts, self.seq, device)),
        }
    }

    fn micro_batch(&mut self, b: &reader::MicroBatch, loss_denominator: f64, last: bool) -> Result<MicroOutput, Failure> {
        let batch = self.upload(b);
        let cfg = self.cfg;
        let depths = self.model.mtp.len();
        let mtp = (depths > 0 && cfg.mtp_loss_coeff > 0.0).then(|| {
            let denominators = mtp::denominators(cfg.loss_averaging, loss_denominator, &b.loss_mask, self.seq as usize, depths, self.accumulation);
            (cfg.mtp_loss_coeff, denominators)
        });
        let plan = MicroBatchPlan {
            recompute: &self.recompute,
            aux: AuxCoefficients { seq_aux_loss: cfg.seq_aux_loss_coeff, z_loss: cfg.z_loss_coeff },
            chunk_tokens: cfg.loss_chunk_tokens as i64,
            head_loss: cfg.debug.loss,
            fast: self.fast,
            loss_denominator,
            micro_batches: self.accumulation,
            mtp,
            profile: cfg.debug.profile,
        };
        let step = self.state.step + 1;
        let (opt, comm) = (&mut self.opt, &mut self.comm);
        let mut at = |point: PassPoint| match point {
            PassPoint::ParamsNeeded(part) => opt.params_needed(comm, part),
            PassPoint::GradsReady(part) => {
                if last && part == GradReady::Embedding && crate::fault::at("nan-grad-at-step", step) {
                    let _ = opt.leaves()[0].grad().fill_(f64::NAN);
                }
                if last && cfg.overlap_grad_reduce {
                    opt.grads_ready(comm, part)?;
                }
                Ok(())
            }
        };
        let out = microbatch::forward_backward(&self.model, &batch, &plan, &mut at)?;
        if self.accumulation > 1 {
            self.opt.accumulate_grads();
        }
        Ok(out)
    }

    /// The step's tokens per expert summed over ranks (each rank routed its own tokens).
    fn sum_loads_over_ranks(&mut self, loads: Vec<Tensor>) -> Result<Vec<Tensor>, Failure> {
        if self.comm.world() == 1 || loads.is_empty() {
            return Ok(loads);
        }
        let sizes: Vec<i64> = loads.iter().map(|l| l.numel() as i64).collect();
        let mut all = Tensor::cat(&loads, 0);
        self.comm.all_reduce(&mut all, ReduceOp::Sum)?;
        Ok(all.split_with_sizes(&sizes, 0))
    }

    /// DeepSeek-V3's auxiliary-loss-free balancing after the step (`router_bias_update_rate`).
    fn update_router_biases(&mut self, loads: &[Tensor]) {
        let rate = self.cfg.router_bias_update_rate;
        if rate == 0.0 {
            return;
        }
        // The MTP layers' routers come last, as their loads do (present when the MTP loss ran).
        let routers = self.model.all_layers_mut().filter_map(|(_, l)| match &mut l.mlp {
            FeedForward::Moe(m) => Some(&mut m.gate),
            FeedForward::Dense(_) => None,
        });
        for (router, load) in routers.zip(loads) {
            router.update_bias(load, rate);
        }
    }
}

/// `debug.trace`: the process's third step — its micro-batches' forward and backward, the
/// reduction and the update — under the Kineto profiler, written as a Chrome trace (CPU operators
/// and CUDA kernels).
struct Trace<'a>(Option<&'a Path>);

impl<'a> Trace<'a> {
    fn start(path: Option<&'a Path>) -> Result<Trace<'a>, Failure> {
        if path.is_some() {
            openseek_kernels::profiler_start().map_err(|e| Failure::software(format!("starting the profiler: {e}")))?;
        }
        Ok(Trace(path))
    }

    fn stop(&self, device: tch::Device) -> Result<(), Failure> {
        if let Some(path) = self.0 {
            if let tch::Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            openseek_kernels::profiler_stop(path).map_err(|e| Failure::io(format!("{}: cannot write the profiler trace: {e}", path.display())))?;
            eprintln!("os-train: profiler trace in {}", path.display());
        }
        Ok(())
    }
}
