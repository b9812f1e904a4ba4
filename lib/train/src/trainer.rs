//! The training loop: build or resume the model, optimizer and data cursor; per step, gather the
//! global batch, run forward/backward per micro-batch, check for NaN/inf, clip, update, adjust
//! the router biases, log, checkpoint; stop cleanly on USR1/TERM (checkpoint, exit 75).
//!
//! One process per device (ranks from Slurm or torchrun variables, openseek-dist): each rank reads
//! its part of every global batch (global batch = ranks x micro-batch x accumulation), gradients
//! are averaged in fp32 by the ZeRO-1 optimizer (bucket by bucket during the last micro-batch's
//! backward pass when `overlap_grad_reduce`), tokens per expert summed before the router bias
//! update, losses averaged for the log; rank 0 logs and writes the model files, every rank its
//! optimizer shard; a stop signal seen by any rank stops all at the same step.

use crate::checkpoint::{self, TrainerState};
use crate::config::{ModelConfig, OnNan, Precision, TrainConfig};
use crate::metrics;
use crate::optim::Optimizer;
use crate::step::{self, GradReady, MicroBatch};
use crate::tensorboard::EventWriter;
use openseek_common::signals::StopSignal;
use openseek_common::{AtomicOutputs, ExitCode, Failure};
use openseek_dist::{Comm, CommOptions, Launch, ReduceOp};
use openseek_mix::reader::{Cursor, DataLoader, ReaderOptions};
use openseek_mix::store::SampleStore;
use openseek_model::model::FeedForward;
use openseek_model::moe::AuxCoefficients;
use openseek_model::{Config, DeepseekV3};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use tch::{Cuda, Device, Kind, Tensor};

/// Who is training: recorded in the run directory and in checkpoints.
pub struct RunInfo {
    pub tool: String,
    pub version: String,
    pub git_commit: String,
}


fn kinds(p: Precision) -> (Kind, Kind) {
    match p {
        Precision::Bf16Mixed => (Kind::Float, Kind::BFloat16),
        Precision::Bf16 => (Kind::BFloat16, Kind::BFloat16),
        Precision::Fp32 => (Kind::Float, Kind::Float),
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

/// Wait for the device, so that wall-clock times measure the work (a no-op on the CPU).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        Cuda::synchronize(i as i64);
    }
}

fn to_i64(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&t| t as i64).collect()
}

fn write_json(path: &Path, value: &Value) -> Result<(), Failure> {
    let mut out = AtomicOutputs::new();
    let mut f = out.create(path)?;
    f.write_all(serde_json::to_string_pretty(value).unwrap().as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .map_err(|e| Failure::io_at(path, "cannot write", &e))?;
    drop(f);
    out.commit()
}

/// Options whose value differs from the config recorded by the previous start of the run.
fn changed_options(path: &Path, cfg: &TrainConfig) -> Vec<String> {
    let Some(old) = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) else { return vec![] };
    let new = serde_json::to_value(cfg).unwrap();
    let (Some(old), Some(new)) = (old["config"].as_object(), new.as_object()) else { return vec![] };
    new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect()
}

/// The JSON-lines log, opened for appending; a line cut short by a kill is removed first.
fn open_log(path: &Path) -> Result<std::fs::File, Failure> {
    if let Ok(bytes) = std::fs::read(path) {
        if !bytes.is_empty() && *bytes.last().unwrap() != b'\n' {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
            let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
            f.set_len(keep as u64).map_err(|e| Failure::io_at(path, "cannot truncate", &e))?;
        }
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))
}

/// Test hooks: `OPENSEEK_TRAIN_FAULT=NAME:STEP` (see also `checkpoint::save`).
pub(crate) fn fault(name: &str, step: u64) -> bool {
    std::env::var("OPENSEEK_TRAIN_FAULT")
        .ok()
        .and_then(|f| f.strip_prefix(name).and_then(|r| r.strip_prefix(':')).and_then(|s| s.parse::<u64>().ok()))
        == Some(step)
}

/// Min, max, std (population) and zero count of tokens per expert.
fn load_stats(load: &[i64]) -> (i64, i64, f64, usize) {
    let n = load.len() as f64;
    let mean = load.iter().sum::<i64>() as f64 / n;
    let var = load.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / n;
    (*load.iter().min().unwrap(), *load.iter().max().unwrap(), var.sqrt(), load.iter().filter(|&&l| l == 0).count())
}

/// A step's log record, finished with the parameter norm once the step's update has run: nothing
/// waits for the update on the host (the next step's work queues behind it on the GPU), so the
/// norm is read at the next step's synchronisation point, before a checkpoint, or at the end.
struct PendingRecord {
    record: Value,
    /// TensorBoard scalars beyond the record's top-level numbers.
    scalars: Vec<(String, f32)>,
}

/// Write `pending` with the parameter norm `param_norm` to the JSON-lines log and TensorBoard.
fn emit(pending: PendingRecord, param_norm: f64, log: &mut Option<std::fs::File>, tb: &mut Option<EventWriter>, run_dir: &Path) -> Result<(), Failure> {
    let PendingRecord { mut record, mut scalars } = pending;
    record["param_norm"] = json!(param_norm);
    if let Some(log) = log {
        let line = serde_json::to_string(&record).unwrap();
        println!("{line}");
        writeln!(log, "{line}").map_err(|e| Failure::io(format!("{}: {e}", run_dir.join("log.jsonl").display())))?;
    }
    if let Some(tb) = tb {
        for key in ["loss", "seq_aux_loss", "z_loss", "lr", "grad_norm", "param_norm", "tokens_per_s", "tflops", "mfu", "step_time_s", "data_wait_s", "peak_memory_gib"] {
            if let Some(v) = record[key].as_f64() {
                scalars.push((format!("train/{key}"), v as f32));
            }
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        tb.scalars(record["step"].as_i64().unwrap_or_default(), wall, &scalars)?;
        tb.flush()?;
    }
    Ok(())
}

/// Train as `cfg` says in `run_dir`, resuming from its newest checkpoint. Returns after the last
/// step; a stop signal returns `TempFail` after a checkpoint.
pub fn train(cfg: &TrainConfig, run_dir: &Path, info: &RunInfo, stop: &StopSignal) -> Result<(), Failure> {
    let launch = Launch::from_env()?;
    let (rank, world) = (launch.rank, launch.world);
    let lead = rank == 0;
    if !cfg.global_batch_size.is_multiple_of(cfg.micro_batch_size * world) {
        return Err(Failure::config(format!(
            "global_batch_size {} must be a multiple of micro_batch_size {} x {world} ranks",
            cfg.global_batch_size, cfg.micro_batch_size
        )));
    }
    let accumulation = cfg.global_batch_size / (cfg.micro_batch_size * world);
    if lead {
        eprintln!("os-train: config\n{}", serde_json::to_string_pretty(cfg).unwrap());
    }
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t as i32);
    }
    let device = rank_device(&cfg.device, &launch)?;
    let mut comm = Comm::init(launch, device, CommOptions::default())?;
    let (master, compute) = kinds(cfg.precision);
    let store = SampleStore::open(&cfg.data)?;
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
    if let Some(t) = cfg.tokenizer.as_ref().filter(|t| !t.is_dir()) {
        return Err(Failure::config(format!(
            "tokenizer {}: not a directory (give the directory holding tokenizer.json or OpenSeek's tiktoken files)",
            t.display()
        )));
    }

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
            let s = checkpoint::read_state(dir)?;
            if lead {
                eprintln!("os-train: resuming from {} (step {}, {} samples consumed)", dir.display(), s.step, s.consumed_samples);
            }
            s
        }
        None => TrainerState {
            format: "openseek-trainer-state".into(),
            step: 0,
            consumed_samples: 0,
            optimizer_steps: 0,
            skipped_steps: 0,
            seed: cfg.seed,
            tool: info.tool.clone(),
            version: info.version.clone(),
            git_commit: info.git_commit.clone(),
        },
    };
    if lead {
        let config_path = run_dir.join("train_config.json");
        let changed = changed_options(&config_path, cfg);
        if resume.is_some() && !changed.is_empty() {
            eprintln!("os-train: warning: options changed since the previous start of this run: {}", changed.join(", "));
        }
        write_json(
            &config_path,
            &json!({
                "tool": info.tool, "version": info.version, "git_commit": info.git_commit,
                "provenance": openseek_common::provenance::Provenance::capture(&info.tool, &info.version),
                "resumed_from": resume.as_ref().map(|(_, d)| d.display().to_string()),
                "changed_since_previous_start": changed,
                "world_size": world,
                "collectives": comm.backend_name(),
                "config": cfg,
            }),
        )?;
    }
    if state.step >= total_steps {
        eprintln!("os-train: the run is complete ({} of {total_steps} steps); nothing to do", state.step);
        return Ok(());
    }

    let mut model = build_model(cfg, resume.as_ref().map(|(_, d)| d.as_path()), master, device)?;
    model.compute_kind = compute;
    let vocab = model.config.vocab_size;
    let recompute = cfg.recompute_layers(model.layers.len())?;
    let params: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| !n.ends_with("e_score_correction_bias"))
        .map(|(n, t)| (n, t.set_requires_grad(true)))
        .collect();
    // Megatron's mixed precision: bf16 leaves, fp32 masters in the optimizer (`OPENSEEK_DISABLE=bf16_leaves`:
    // fp32 leaves cast where used, as autocast).
    let bf16_leaves = cfg.precision == Precision::Bf16Mixed && openseek_model::layers::enabled("bf16_leaves");
    let mut opt = Optimizer::new(params, &mut comm, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay, bf16_leaves)?;
    if let Some((_, dir)) = &resume {
        opt.load(dir)?;
    }
    let schedule = cfg.schedule();
    let aux = AuxCoefficients { seq_aux_loss: cfg.seq_aux_loss_coeff, z_loss: cfg.z_loss_coeff };
    let seq = store.seq_len() as i64;
    let flops_per_token = metrics::flops_per_token(&model.config, seq);
    let options = ReaderOptions {
        eod_mask_loss: cfg.eod_mask_loss,
        reset_position_ids: cfg.attention_per_document,
        reset_attention_mask: cfg.attention_per_document,
        eod_token: store.manifest().eod_token.or(model.config.eos_token_ids.first().map(|&e| e as u32)),
        pad_token: store.manifest().pad_token,
        ..Default::default()
    };
    let mut loader = DataLoader::new(&store, options, rank, world, cfg.micro_batch_size, Cursor { consumed_samples: state.consumed_samples })?;
    let mut log = if lead { Some(open_log(&run_dir.join("log.jsonl"))?) } else { None };
    let mut tb = if cfg.tensorboard && lead { Some(EventWriter::create(&run_dir.join("tensorboard"))?) } else { None };
    let moe_layers: Vec<usize> = model.layers.iter().enumerate().filter(|(_, l)| matches!(l.mlp, FeedForward::Moe(_))).map(|(i, _)| i).collect();
    if lead {
        eprintln!(
            "os-train: {} parameters, {} steps of {} samples x {} tokens ({world} ranks x {} micro-batches of {}), {:?} on {:?} ({}); MFU basis {} TFLOP/s per device",
            opt.leaves().iter().map(|t| t.numel()).sum::<usize>(),
            total_steps,
            gbs,
            seq,
            accumulation,
            cfg.micro_batch_size,
            cfg.precision,
            device,
            comm.backend_name(),
            cfg.peak_tflops
        );
    }

    let mut saved_at = state.step;
    let mut pending: Option<PendingRecord> = None;
    // CPU: the peak resident set; CUDA: the most device memory in use after a step (allocator reserve + context).
    let mut peak_memory: Option<f64> = None;
    while state.step < total_steps {
        let started = Instant::now();
        let consumed_before = state.consumed_samples;
        let mut batches = Vec::with_capacity(accumulation);
        let mut sample_ids = vec![];
        for _ in 0..accumulation {
            let b = loader.next_batch()?.ok_or_else(|| Failure::software("the store ran out of samples"))?;
            if let Some(&bad) = b.tokens.iter().chain(&b.labels).find(|&&t| t as i64 >= vocab) {
                return Err(Failure::data(format!(
                    "{}: samples {:?} hold token {bad}, outside the model's vocabulary of {vocab}",
                    cfg.data.display(),
                    b.sample_ids
                )));
            }
            sample_ids.extend_from_slice(&b.sample_ids);
            batches.push(b);
        }
        let mut tokens_in_loss = [batches.iter().map(|b| b.loss_mask.iter().map(|&m| m as f64).sum::<f64>()).sum()];
        comm.all_reduce_f64(&mut tokens_in_loss, ReduceOp::Sum)?;
        // Each rank's gradient is its tokens' loss over the global count times the world size,
        // so the average over ranks is the gradient of the global batch's mean loss.
        let token_denominator = tokens_in_loss[0].max(1.0) / world as f64;
        let data_wait = started.elapsed().as_secs_f64();

        let mut lm_loss = Tensor::zeros([], (Kind::Float, device));
        let mut seq_aux = Tensor::zeros([], (Kind::Float, device));
        let mut z_loss = Tensor::zeros([], (Kind::Float, device));
        let mut loads: Vec<Tensor> = vec![];
        for (k, b) in batches.iter().enumerate() {
            let rows = b.sample_ids.len() as i64;
            let mb = MicroBatch {
                ids: Tensor::from_slice(&to_i64(&b.tokens)).view([rows, seq]).to_device(device),
                labels: Tensor::from_slice(&to_i64(&b.labels)).to_device(device),
                loss_mask: Tensor::from_slice(&b.loss_mask).to_device(device),
                per_document: cfg.attention_per_document.then(|| step::document_attention(&b.document_starts, seq, device)),
            };
            let last = k + 1 == batches.len();
            let mut grads_ready = |point: GradReady| {
                if last && point == GradReady::Embedding && fault("nan-grad-at-step", state.step + 1) {
                    let _ = opt.leaves()[0].grad().fill_(f64::NAN);
                }
                if last && cfg.overlap_grad_reduce {
                    opt.grads_ready(&mut comm, point)?;
                }
                Ok(())
            };
            let out = step::forward_backward(&model, &mb, &recompute, &aux, cfg.loss_chunk_tokens as i64, token_denominator, batches.len(), &mut grads_ready)?;
            if accumulation > 1 {
                opt.accumulate_grads();
            }
            lm_loss += out.lm_loss;
            seq_aux += out.seq_aux_loss;
            z_loss += out.z_loss;
            if loads.is_empty() {
                loads = out.loads;
            } else {
                for (a, l) in loads.iter_mut().zip(out.loads) {
                    *a += l;
                }
            }
        }
        state.consumed_samples = loader.cursor().consumed_samples;
        if world > 1 && !loads.is_empty() {
            let sizes: Vec<i64> = loads.iter().map(|l| l.numel() as i64).collect();
            let mut all = Tensor::cat(&loads, 0);
            comm.all_reduce(&mut all, ReduceOp::Sum)?;
            loads = all.split_with_sizes(&sizes, 0);
        }
        let grad_norm = opt.reduce_grads(&mut comm)?;
        sync(device);
        let fwd_bwd = started.elapsed().as_secs_f64() - data_wait;
        if let Some(p) = pending.take() {
            emit(p, opt.param_norm(), &mut log, &mut tb, run_dir)?;
        }
        let mut losses = [lm_loss.double_value(&[]), seq_aux.double_value(&[]), z_loss.double_value(&[])];
        comm.all_reduce_f64(&mut losses, ReduceOp::Avg)?;
        let [loss, seq_aux, z_loss] = losses;
        let lr = schedule.lr(consumed_before);
        let finite = loss.is_finite() && grad_norm.is_finite();
        if !finite {
            eprintln!(
                "os-train: step {}: loss {loss}, grad norm {grad_norm}; samples {:?}{}",
                state.step + 1,
                sample_ids,
                if cfg.on_nan == OnNan::Skip { "; skipping the update" } else { "" }
            );
            if cfg.on_nan == OnNan::Stop {
                return Err(Failure::data(format!(
                    "step {}: loss {loss}, grad norm {grad_norm} (not finite) on samples {sample_ids:?} of {}; stopped (on_nan = stop)",
                    state.step + 1,
                    cfg.data.display()
                )));
            }
            state.skipped_steps += 1;
        } else {
            let scale = if cfg.clip_grad > 0.0 { (cfg.clip_grad / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
            opt.step(&mut comm, lr, scale)?;
            state.optimizer_steps = opt.steps();
            if cfg.router_bias_update_rate != 0.0 {
                let _guard = tch::no_grad_guard();
                for (&i, load) in moe_layers.iter().zip(&loads) {
                    if let FeedForward::Moe(m) = &mut model.layers[i].mlp {
                        let load = load.to_kind(Kind::Float);
                        let delta = (load.mean(Kind::Float) - &load).sign() * cfg.router_bias_update_rate;
                        let _ = m.gate.bias.g_add_(&delta);
                    }
                }
            }
        }
        // On CUDA this is the time to queue the update: it runs ahead of the next step's work.
        let optimizer_time = started.elapsed().as_secs_f64() - data_wait - fwd_bwd;
        opt.zero_grad();
        state.step += 1;
        let step_time = started.elapsed().as_secs_f64();

        // The step's record.
        let tokens = (gbs * seq as u64) as f64;
        let tokens_per_s = tokens / step_time;
        let tflops = tokens_per_s * flops_per_token / 1e12;
        let memory = match device {
            Device::Cpu => metrics::peak_rss_bytes(),
            _ => metrics::cuda_memory_in_use_bytes(),
        };
        if let Some(gib) = memory.map(|b| b as f64 / (1u64 << 30) as f64) {
            peak_memory = Some(peak_memory.map_or(gib, |p: f64| p.max(gib)));
        }
        let mut moe = serde_json::Map::new();
        let mut scalars: Vec<(String, f32)> = vec![];
        for (&i, load) in moe_layers.iter().zip(&loads) {
            let l: Vec<i64> = Vec::<i64>::try_from(load.to_device(Device::Cpu)).unwrap_or_default();
            let (min, max, std, dead) = load_stats(&l);
            let bias = match &model.layers[i].mlp {
                FeedForward::Moe(m) => Vec::<f32>::try_from(m.gate.bias.to_device(Device::Cpu)).unwrap_or_default(),
                _ => vec![],
            };
            let bmin = bias.iter().cloned().fold(f32::INFINITY, f32::min);
            let bmax = bias.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let bmean = bias.iter().sum::<f32>() / bias.len().max(1) as f32;
            let key = format!("layer_{i}");
            for (name, v) in [
                ("tokens_min", min as f64),
                ("tokens_max", max as f64),
                ("tokens_std", std),
                ("dead_experts", dead as f64),
                ("bias_min", bmin as f64),
                ("bias_max", bmax as f64),
                ("bias_mean", bmean as f64),
            ] {
                scalars.push((format!("moe/{key}/{name}"), v as f32));
            }
            moe.insert(
                key,
                json!({"tokens_min": min, "tokens_max": max, "tokens_std": std, "dead_experts": dead,
                       "bias_min": bmin, "bias_max": bmax, "bias_mean": bmean}),
            );
        }
        let record = json!({
            "step": state.step,
            "world_size": world,
            "consumed_samples": state.consumed_samples,
            "loss": loss,
            "seq_aux_loss": seq_aux,
            "z_loss": z_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "param_norm": Value::Null,
            "tokens": tokens,
            "tokens_per_s": tokens_per_s,
            "tflops": tflops,
            "mfu": tflops / (cfg.peak_tflops * world as f64),
            "step_time_s": step_time,
            "data_wait_s": data_wait,
            "fwd_bwd_s": fwd_bwd,
            "optimizer_s": optimizer_time,
            "peak_memory_gib": peak_memory,
            "skipped": !finite,
            "sample_ids": if finite { Value::Null } else { json!(sample_ids) },
            "moe": moe,
        });
        pending = Some(PendingRecord { record, scalars });

        let signal = stop.received();
        let stopping = comm.stop_agreed(signal.is_some())?;
        let due = cfg.save_interval.is_some_and(|n| state.step % n == 0);
        if due || (state.step == total_steps && cfg.save_at_end) || stopping {
            if let Some(p) = pending.take() {
                emit(p, opt.param_norm(), &mut log, &mut tb, run_dir)?;
            }
            let dir = checkpoint::save(run_dir, &model, cfg.tokenizer.as_deref().or(cfg.init_from.as_deref()), &opt, &state, cfg.keep_last, &comm)?;
            saved_at = state.step;
            if lead {
                eprintln!("os-train: saved {}", dir.display());
            }
        }
        if stopping {
            let by = signal.map_or_else(|| "a signal to another rank".to_string(), |s| s.to_string());
            return Err(Failure::new(
                ExitCode::TempFail,
                format!(
                    "{}: stopped by {by} after step {}; checkpoint {} saved; run again to resume",
                    comm.launch().who(),
                    state.step,
                    checkpoint::name(saved_at)
                ),
            ));
        }
    }
    if let Some(p) = pending.take() {
        emit(p, opt.param_norm(), &mut log, &mut tb, run_dir)?;
    }
    if lead {
        eprintln!("os-train: done: {} steps ({} skipped)", state.step, state.skipped_steps);
    }
    Ok(())
}
