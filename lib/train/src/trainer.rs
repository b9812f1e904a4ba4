//! The training loop, top to bottom: set up the run (crate::setup), then per step
//! [`Trainer::train_step`] (crate::train_step: the micro-batches, the gradient reduction, the
//! update), its log record, a checkpoint when due; a stop signal (USR1/TERM) seen by any rank
//! checkpoints every rank at the same step and returns `TempFail` (exit 75).

use crate::checkpoint::{self, RunInfo};
use crate::config::TrainConfig;
use crate::metrics;
use crate::run_log::PendingRecord;
use crate::setup::Trainer;
use crate::train_step::StepOutcome;
use openseek_common::signals::StopSignal;
use openseek_common::{ExitCode, Failure};
use openseek_mix::store::SampleStore;
use serde_json::{json, Value};
use std::path::Path;
use tch::Device;

/// This process is about to exit on `failure`: in a job of several ranks, tell the others through
/// the rendezvous store, so that their waits for this rank end at once with the reason (also when
/// this rank stopped before joining them: a config error, say) instead of the store's timeout.
pub fn leave_job(failure: &Failure) {
    if let Ok(launch) = openseek_dist::Launch::from_env() {
        openseek_dist::store::leave(&launch, &format!("exit {}: {}", failure.code as i32, failure.message));
    }
}

/// Train as `cfg` says in `run_dir`, resuming from its newest checkpoint. Returns after the last
/// step; a stop signal returns `TempFail` after a checkpoint. A resume on a sample store other
/// than the one the run started on is refused unless `allow_data_change`.
pub fn train(cfg: &TrainConfig, run_dir: &Path, info: &RunInfo, stop: &StopSignal, allow_data_change: bool) -> Result<(), Failure> {
    let store = SampleStore::open(&cfg.data)?;
    let Some(mut t) = Trainer::setup(cfg, run_dir, info, &store, allow_data_change)? else { return Ok(()) };
    while t.state.step < t.total_steps {
        let step = t.train_step()?;
        t.record(step)?;
        let signal = stop.received();
        let stopping = t.comm.stop_agreed(signal.is_some())?;
        let due = cfg.save_interval.is_some_and(|n| t.state.step % n == 0);
        if due || (t.state.step == t.total_steps && cfg.save_at_end) || stopping {
            t.checkpoint()?;
        }
        if stopping {
            let by = signal.map_or_else(|| "a signal to another rank".to_string(), |s| s.to_string());
            return Err(Failure::new(
                ExitCode::TempFail,
                format!(
                    "{}: stopped by {by} after step {}; checkpoint {} saved; run again to resume",
                    t.comm.launch().who(),
                    t.state.step,
                    checkpoint::name(t.saved_at)
                ),
            ));
        }
    }
    t.finish()
}

impl Trainer<'_> {
    /// The step's log record; written once the next step (or a checkpoint, or the end) has read
    /// the parameter norm of its update.
    fn record(&mut self, step: StepOutcome) -> Result<(), Failure> {
        let world = self.comm.world();
        let tokens = (self.cfg.global_batch_size as u64 * self.seq as u64) as f64;
        let tokens_per_s = tokens / step.step_time_s;
        let tflops = tokens_per_s * self.flops_per_token / 1e12;
        let device = self.comm.device();
        let memory = match device {
            Device::Cpu => metrics::peak_rss_bytes(),
            _ => metrics::cuda_memory_in_use_bytes(),
        };
        // CUDA: the most the caching allocator handed to tensors since the start (the device
        // memory in use above also counts its reserve, NCCL's buffers and the context).
        let peak_allocated = match device {
            Device::Cuda(i) => openseek_kernels::memory_stats(i).ok().map(|m| m.peak_allocated as f64 / (1u64 << 30) as f64),
            _ => None,
        };
        if let Some(gib) = memory.map(|b| b as f64 / (1u64 << 30) as f64) {
            self.peak_memory = Some(self.peak_memory.map_or(gib, |p: f64| p.max(gib)));
        }
        let (moe, scalars) = crate::moe_stats::record(&self.model, &step.loads);
        let record = json!({
            "step": self.state.step,
            "world_size": world,
            "consumed_samples": self.state.consumed_samples,
            "loss": step.loss,
            "seq_aux_loss": step.seq_aux_loss,
            "z_loss": step.z_loss,
            "mtp_loss": step.mtp_loss,
            "lr": step.lr,
            "grad_norm": step.grad_norm,
            "param_norm": Value::Null,
            "tokens": tokens,
            "tokens_per_s": tokens_per_s,
            "tflops": tflops,
            "mfu": tflops / (self.cfg.peak_tflops * world as f64),
            "step_time_s": step.step_time_s,
            "data_wait_s": step.data_wait_s,
            "fwd_bwd_s": step.fwd_bwd_s,
            "optimizer_s": step.optimizer_s,
            "peak_memory_gib": self.peak_memory,
            "peak_allocated_gib": peak_allocated,
            "skipped": step.skipped,
            "sample_ids": if step.skipped { json!(step.sample_ids) } else { Value::Null },
            "moe": moe,
        });
        self.pending = Some(PendingRecord { record, scalars });
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), Failure> {
        self.emit_pending()?;
        let dir = checkpoint::save(self.run_dir, &self.model, self.tokenizer.as_deref(), &self.opt, &self.state, self.cfg.keep_last, &mut self.comm)?;
        self.saved_at = self.state.step;
        if self.comm.rank() == 0 {
            eprintln!("os-train: saved {}", dir.display());
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), Failure> {
        self.emit_pending()?;
        if self.comm.rank() == 0 {
            eprintln!("os-train: done: {} steps ({} skipped)", self.state.step, self.state.skipped_steps);
        }
        Ok(())
    }
}
