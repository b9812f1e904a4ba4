//! A run's state between steps ([`Trainer`]) and how a run starts: check the config against the
//! launch and the store, rendezvous with the other ranks, record the config, build or resume the
//! model, optimizer and data cursor. One process per device (ranks from Slurm or torchrun
//! variables, openseek-dist): each rank reads its part of every global batch (global batch = ranks
//! x micro-batch x accumulation); rank 0 logs and writes the model files, every rank its
//! optimizer shard.

use crate::checkpoint::{self, DataIdentity, RunInfo, TrainerState};
use crate::config::{ModelConfig, MomentsDtype, Precision, TrainConfig, TrainFastPaths};
use crate::metrics;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::run_log::{PendingRecord, RunLog};
use openseek_common::{ExitCode, Failure};
use openseek_dist::{Comm, CommOptions, Launch};
use openseek_mix::reader::{Cursor, DataLoader, ReaderOptions};
use openseek_mix::store::SampleStore;
use openseek_model::{Config, DeepseekV3};
use serde_json::{json, Value};
use std::path::Path;
use tch::{Device, Kind, Tensor};


/// Everything a run holds between steps.
pub struct Trainer<'a> {
    pub(crate) cfg: &'a TrainConfig,
    pub(crate) run_dir: &'a Path,
    pub(crate) comm: Comm,
    pub(crate) model: DeepseekV3,
    pub(crate) opt: Optimizer,
    pub(crate) loader: DataLoader<'a>,
    pub(crate) state: TrainerState,
    /// Micro-batches per rank per step.
    pub(crate) accumulation: usize,
    /// Tokens per sample.
    pub(crate) seq: i64,
    pub(crate) recompute: Vec<bool>,
    pub(crate) fast: TrainFastPaths,
    /// Steps run by this process (`debug.trace` records the third).
    pub(crate) steps_run: u64,
    pub(crate) total_steps: u64,
    pub(crate) log: Option<RunLog>,
    /// The last step's record, waiting for its parameter norm (see crate::run_log).
    pub(crate) pending: Option<PendingRecord>,
    /// CPU: the peak resident set; CUDA: the most device memory in use after a step.
    pub(crate) peak_memory: Option<f64>,
    pub(crate) saved_at: u64,
    pub(crate) flops_per_token: f64,
    /// The tokenizer directory copied into every checkpoint (crate::tokenizer_source).
    pub(crate) tokenizer: Option<std::path::PathBuf>,
}

/// The model's weights and compute dtypes for a precision.
fn kinds(p: Precision) -> (Kind, Kind) {
    match p {
        Precision::Bf16Mixed | Precision::Bf16Autocast => (Kind::Float, Kind::BFloat16),
        Precision::Bf16 => (Kind::BFloat16, Kind::BFloat16),
        Precision::Fp32 => (Kind::Float, Kind::Float),
    }
}

/// The name a config gives a precision (as serde writes it), for messages.
pub fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::Bf16Mixed => "bf16-mixed",
        Precision::Bf16Autocast => "bf16-autocast",
        Precision::Bf16 => "bf16",
        Precision::Fp32 => "fp32",
    }
}

/// The model to start from: the newest checkpoint of the run, else `init_from`, else from scratch.
fn build_model(cfg: &TrainConfig, resume: Option<&Path>, kind: Kind, device: Device) -> Result<DeepseekV3, Failure> {
    if let Some(dir) = resume {
        return openseek_model::load(dir, kind, device);
    }
    if let Some(dir) = &cfg.init_from {
        return openseek_model::load(dir, kind, device);
    }
    let config = match cfg.model_config.as_ref().unwrap() {
        ModelConfig::Path(p) => Config::load(p)?,
        ModelConfig::Inline(m) => Config::from_json(Value::Object(m.clone())).map_err(|e| Failure::config(format!("model_config: {e}")))?,
    };
    let std = cfg.init_std.unwrap_or(config.initializer_range);
    let w = crate::init::init_weights(&config, std, cfg.seed, kind, device);
    Ok(DeepseekV3::from_weights(config, w))
}

/// This rank's device: `device` itself on one rank; with several, `cpu`, or for `auto` and `cuda`
/// the GPU of the local rank (the only one when the task is bound to one GPU).
fn rank_device(name: &str, launch: &Launch) -> Result<Device, Failure> {
    match (launch.world, name) {
        (1, _) => openseek_model::parse_device(name).map_err(|e| if e.code == ExitCode::Usage { Failure::config(e.message) } else { e }),
        (_, "cpu") => Ok(Device::Cpu),
        (_, "auto") => Ok(Comm::device_for(launch)),
        (_, "cuda") => openseek_model::parse_device("cuda").map(|_| Comm::device_for(launch)),
        (_, other) => Err(Failure::config(format!(
            "device {other}: with {} ranks each rank takes the GPU of its local rank; use device = cuda, auto or cpu",
            launch.world
        ))),
    }
}


/// Every rank must run the same os-train with the same options: each rank's version and config
/// are gathered through the store and compared key by key; a difference stops every rank with
/// one error naming the keys and each rank's value.
fn check_ranks_agree(comm: &mut Comm, cfg: &TrainConfig, info: &RunInfo) -> Result<(), Failure> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mine = json!({ "version": info.version, "git_commit": info.git_commit, "config": cfg });
    let seen = comm.store().gather("config", mine.to_string().as_bytes())?;
    let ranks: Vec<Vec<(String, String)>> = seen
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_slice(b).map_err(|e| Failure::software(format!("a rank's config is not JSON: {e}")))?;
            let mut flat = vec![];
            flatten("", &v, &mut flat);
            Ok(flat)
        })
        .collect::<Result<_, Failure>>()?;
    let differences = config_differences(&ranks);
    if differences.is_empty() {
        return Ok(());
    }
    Err(Failure::config(format!(
        "the {} ranks disagree on {}; every rank must start the same os-train with the same config and options",
        ranks.len(),
        differences.join("; ")
    )))
}

/// `value` as (dotted key, JSON text) pairs, tables descended into.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value.as_object() {
        Some(map) => {
            for (k, v) in map {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        None => out.push((prefix.to_string(), value.to_string())),
    }
}

/// "key (rank 0: v, rank 1: w, …)" for every key whose value is not the same on all ranks.
fn config_differences(ranks: &[Vec<(String, String)>]) -> Vec<String> {
    let mut keys: Vec<&str> = ranks.iter().flatten().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let value = |r: &[(String, String)], key: &str| r.iter().find(|(k, _)| k == key).map_or("(absent)".to_string(), |(_, v)| v.clone());
    keys.into_iter()
        .filter_map(|key| {
            let values: Vec<String> = ranks.iter().map(|r| value(r, key)).collect();
            (values.iter().any(|v| *v != values[0])).then(|| {
                let shown: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("rank {i}: {}", short(v))).collect();
                format!("{} ({})", key.trim_start_matches("config."), shown.join(", "))
            })
        })
        .collect()
}

fn short(v: &str) -> String {
    if v.chars().count() <= 60 { v.to_string() } else { format!("{}…", v.chars().take(60).collect::<String>()) }
}

/// Options whose value differs from the config recorded by the previous start of the run.
fn changed_options(path: &Path, cfg: &TrainConfig) -> Vec<String> {
    let Some(old) = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) else { return vec![] };
    let new = serde_json::to_value(cfg).unwrap();
    let (Some(old), Some(new)) = (old["config"].as_object(), new.as_object()) else { return vec![] };
    new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect()
}

impl<'a> Trainer<'a> {
    /// Check the run, rendezvous with the other ranks, record the config, and build or resume the
    /// model, optimizer and data cursor. None when the run is already complete.
    pub(crate) fn setup(cfg: &'a TrainConfig, run_dir: &'a Path, info: &RunInfo, store: &'a SampleStore, allow_data_change: bool) -> Result<Option<Trainer<'a>>, Failure> {
        let launch = Launch::from_env()?;
        let (rank, world) = (launch.rank, launch.world);
        let lead = rank == 0;
        let (fast_model, fast) = cfg.debug.fast_paths()?;
        if lead {
            eprintln!("os-train: config\n{}", serde_json::to_string_pretty(cfg).unwrap());
        }
        if let Some(t) = cfg.threads {
            tch::set_num_threads(t as i32);
        }
        let device = rank_device(&cfg.device, &launch)?;
        let mut comm = Comm::init(launch, device, CommOptions { force_nccl: cfg.debug.force_nccl, ..CommOptions::default() })?;
        // After the rendezvous, so that a rank whose config differs stops the others too.
        check_ranks_agree(&mut comm, cfg, info)?;
        if !cfg.global_batch_size.is_multiple_of(cfg.micro_batch_size * world) {
            return Err(Failure::config(format!(
                "global_batch_size {} must be a multiple of micro_batch_size {} x {world} ranks",
                cfg.global_batch_size, cfg.micro_batch_size
            )));
        }
        let accumulation = cfg.global_batch_size / (cfg.micro_batch_size * world);
        let (master, compute) = kinds(cfg.precision);
        let total_steps = cfg.total_steps();
        let gbs = cfg.global_batch_size as u64;
        if total_steps * gbs > store.len() {
            return Err(Failure::config(format!(
                "{} steps of {} samples need {} samples; the store {} holds {}",
                total_steps,
                gbs,
                total_steps * gbs,
                cfg.data.display(),
                store.len()
            )));
        }
        let tokenizer = crate::tokenizer_source::resolve(cfg, store)?;
        if let (true, Some(t)) = (lead, &tokenizer) {
            eprintln!("os-train: checkpoints carry the tokenizer {} ({})", t.dir.display(), t.how);
        }
        let data = DataIdentity::of(store)?;

        if lead {
            std::fs::create_dir_all(run_dir).map_err(|e| Failure::io_at(run_dir, "cannot create the run directory", &e))?;
            checkpoint::clean_temporaries(run_dir)?;
        }
        comm.store().barrier("run directory ready")?;
        let resume = checkpoint::newest(run_dir);
        let newest: Vec<String> = resume.iter().map(|(s, _)| checkpoint::name(*s)).collect();
        let seen = comm.store().gather("newest checkpoint", newest.concat().as_bytes())?;
        if seen.iter().any(|v| *v != seen[0]) {
            let seen: Vec<String> = seen.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
            return Err(Failure::io(format!(
                "{}: the ranks see different newest checkpoints ({seen:?} by rank); with several nodes the run directory must be on a shared file system",
                run_dir.display()
            )));
        }
        let mut state = match &resume {
            Some((_, dir)) => {
                let mut s = checkpoint::read_state(dir)?;
                if lead {
                    eprintln!("os-train: resuming from {} (step {}, {} samples consumed)", dir.display(), s.step, s.consumed_samples);
                }
                s.check_data(&data, dir, allow_data_change)?;
                s.check_mtp(cfg.mtp_loss_coeff, dir)?;
                s.data = Some(data);
                s
            }
            None => TrainerState::new(cfg.seed, info, data),
        };
        if lead {
            let config_path = run_dir.join("train_config.json");
            let changed = changed_options(&config_path, cfg);
            if resume.is_some() && !changed.is_empty() {
                eprintln!("os-train: warning: options changed since the previous start of this run: {}", changed.join(", "));
            }
            openseek_common::write_json_file(
                &config_path,
                &json!({
                    "tool": info.tool, "version": info.version, "git_commit": info.git_commit,
                    "provenance": openseek_common::provenance::Provenance::capture(&info.tool, &info.version),
                    "resumed_from": resume.as_ref().map(|(_, d)| d.display().to_string()),
                    "changed_since_previous_start": changed,
                    "allow_data_change": allow_data_change,
                    "tokenizer": tokenizer.as_ref().map(|t| t.dir.display().to_string()),
                    "world_size": world,
                    "collectives": comm.backend_name(),
                    "config": cfg,
                }),
            )?;
        }
        if state.step >= total_steps {
            eprintln!("os-train: the run is complete ({} of {total_steps} steps); nothing to do", state.step);
            return Ok(None);
        }

        let mut model = build_model(cfg, resume.as_ref().map(|(_, d)| d.as_path()), master, device)?;
        model.compute_kind = compute;
        model.set_fast_paths(fast_model);
        if lead && !model.mtp.is_empty() {
            let how = if cfg.mtp_loss_coeff > 0.0 { format!("trained, loss x {}", cfg.mtp_loss_coeff) } else { "not trained (mtp_loss_coeff 0), kept as loaded".into() };
            eprintln!("os-train: multi-token prediction: {} depth(s), {how}", model.mtp.len());
        }
        state.mtp_trained = (!model.mtp.is_empty()).then_some(cfg.mtp_loss_coeff > 0.0);
        let recompute = cfg.recompute_layers(model.layers.len())?;
        // With mtp_loss_coeff 0 the MTP layers are not trained: not the optimizer's (no weight decay
        // or sharded update touches them), they stay as loaded and are saved so.
        let frozen = |n: &str| cfg.mtp_loss_coeff == 0.0 && openseek_model::shapes::is_mtp_name(&model.config, n);
        let params: Vec<(String, Tensor)> = model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| !n.ends_with("e_score_correction_bias") && !frozen(n))
            .map(|(n, t)| (n, t.set_requires_grad(true)))
            .collect();
        let optimizer = OptimizerConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
            bf16_leaves: cfg.precision == Precision::Bf16Mixed,
            moments: match cfg.adam_moments_dtype {
                MomentsDtype::Fp32 => Kind::Float,
                MomentsDtype::Bf16 => Kind::BFloat16,
            },
            grad_none: fast.grad_none,
            accumulate_kernel: fast.accumulate_kernel,
            overlap_param_gather: cfg.overlap_param_gather,
        };
        let mut opt = Optimizer::new(params, &mut comm, optimizer)?;
        if let Some((_, dir)) = &resume {
            opt.load(dir, &mut comm)?;
        }
        let seq = store.seq_len() as i64;
        let options = ReaderOptions {
            eod_mask_loss: cfg.eod_mask_loss,
            reset_position_ids: cfg.attention_per_document,
            reset_attention_mask: cfg.attention_per_document,
            eod_token: store.manifest().eod_token.or(model.config.eos_token_ids.first().map(|&e| e as u32)),
            pad_token: store.manifest().pad_token,
            ..Default::default()
        };
        let loader = DataLoader::new(store, options, rank, world, cfg.micro_batch_size, Cursor { consumed_samples: state.consumed_samples })?;
        let log = if lead { Some(RunLog::open(run_dir, state.step, total_steps, cfg.tensorboard)?) } else { None };
        if lead {
            eprintln!(
                "os-train: {} parameters, {} steps of {} samples x {} tokens ({world} {} x {} micro-batches of {}), {} on {} ({}); MFU basis {} TFLOP/s per device",
                opt.leaves().iter().map(|t| t.numel()).sum::<usize>(),
                total_steps,
                gbs,
                seq,
                if world == 1 { "rank" } else { "ranks" },
                accumulation,
                cfg.micro_batch_size,
                precision_name(cfg.precision),
                openseek_model::device_name(device),
                comm.backend_name(),
                cfg.peak_tflops
            );
            eprintln!("os-train: per rank: {}", opt.memory_line());
        }
        // What setting up freed (the fp32 weights that became bf16 leaves or buckets) goes back to
        // the driver, so the memory figures count what training holds.
        if let Device::Cuda(i) = device {
            openseek_kernels::release_cached_memory(i).map_err(|e| Failure::software(format!("releasing cached CUDA memory: {e}")))?;
        }
        let mtp_depths = if cfg.mtp_loss_coeff > 0.0 { model.mtp.len() as i64 } else { 0 };
        let flops_per_token = metrics::flops_per_token(&model.config, seq, mtp_depths);
        Ok(Some(Trainer {
            cfg,
            run_dir,
            comm,
            model,
            opt,
            loader,
            saved_at: state.step,
            state,
            tokenizer: tokenizer.map(|t| t.dir),
            accumulation,
            seq,
            recompute,
            fast,
            steps_run: 0,
            total_steps,
            log,
            pending: None,
            peak_memory: None,
            flops_per_token,
        }))
    }

    /// Write the pending record (the parameter norm waits for the update queued last).
    pub(crate) fn emit_pending(&mut self) -> Result<(), Failure> {
        if let Some(p) = self.pending.take() {
            let norm = self.opt.param_norm(&mut self.comm)?;
            if let Some(log) = &mut self.log {
                log.emit(p, norm)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: Value) -> Vec<(String, String)> {
        let mut out = vec![];
        flatten("", &v, &mut out);
        out
    }

    #[test]
    fn differences_name_each_key_and_every_rank_value() {
        let a = flat(json!({"version": "0.1.0", "config": {"lr": 1e-4, "debug": {"force_nccl": false}, "seed": 1}}));
        let b = flat(json!({"version": "0.1.0", "config": {"lr": 2e-4, "debug": {"force_nccl": true}, "seed": 1}}));
        assert_eq!(
            config_differences(&[a.clone(), b, a.clone()]),
            ["debug.force_nccl (rank 0: false, rank 1: true, rank 2: false)", "lr (rank 0: 0.0001, rank 1: 0.0002, rank 2: 0.0001)"]
        );
        assert!(config_differences(&[a.clone(), a]).is_empty());
    }

    #[test]
    fn a_key_one_rank_lacks_and_another_version_are_differences() {
        let a = flat(json!({"version": "0.1.0", "config": {"lr": 1e-4, "init_from": "x"}}));
        let b = flat(json!({"version": "0.2.0", "config": {"lr": 1e-4}}));
        assert_eq!(config_differences(&[a, b]), ["init_from (rank 0: \"x\", rank 1: (absent))", "version (rank 0: \"0.1.0\", rank 1: \"0.2.0\")"]);
    }
}
