//! os-train end to end on CPU with the demo recipe's tiny OpenSeek-architecture model: it learns
//! (loss far below the corpus' unigram entropy), the logged learning rates follow the formulas,
//! TensorBoard's own reader reads the event files, and a run killed (SIGKILL, or during a save)
//! or stopped by USR1/TERM resumes to exactly the losses and weights of an uninterrupted run
//! (its log holding every step once). The logged losses equal a plain PyTorch training loop's
//! (tests/python/train_reference.py) for both loss averagings; a NaN-skipped step keeps the
//! schedule and moves the router biases as Megatron does; a resume on another store is refused
//! unless allowed; a closed stdout or a SIGTERM during the rendezvous is handled.

use openseek_mix::store::SampleStore;
use openseek_tests::{demo_store, root, run_python, run_tool, tool, wait_until_it_catches_sigterm};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A directory for what the tests share (the store, the reference run), emptied once per test binary.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("train");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// The demo corpus as a sample store of 128-token samples (built once per test binary).
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| demo_store(&scratch().join("store"), 128, 800))
}

const STEPS: u64 = 12;

/// The flags every run here shares: the demo recipe, small batches, one thread (bitwise
/// reproducible), a checkpoint every 3 steps.
fn args(run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--config".into(),
        root().join("recipes/train-demo.toml").to_str().unwrap().into(),
        "--run-dir".into(),
        run_dir.to_str().unwrap().into(),
    ];
    for s in ["--data", store().to_str().unwrap(), "--micro-batch-size", "4", "--global-batch-size", "8", "--threads", "1"] {
        a.push(s.into());
    }
    for s in ["--train-iters", &STEPS.to_string(), "--warmup-iters", "3", "--save-interval", "3", "--keep-last", "3"] {
        a.push(s.into());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn train(run_dir: &Path, extra: &[&str]) -> Output {
    Command::new(tool("os-train")).args(args(run_dir, extra)).output().unwrap()
}

/// The records of RUN_DIR/log.jsonl, checked to hold every step once and in order (a resumed run
/// drops the lines the interrupted run wrote past its checkpoint).
fn log(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap_or_default();
    let mut steps: Vec<Value> = vec![];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
        assert_eq!(v["step"].as_u64(), Some(steps.len() as u64 + 1), "{}: steps out of order or repeated", run_dir.display());
        steps.push(v);
    }
    steps
}

/// A safetensors file's tensors: name -> (dtype, raw bytes).
fn tensors(bytes: &[u8]) -> std::collections::BTreeMap<String, (String, Vec<u8>)> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let entries = header.as_object().unwrap().iter().filter(|(n, _)| *n != "__metadata__");
    entries
        .map(|(name, e)| {
            let [start, end] = [0, 1].map(|i| 8 + header_len + e["data_offsets"][i].as_u64().unwrap() as usize);
            (name.clone(), (e["dtype"].as_str().unwrap().to_string(), bytes[start..end].to_vec()))
        })
        .collect()
}

fn final_weights(run_dir: &Path) -> Vec<u8> {
    std::fs::read(run_dir.join(format!("checkpoints/step-{STEPS:07}/model-00001-of-00001.safetensors"))).unwrap()
}

/// An uninterrupted run (shared by the tests).
fn reference() -> &'static (PathBuf, Vec<Value>) {
    static REF: OnceLock<(PathBuf, Vec<Value>)> = OnceLock::new();
    REF.get_or_init(|| {
        store();
        let dir = scratch().join("reference");
        let tokenizer = scratch().join("store/demo/tokenizer");
        let o = train(&dir, &["--tokenizer", tokenizer.to_str().unwrap()]);
        assert!(o.status.success(), "os-train failed: {}", String::from_utf8_lossy(&o.stderr));
        let l = log(&dir);
        assert_eq!(l.len() as u64, STEPS);
        (dir, l)
    })
}

/// Same losses, gradient norms and learning rates at every step, bit for bit, and the same final weights.
fn assert_same_as_reference(run_dir: &Path) {
    let (ref_dir, ref_log) = reference();
    let got = log(run_dir);
    assert_eq!(got.len(), ref_log.len(), "steps logged");
    for (g, r) in got.iter().zip(ref_log) {
        for key in ["loss", "grad_norm", "lr", "param_norm", "consumed_samples"] {
            assert_eq!(g[key], r[key], "step {}: {key}", r["step"]);
        }
    }
    assert!(final_weights(run_dir) == final_weights(ref_dir), "final weights differ from the uninterrupted run");
}

/// Start os-train, wait until its log reaches `step`, then send `signal`.
fn run_and_signal(run_dir: &Path, extra: &[&str], step: u64, signal: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(tool("os-train"))
        .args(args(run_dir, extra))
        .envs(env.iter().cloned())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while log(run_dir).last().map(|v| v["step"].as_u64().unwrap()).unwrap_or(0) < step {
        assert!(start.elapsed() < Duration::from_secs(300), "os-train did not reach step {step}");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("os-train ended early with {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let k = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(k.success());
    child.wait_with_output().unwrap()
}

fn unigram_entropy(store: &Path, samples: u64) -> f64 {
    let s = SampleStore::open(store).unwrap();
    let mut counts = std::collections::HashMap::new();
    let mut n = 0f64;
    for i in 0..samples {
        for t in s.sample(i).0 {
            *counts.entry(t).or_insert(0f64) += 1.0;
            n += 1.0;
        }
    }
    -counts.values().map(|c| (c / n) * (c / n).ln()).sum::<f64>()
}

#[test]
fn learns_far_below_the_unigram_entropy() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 40;
    let o = train(dir.path(), &["--train-iters", &steps.to_string(), "--global-batch-size", "16", "--micro-batch-size", "8", "--save-interval", "100"]);
    assert!(o.status.success(), "os-train failed: {}", String::from_utf8_lossy(&o.stderr));
    let l = log(dir.path());
    let h = unigram_entropy(store(), 200);
    let first = l[0]["loss"].as_f64().unwrap();
    // The mean of the last 5 steps (each step sees new samples).
    let last = l[steps - 5..].iter().map(|r| r["loss"].as_f64().unwrap()).sum::<f64>() / 5.0;
    eprintln!("unigram entropy {h:.3} nats; loss {first:.3} -> {last:.3} in {steps} steps");
    assert!(first > h, "an untrained model starts above the unigram entropy");
    assert!(last < 0.6 * h, "loss {last} is not far below the unigram entropy {h}");
}

#[test]
fn rates_follow_the_schedule_and_the_run_directory_records_everything() {
    let (dir, log) = reference();
    // train-demo.toml: lr 6e-3 -> 6e-4 cosine; here 3 warm-up iterations of 8 samples, 12 iterations.
    for (i, r) in log.iter().enumerate() {
        let s = (i * 8) as f64;
        let (warm, end) = (24.0, 96.0);
        let want = if s <= warm {
            6e-3 * s / warm
        } else {
            6e-4 + 0.5 * (1.0 + (std::f64::consts::PI * (s - warm) / (end - warm)).cos()) * 5.4e-3
        };
        let got = r["lr"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-15, "step {}: lr {got}, formula {want}", i + 1);
        assert!(r["moe"]["layer_1"]["tokens_max"].as_u64().unwrap() > 0);
    }
    // The run directory records the resolved config, version and commit; keep_last 3 holds 3 checkpoints.
    let rc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("train_config.json")).unwrap()).unwrap();
    assert_eq!(rc["config"]["train_iters"], STEPS);
    assert_eq!(rc["git_commit"].as_str().unwrap().len(), 40);
    let ckpts: Vec<String> = std::fs::read_dir(dir.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let mut ckpts = ckpts;
    ckpts.sort();
    assert_eq!(ckpts, ["latest", "step-0000006", "step-0000009", "step-0000012"]);
    // Each checkpoint is a whole HF model directory: the tokenizer's files are in it.
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert!(dir.join("checkpoints/step-0000012").join(f).is_file(), "{f} missing from the checkpoint");
    }
    // TensorBoard reads the same values (as f32).
    let tb: Value = serde_json::from_str(&run_python("train_tensorboard.py", &[dir.join("tensorboard").to_str().unwrap()])).unwrap();
    let losses = tb["train/loss"].as_array().unwrap();
    assert_eq!(losses.len() as u64, STEPS);
    for (e, r) in losses.iter().zip(log) {
        assert_eq!(e[0], r["step"]);
        assert_eq!(e[1].as_f64().unwrap() as f32, r["loss"].as_f64().unwrap() as f32);
    }
    assert!(tb["moe/layer_2/tokens_std"].as_array().unwrap().len() as u64 == STEPS);
}

#[test]
fn sigkill_then_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_and_signal(dir.path(), &[], 7, "-KILL", &[]);
    assert_eq!(o.status.code(), None, "killed by a signal");
    let o = train(dir.path(), &[]);
    assert!(o.status.success(), "resume failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"));
    assert_same_as_reference(dir.path());
}

/// Megatron's mixed precision on the CPU path: bf16 leaves, fp32 masters summed over two
/// micro-batches per step; checkpoints hold the fp32 masters (not bf16-rounded values), so a
/// run killed at step 7 resumes bit for bit.
#[test]
fn mixed_precision_checkpoints_fp32_masters_and_resumes_exactly() {
    let mixed = ["--precision", "bf16-mixed"];
    let whole = tempfile::tempdir().unwrap();
    let o = train(whole.path(), &mixed);
    assert!(o.status.success(), "os-train failed: {}", String::from_utf8_lossy(&o.stderr));
    let dir = tempfile::tempdir().unwrap();
    let o = run_and_signal(dir.path(), &mixed, 7, "-KILL", &[]);
    assert_eq!(o.status.code(), None, "killed by a signal");
    let o = train(dir.path(), &mixed);
    assert!(o.status.success(), "resume failed: {}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (log(whole.path()), log(dir.path()));
    assert_eq!(a.len() as u64, STEPS);
    for (x, y) in a.iter().zip(&b) {
        for key in ["loss", "grad_norm", "param_norm"] {
            assert_eq!(x[key], y[key], "step {}: {key}", x["step"]);
        }
    }
    assert!(a.last().unwrap()["loss"].as_f64().unwrap() < a[0]["loss"].as_f64().unwrap() - 0.5, "it learns");
    assert!(final_weights(whole.path()) == final_weights(dir.path()), "final weights differ from the uninterrupted run");
    // The saved weights are fp32 with bits below bf16's precision: the masters.
    let weights = tensors(&final_weights(whole.path()));
    let (name, (dtype, data)) = weights.iter().find(|(n, _)| n.contains("mlp.experts.") && n.ends_with("down_proj.weight")).unwrap();
    assert_eq!(dtype, "F32", "{name}");
    let low_bits = data.chunks(4).filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0xffff != 0).count();
    assert!(low_bits > data.len() / 8, "{name}: the checkpoint holds bf16-rounded weights, not the fp32 masters");
}

#[test]
fn a_kill_during_a_save_leaves_the_previous_checkpoint_as_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(tool("os-train")).args(args(dir.path(), &[])).env("OPENSEEK_TRAIN_FAULT", "kill-during-save:6").output().unwrap();
    assert_eq!(o.status.code(), None, "killed during the save of step 6");
    let ck = dir.path().join("checkpoints");
    assert!(ck.join(".tmp-step-0000006").is_dir(), "the interrupted save left its temporary directory");
    assert!(!ck.join("step-0000006").exists());
    assert_eq!(std::fs::read_to_string(ck.join("latest")).unwrap(), "step-0000003\n");
    let o = train(dir.path(), &[]);
    assert!(o.status.success(), "resume failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("step-0000003"));
    assert!(!ck.join(".tmp-step-0000006").exists());
    assert_same_as_reference(dir.path());
}

#[test]
fn usr1_and_term_checkpoint_and_exit_75_then_resume_exactly() {
    for signal in ["-USR1", "-TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let o = run_and_signal(dir.path(), &[], 2, signal, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(75), "{signal}: {err}");
        let stopped_at = log(dir.path()).len() as u64;
        assert!(stopped_at < STEPS, "{signal} came too late to test anything");
        let latest = std::fs::read_to_string(dir.path().join("checkpoints/latest")).unwrap();
        assert_eq!(latest, format!("step-{stopped_at:07}\n"), "{signal}: checkpoint of the last finished step");
        let o = train(dir.path(), &[]);
        assert!(o.status.success(), "resume failed: {}", String::from_utf8_lossy(&o.stderr));
        assert_same_as_reference(dir.path());
        // A finished run started again with another option: nothing to do, the change is named.
        let o = train(dir.path(), &["--clip-grad", "0.5"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.contains("nothing to do") && err.contains("changed") && err.contains("clip_grad"), "{err}");
        // A finished run started again has nothing to do and says so.
        let o = train(dir.path(), &[]);
        assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("nothing to do"));
    }
}

#[test]
fn non_finite_gradients_skip_the_step_or_stop_naming_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(tool("os-train"))
        .args(args(dir.path(), &["--train-iters", "4", "--on-nan", "skip"]))
        .env("OPENSEEK_TRAIN_FAULT", "nan-grad-at-step:2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = log(dir.path());
    assert_eq!(l[1]["skipped"], true);
    assert_eq!(l[1]["sample_ids"], serde_json::json!([8, 9, 10, 11, 12, 13, 14, 15]));
    assert_eq!(l[2]["skipped"], false);
    assert!(l[3]["loss"].as_f64().unwrap().is_finite());

    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(tool("os-train"))
        .args(args(dir.path(), &["--train-iters", "4", "--on-nan", "stop"]))
        .env("OPENSEEK_TRAIN_FAULT", "nan-grad-at-step:2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[8, 9, 10, 11, 12, 13, 14, 15]"));
}

#[test]
fn config_mistakes_exit_78_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), &["--lr-shedule", "cosine"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lr_shedule"));
    let o = train(dir.path(), &["--tokenizer", "/nonexistent/tokenizer"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/tokenizer: not a directory"));
    let o = train(dir.path(), &["--lr", "inf"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lr = inf: options must be finite numbers"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = train(dir.path(), &["--train-iters", "1000"]);
    assert_eq!(o.status.code(), Some(78), "more samples than the store holds");
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds 800"));
}

#[test]
fn every_recipe_resolves_and_bad_rank_variables_are_refused() {
    for entry in std::fs::read_dir(root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !(name.starts_with("train-") && name.ends_with(".toml")) {
            continue;
        }
        // Recipes meant to be completed by flags (slurm/chain adds --data and the length) get them here.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut a = vec!["--config", path.to_str().unwrap(), "--print-config"];
        if !text.contains("\ndata =") {
            a.extend(["--data", "store"]);
        }
        if !text.contains("\ntrain_iters =") && !text.contains("\ntrain_samples =") {
            a.extend(["--train-iters", "100"]);
        }
        let o = run_tool("os-train", &a);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let c: Value = serde_json::from_slice(&o.stdout).unwrap();
        match name.as_str() {
            "train-baseline.toml" => {
                assert_eq!((c["lr"].as_f64(), c["min_lr"].as_f64(), c["warmup_samples"].as_u64()), (Some(3e-3), Some(3e-4), Some(2_048_000)));
                assert_eq!((c["global_batch_size"].as_u64(), c["lr_schedule"].as_str()), (Some(1024), Some("cosine")));
            }
            "train-seed003.toml" => {
                assert_eq!((c["lr"].as_f64(), c["warmup_iters"].as_u64(), c["train_iters"].as_u64()), (Some(1e-5), Some(50), Some(3620)));
                assert_eq!(c["weight_decay"].as_f64(), Some(0.01));
            }
            "train-seed004.toml" => assert_eq!((c["save_interval"].as_u64(), c["precision"].as_str()), (Some(1000), Some("bf16-mixed"))),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(tool("os-train")).args(args(dir.path(), &[])).env("RANK", "2").env("WORLD_SIZE", "2").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "a rank outside the world");
}

#[test]
fn attention_per_document_trains_and_changes_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), &["--train-iters", "4", "--attention-per-document", "true"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = log(dir.path());
    let (_, reference) = reference();
    let (a, b) = (l[0]["loss"].as_f64().unwrap(), reference[0]["loss"].as_f64().unwrap());
    assert!(a.is_finite() && a != b, "per-document loss {a}, causal {b}");
}

#[test]
fn checkpoints_load_in_os_eval_and_transformers_with_equal_scores() {
    let (dir, _) = reference();
    let ck = dir.join(format!("checkpoints/step-{STEPS:07}"));
    let work = tempfile::tempdir().unwrap();
    let s = SampleStore::open(store()).unwrap();
    let lines: Vec<String> = (0..3).map(|i| serde_json::json!({"tokens": s.sample(i).0[..65].to_vec()}).to_string()).collect();
    let tokens = work.path().join("tokens.jsonl");
    std::fs::write(&tokens, lines.join("\n") + "\n").unwrap();
    let (ours, theirs) = (work.path().join("os-eval.jsonl"), work.path().join("hf.jsonl"));
    let o = run_tool("os-eval", &["score", "--model", ck.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--output", ours.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "os-eval: {}", String::from_utf8_lossy(&o.stderr));
    run_python("hf_deepseek.py", &["score", ck.to_str().unwrap(), tokens.to_str().unwrap(), theirs.to_str().unwrap()]);
    let read = |p: &Path| -> Vec<f64> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["sum_logprob"].as_f64().unwrap()).collect()
    };
    let (a, b) = (read(&ours), read(&theirs));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-3, "os-eval {x} vs transformers {y}");
        // Trained for 12 steps: well under the 64 * ln(2048) = 488 nats of a uniform guess.
        assert!(-x < 0.7 * 64.0 * 2048f64.ln(), "sum log-prob {x}");
    }
}

/// Megatron's skip semantics (lib/train/src/train_step.rs): a step skipped for a NaN gradient does
/// not advance the learning-rate schedule, so the next step runs at the rate the skipped one would
/// have used, and the routers' correction biases still move from the skipped step's loads while
/// every weight stays as it was.
#[test]
fn a_skipped_step_keeps_the_schedule_and_still_moves_the_router_biases() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(tool("os-train"))
        .args(args(dir.path(), &["--train-iters", "4", "--save-interval", "1", "--keep-last", "4"]))
        .env("OPENSEEK_TRAIN_FAULT", "nan-grad-at-step:2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = log(dir.path());
    let lrs: Vec<f64> = l.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    let skipped: Vec<bool> = l.iter().map(|r| r["skipped"].as_bool().unwrap()).collect();
    assert_eq!(skipped, [false, true, false, false]);
    // Warm-up over 24 samples to 6e-3, 8 samples a step: the updates taken before steps 1..4 are 0, 1, 1, 2.
    let want = [0.0, 2e-3, 2e-3, 4e-3];
    for (step, (got, want)) in lrs.iter().zip(want).enumerate() {
        assert!((got - want).abs() < 1e-15, "step {}: lr {got}, want {want} (the skipped step must not advance the schedule)", step + 1);
    }
    let ck = |s: u64| dir.path().join(format!("checkpoints/step-{s:07}"));
    let state: Value = serde_json::from_str(&std::fs::read_to_string(ck(2).join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!((state["consumed_samples"].as_u64(), state["schedule_samples"].as_u64()), (Some(16), Some(8)));
    let read = |s: u64| tensors(&std::fs::read(ck(s).join("model-00001-of-00001.safetensors")).unwrap());
    let (before, after) = (read(1), read(2));
    let mut biases = 0;
    for (name, (_, bytes)) in &before {
        if name.ends_with("e_score_correction_bias") {
            assert_ne!(bytes, &after[name].1, "{name}: the router bias did not move at the skipped step");
            biases += 1;
        } else {
            assert_eq!(bytes, &after[name].1, "{name} changed at the skipped step");
        }
    }
    assert_eq!(biases, 2, "the demo model's two MoE layers");
}

/// A resume on another sample store than the run's is refused (exit 65, nothing trained), and
/// accepted with --allow-data-change, which train_config.json records.
#[test]
fn a_resume_on_a_changed_store_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), &["--train-iters", "4", "--save-interval", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Another store from the same shards: more samples, so another order and manifest.
    let other = dir.path().join("other-store");
    let shards = scratch().join("store/shards/part-0");
    let o = run_tool("os-mix", &["--weights", &format!("1.0 {}", shards.display()), "--seq-len", "128", "--samples", "900", "--output", other.to_str().unwrap()]);
    assert!(o.status.success(), "os-mix: {}", String::from_utf8_lossy(&o.stderr));
    let o = train(dir.path(), &["--train-iters", "5", "--data", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("--allow-data-change") && err.contains("other-store"), "{err}");
    assert_eq!(log(dir.path()).len(), 4, "nothing trained");
    let o = train(dir.path(), &["--train-iters", "5", "--data", other.to_str().unwrap(), "--allow-data-change"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(log(dir.path()).len(), 5);
    let rc: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("train_config.json")).unwrap()).unwrap();
    assert_eq!(rc["allow_data_change"], true);
    // The same store built again (another time, another process: its provenance differs) is the same store.
    let o = run_tool("os-mix", &["--weights", &format!("1.0 {}", shards.display()), "--seq-len", "128", "--samples", "900", "--output", other.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "os-mix: {}", String::from_utf8_lossy(&o.stderr));
    let o = train(dir.path(), &["--train-iters", "6", "--data", other.to_str().unwrap(), "--save-interval", "1"]);
    assert!(o.status.success(), "a rebuilt identical store resumes: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(log(dir.path()).len(), 6);
}

/// os-train's own flags (--run-dir, --config) may come after config options.
#[test]
fn own_flags_may_follow_config_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path(), &["--train-iters", "4", "--save-interval", "4"]);
    let run_dir = a.drain(2..4).collect::<Vec<_>>();
    let config = a.drain(0..2).collect::<Vec<_>>();
    a.extend(run_dir);
    a.extend(config);
    assert_eq!(a[a.len() - 4], "--run-dir");
    let o = Command::new(tool("os-train")).args(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("checkpoints/step-0000004/trainer_state.json").is_file());
}

/// `os-train … | head -1`: the closed stdout ends the echo, not the run, which finishes (exit 0)
/// with its last checkpoint and the whole log.
#[test]
fn a_closed_stdout_stops_the_echo_not_the_training() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(tool("os-train"))
        .args(args(dir.path(), &["--train-iters", "4"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap()["step"], 1);
    // The reader is dropped here: stdout is closed, as `head -1` does.
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("stdout is closed"), "{err}");
    assert!(!err.contains("ETA"), "a progress line on a stderr that is not a terminal: {err}");
    assert_eq!(log(dir.path()).len(), 4);
    assert!(dir.path().join("checkpoints/step-0000004/trainer_state.json").is_file());
}

/// os-train against a plain PyTorch training loop (tests/python/train_reference.py: transformers'
/// DeepseekV3ForCausalLM in fp32 on the CPU, torch.optim.AdamW, clip_grad_norm_, the router bias
/// update) from the same initial checkpoint, on the micro-batches os-train's reader makes
/// (openseek_mix's DataLoader with eod_mask_loss, so micro-batches hold different numbers of loss
/// tokens): 20 steps of 2 micro-batches, both loss averagings, logged losses within 1e-5
/// relative, learning rates equal to rounding.
#[test]
fn losses_equal_a_pytorch_reference_loop_for_both_loss_averagings() {
    use openseek_mix::reader::{Cursor, DataLoader, ReaderOptions};
    let work = tempfile::tempdir().unwrap();
    let w = |p: &str| work.path().join(p).to_str().unwrap().to_string();
    // The demo corpus with runs of one-word documents after every eighth document, so that
    // samples hold very different numbers of EODs (masked) and the two averagings differ.
    store(); // makes the demo corpus and its tokenizer
    let tokenizer = scratch().join("store/demo/tokenizer");
    let demo = std::fs::read_to_string(scratch().join("store/demo/corpus/part-0.jsonl")).unwrap();
    let mut corpus = String::new();
    for (k, line) in demo.lines().enumerate() {
        corpus += &format!("{line}\n");
        if k % 8 == 0 {
            corpus += &"{\"text\": \"cat\"}\n".repeat(24);
        }
    }
    std::fs::write(w("corpus.jsonl"), corpus).unwrap();
    for args in [
        vec!["os-tokenize", "--tokenizer", tokenizer.to_str().unwrap(), "--wrap-docs", "--quiet", "--output", &w("shards/part-0"), &w("corpus.jsonl")],
        vec!["os-mix", "--weights", &format!("1.0 {}", w("shards/part-0")), "--seq-len", "128", "--samples", "200", "--output", &w("mix")],
    ] {
        let o = openseek_tests::run_tool(args[0], &args[1..]);
        assert!(o.status.success(), "{}: {}", args[0], String::from_utf8_lossy(&o.stderr));
    }
    let s = SampleStore::open(Path::new(&w("mix"))).unwrap();
    // The demo tokenizer's EOS ends every document (os-train's EOD when the store names none).
    let eod: u32 = 2;
    assert_eq!(s.manifest().eod_token, None);
    let (steps, micro, global) = (20usize, 2usize, 4usize);
    let options = ReaderOptions { eod_mask_loss: true, eod_token: Some(eod), pad_token: s.manifest().pad_token, ..Default::default() };
    let mut loader = DataLoader::new(&s, options, 0, 1, micro, Cursor { consumed_samples: 0 }).unwrap();
    let seq = s.seq_len() as usize;
    let mut plan_steps = vec![];
    let mut uneven = 0;
    for _ in 0..steps {
        let mut step = vec![];
        let mut counts = vec![];
        for _ in 0..global / micro {
            let b = loader.next_batch().unwrap().unwrap();
            counts.push(b.loss_mask.iter().sum::<f32>());
            let rows = |v: Vec<Value>| v.chunks(seq).map(|r| Value::from(r.to_vec())).collect::<Vec<_>>();
            step.push(serde_json::json!({
                "tokens": rows(b.tokens.iter().map(|&t| t.into()).collect()),
                "labels": rows(b.labels.iter().map(|&t| t.into()).collect()),
                "loss_mask": rows(b.loss_mask.iter().map(|&m| (m as f64).into()).collect()),
            }));
        }
        uneven += (counts[0] != counts[1]) as usize;
        plan_steps.push(step);
    }
    assert!(uneven >= steps / 2, "the micro-batches' loss-token counts differ in only {uneven} steps: the averagings would agree");
    let (lr, min_lr, warmup_iters, weight_decay, clip, bias_rate) = (2e-3, 2e-4, 3, 0.1, 1.0, 1e-3);
    let modes = ["per_micro_batch", "per_token"];
    let plan = serde_json::json!({
        "seed": 0, "vocab": 2048, "eos": eod,
        "hyper": {
            "lr": lr, "min_lr": min_lr, "warmup_samples": warmup_iters * global, "decay_end_samples": steps * global,
            "global_batch_size": global, "weight_decay": weight_decay, "adam_beta1": 0.9, "adam_beta2": 0.95,
            "adam_eps": 1e-8, "clip_grad": clip, "router_bias_update_rate": bias_rate,
        },
        "modes": modes,
        "steps": plan_steps,
    });
    std::fs::write(w("plan.json"), plan.to_string()).unwrap();
    run_python("train_reference.py", &[&w("plan.json"), &w("")]);
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(w("reference.json")).unwrap()).unwrap();
    // os-train in both modes at once (one thread each).
    let runs: Vec<_> = modes
        .iter()
        .map(|mode| {
            let run_dir = w(mode);
            let flags = [
                "--init-from", &w("init"), "--tokenizer", tokenizer.to_str().unwrap(), "--data", &w("mix"),
                "--run-dir", &run_dir, "--micro-batch-size", &micro.to_string(), "--global-batch-size", &global.to_string(),
                "--train-iters", &steps.to_string(), "--lr", &lr.to_string(), "--min-lr", &min_lr.to_string(),
                "--lr-schedule", "cosine", "--warmup-iters", &warmup_iters.to_string(), "--weight-decay", &weight_decay.to_string(),
                "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--adam-eps", "1e-8", "--clip-grad", &clip.to_string(),
                "--router-bias-update-rate", &bias_rate.to_string(), "--seq-aux-loss-coeff", "0", "--z-loss-coeff", "0",
                "--eod-mask-loss", "true", "--loss-averaging", mode, "--precision", "fp32", "--device", "cpu", "--threads", "1",
                "--save-at-end", "false", "--tensorboard", "false",
            ];
            let child = Command::new(tool("os-train")).args(flags).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
            (mode, run_dir, child)
        })
        .collect();
    let mut all_losses = vec![];
    for (mode, run_dir, child) in runs {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "os-train {mode}: {}", String::from_utf8_lossy(&o.stderr));
        let ours = log(Path::new(&run_dir));
        let theirs = reference[mode].as_array().unwrap();
        assert_eq!(ours.len(), steps);
        let mut worst = 0f64;
        for (step, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            worst = worst.max((la - lb).abs() / lb.abs());
            assert!((la - lb).abs() <= 1e-5 * lb.abs(), "{mode} step {}: os-train loss {la}, PyTorch {lb}", step + 1);
            let (ra, rb) = (a["lr"].as_f64().unwrap(), b["lr"].as_f64().unwrap());
            assert!((ra - rb).abs() <= 1e-12 * rb.abs(), "{mode} step {}: os-train lr {ra}, PyTorch {rb}", step + 1);
            let (ga, gb) = (a["grad_norm"].as_f64().unwrap(), b["grad_norm"].as_f64().unwrap());
            assert!((ga - gb).abs() <= 1e-4 * gb, "{mode} step {}: os-train grad norm {ga}, PyTorch {gb}", step + 1);
        }
        eprintln!("{mode}: losses at most {worst:.1e} relative from PyTorch's");
        all_losses.push(ours.iter().map(|r| r["loss"].as_f64().unwrap()).collect::<Vec<_>>());
    }
    // The averagings differ by far more than the tolerance, so the test tells them apart.
    let apart = all_losses[0].iter().zip(&all_losses[1]).map(|(a, b)| (a - b).abs() / b.abs()).fold(0.0, f64::max);
    eprintln!("losses {:.5} -> {:.5}; the averagings up to {apart:.1e} relative apart", all_losses[0][0], all_losses[0][steps - 1]);
    assert!(apart > 1e-4, "the two averagings gave losses only {apart:e} apart");
}

/// SIGTERM while a rank waits for the others at the rendezvous (rank 0 alone, waiting for rank 1
/// to connect; rank 1 alone, retrying to reach rank 0's store) ends it with exit 75 at once, not
/// after the store's 600 s timeout.
#[test]
fn sigterm_during_the_rendezvous_exits_75_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    for rank in ["0", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(tool("os-train"))
            .args(args(dir.path(), &["--device", "cpu"]))
            .envs([("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until_it_catches_sigterm(&mut child);
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "rank {rank} ended before the signal");
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let signalled = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if signalled.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("rank {rank} still waits 60 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(75), "rank {rank}: {err}");
        assert!(err.contains("stopped by SIGTERM"), "rank {rank}: {err}");
        assert!(!dir.path().join("checkpoints").join("latest").exists());
    }
}

/// The demo model with one multi-token-prediction depth (`num_nextn_predict_layers = 1`).
fn mtp_model_config() -> PathBuf {
    let path = scratch().join("train-demo-model-mtp.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(root().join("recipes/train-demo-model.json")).unwrap()).unwrap();
    cfg["num_nextn_predict_layers"] = 1.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// The names in a checkpoint's safetensors index.
fn checkpoint_names(dir: &Path) -> Vec<String> {
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    index["weight_map"].as_object().unwrap().keys().cloned().collect()
}

/// Multi-token prediction end to end: the MTP loss is logged (log.jsonl and TensorBoard), the
/// checkpoints hold the MTP layer in DeepSeek-V3's release layout, a run killed at step 7 resumes
/// to the uninterrupted run's losses (MTP loss included) and weights bit for bit, os-soup keeps
/// every MTP tensor and its soup loads in os-eval and transformers with equal scores; with
/// `mtp_loss_coeff = 0` the main losses are those of the same model without MTP, bit for bit.
#[test]
fn mtp_trains_resumes_exactly_and_survives_os_soup() {
    let model = mtp_model_config();
    let mtp = ["--model-config", model.to_str().unwrap()];
    let whole = scratch().join("mtp-whole");
    let o = train(&whole, &mtp);
    assert!(o.status.success(), "os-train failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("multi-token prediction: 1 depth(s), trained, loss x 0.3"));
    let l = log(&whole);
    assert_eq!(l.len() as u64, STEPS);
    let (first, last) = (l[0]["mtp_loss"].as_f64().unwrap(), l[STEPS as usize - 1]["mtp_loss"].as_f64().unwrap());
    assert!(first > 5.0 && last < first - 0.5, "the MTP loss is logged and falls: {first} -> {last}");
    let tb: Value = serde_json::from_str(&run_python("train_tensorboard.py", &[whole.join("tensorboard").to_str().unwrap()])).unwrap();
    let logged: Vec<f32> = tb["train/mtp_loss"].as_array().unwrap().iter().map(|e| e[1].as_f64().unwrap() as f32).collect();
    assert_eq!(logged, l.iter().map(|r| r["mtp_loss"].as_f64().unwrap() as f32).collect::<Vec<_>>());
    assert!(l[0]["moe"]["layer_3"]["tokens_max"].as_u64().unwrap() > 0, "the MTP layer's router statistics are logged");
    let rc: Value = serde_json::from_str(&std::fs::read_to_string(whole.join("train_config.json")).unwrap()).unwrap();
    assert_eq!(rc["config"]["mtp_loss_coeff"], 0.3);
    let last_ck = whole.join(format!("checkpoints/step-{STEPS:07}"));
    let names = checkpoint_names(&last_ck);
    for n in ["enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "embed_tokens.weight", "shared_head.head.weight", "mlp.gate.weight", "mlp.experts.7.down_proj.weight"] {
        assert!(names.contains(&format!("model.layers.3.{n}")), "model.layers.3.{n} not in the checkpoint");
    }

    // Killed at step 7, resumed: the same losses and the same final weights.
    let dir = tempfile::tempdir().unwrap();
    let o = run_and_signal(dir.path(), &mtp, 7, "-KILL", &[]);
    assert_eq!(o.status.code(), None, "killed by a signal");
    let o = train(dir.path(), &mtp);
    assert!(o.status.success(), "resume failed: {}", String::from_utf8_lossy(&o.stderr));
    let resumed = log(dir.path());
    assert_eq!(resumed.len(), l.len());
    for (g, r) in resumed.iter().zip(&l) {
        for key in ["loss", "mtp_loss", "grad_norm", "param_norm"] {
            assert_eq!(g[key], r[key], "step {}: {key}", r["step"]);
        }
    }
    assert!(final_weights(dir.path()) == final_weights(&whole), "final weights differ from the uninterrupted run");

    // os-soup of the last two checkpoints keeps every tensor, MTP included; the soup loads in
    // os-eval and transformers (which skips the MTP layer) with equal scores.
    let soup_dir = dir.path().join("soup");
    let o = run_tool("os-soup", &["--latest", "2", whole.join("checkpoints").to_str().unwrap(), "--out", soup_dir.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "os-soup: {}", String::from_utf8_lossy(&o.stderr));
    let (mut a, mut b) = (names.clone(), checkpoint_names(&soup_dir));
    a.sort();
    b.sort();
    assert_eq!(a, b, "the soup's tensors are the checkpoint's");
    let s = SampleStore::open(store()).unwrap();
    let tokens = dir.path().join("tokens.jsonl");
    std::fs::write(&tokens, serde_json::json!({"tokens": s.sample(0).0[..65].to_vec()}).to_string() + "\n").unwrap();
    let (ours, theirs) = (dir.path().join("os-eval.jsonl"), dir.path().join("hf.jsonl"));
    let o = run_tool("os-eval", &["score", "--model", soup_dir.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--output", ours.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "os-eval: {}", String::from_utf8_lossy(&o.stderr));
    run_python("hf_deepseek.py", &["score", soup_dir.to_str().unwrap(), tokens.to_str().unwrap(), theirs.to_str().unwrap()]);
    let score = |p: &Path| serde_json::from_str::<Value>(std::fs::read_to_string(p).unwrap().trim()).unwrap()["sum_logprob"].as_f64().unwrap();
    assert!((score(&ours) - score(&theirs)).abs() < 1e-3, "os-eval {} vs transformers {}", score(&ours), score(&theirs));

    // mtp_loss_coeff 0: the MTP layer is kept but not trained, and the main model trains as without it.
    let off = tempfile::tempdir().unwrap();
    let o = train(off.path(), &[&mtp[..], &["--mtp-loss-coeff", "0"]].concat());
    assert!(o.status.success(), "os-train failed: {}", String::from_utf8_lossy(&o.stderr));
    let (reference_dir, reference_log) = reference();
    for (g, r) in log(off.path()).iter().zip(reference_log) {
        assert_eq!(g["loss"], r["loss"], "step {}: the main loss differs from the model without MTP", r["step"]);
        assert!(g["mtp_loss"].is_null());
    }
    let off_last = off.path().join(format!("checkpoints/step-{STEPS:07}"));
    assert!(checkpoint_names(&off_last).contains(&"model.layers.3.eh_proj.weight".to_string()));

    // The optimizer state holds exactly the trained parameters: resuming with the MTP layers
    // trained when they were not (or the other way round) is refused naming the option (exit 78),
    // and the way out it names, a new run from the checkpoint's weights, trains them.
    let state = |dir: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap()).unwrap() };
    assert_eq!((state(&off_last)["mtp_trained"].clone(), state(&last_ck)["mtp_trained"].clone()), (false.into(), true.into()));
    assert!(state(&reference_dir.join(format!("checkpoints/step-{STEPS:07}"))).get("mtp_trained").is_none(), "a model without MTP layers");
    let more = (STEPS + 3).to_string();
    for (run, coeff) in [(off.path(), "0.3"), (whole.as_path(), "0")] {
        let o = train(run, &[&mtp[..], &["--train-iters", &more, "--mtp-loss-coeff", coeff]].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(78), "{err}");
        assert!(err.contains(&format!("cannot resume with mtp_loss_coeff = {coeff}")) && err.contains("init_from"), "{err}");
    }
    let fresh = tempfile::tempdir().unwrap();
    let o = train(fresh.path(), &["--model-config", "null", "--init-from", off_last.to_str().unwrap(), "--train-iters", "1", "--warmup-iters", "0", "--save-interval", "1"]);
    assert!(o.status.success(), "a new run from the weights: {}", String::from_utf8_lossy(&o.stderr));
    assert!(log(fresh.path())[0]["mtp_loss"].as_f64().is_some(), "the MTP layers train in the new run");
}

/// Without `tokenizer`, checkpoints carry the tokenizer the store's shards were made with (as
/// os-tokenize recorded it, content hash checked), so os-eval can load them; when those files are
/// gone or changed the run is refused at the start (exit 78), unless it saves no checkpoints.
#[test]
fn checkpoints_carry_the_tokenizer_the_shards_were_made_with_or_the_run_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let w = |p: &str| work.path().join(p);
    // The demo shards, their record pointing at a copy of the tokenizer this test can change.
    store();
    let (tok, original) = (w("tokenizer"), scratch().join("store/demo/tokenizer"));
    std::fs::create_dir_all(&tok).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(original.join(f), tok.join(f)).unwrap();
    }
    let shards = scratch().join("store/shards/part-0");
    for ext in ["bin", "idx"] {
        std::fs::copy(shards.with_extension(ext), w("part-0").with_extension(ext)).unwrap();
    }
    let record = std::fs::read_to_string(shards.with_extension("json")).unwrap();
    let record = record.replace(&format!("{}/", original.to_str().unwrap()), &format!("{}/", tok.to_str().unwrap()));
    assert!(record.contains(tok.to_str().unwrap()));
    std::fs::write(w("part-0.json"), record).unwrap();
    let o = run_tool("os-mix", &["--weights", &format!("1.0 {}", w("part-0").display()), "--seq-len", "128", "--samples", "64", "--output", w("mix").to_str().unwrap()]);
    assert!(o.status.success(), "os-mix: {}", String::from_utf8_lossy(&o.stderr));
    let run = |name: &str, extra: &[&str]| {
        let mix = w("mix");
        let mut a = vec!["--data", mix.to_str().unwrap(), "--train-iters", "4"];
        a.extend_from_slice(extra);
        Command::new(tool("os-train")).args(args(&w(name), &a)).output().unwrap()
    };
    let o = run("found", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the store's shards were made with"), "{err}");
    let ck = w("found/checkpoints/step-0000004");
    assert_eq!(std::fs::read(ck.join("tokenizer.json")).unwrap(), std::fs::read(tok.join("tokenizer.json")).unwrap());
    std::fs::write(w("text.jsonl"), "{\"text\": \"the capital\"}\n").unwrap();
    let (text, scores) = (w("text.jsonl"), w("scores.jsonl"));
    let o = run_tool("os-eval", &["score", "--model", ck.to_str().unwrap(), "--text", text.to_str().unwrap(), "--output", scores.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "os-eval cannot load the checkpoint: {}", String::from_utf8_lossy(&o.stderr));
    // Changed files: not the tokenizer that made the shards.
    std::fs::write(tok.join("tokenizer_config.json"), "{}").unwrap();
    let o = run("changed", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("other tokenizer files") && err.contains("--tokenizer"), "{err}");
    assert!(!w("changed/checkpoints").exists());
    // Gone: refused, unless the run saves nothing.
    std::fs::remove_dir_all(&tok).unwrap();
    let o = run("gone", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("no tokenizer") && err.contains("does not load"), "{err}");
    let o = run("unsaved", &["--save-at-end", "false", "--save-interval", "null"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `os-train --help` lists every option of the resolved config with its default and what it does.
#[test]
fn help_lists_every_config_option_with_its_default() {
    let o = run_tool("os-train", &["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    let o = run_tool("os-train", &["--config", root().join("recipes/train-demo.toml").to_str().unwrap(), "--print-config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut keys = vec![];
    for (key, value) in config.as_object().unwrap() {
        match value.as_object() {
            Some(table) => keys.extend(table.keys().map(|k| format!("{key}.{k}"))),
            None => keys.push(key.clone()),
        }
    }
    assert!(keys.len() > 40);
    for key in keys {
        let line = help.lines().find(|l| l.trim_start().starts_with(&format!("{key} "))).unwrap_or_else(|| panic!("--help does not list {key}:\n{help}"));
        assert!(line.contains('[') && line.split(']').nth(1).is_some_and(|about| about.trim().len() > 5), "{line}");
    }
    assert!(help.contains("[cosine]") && help.contains("[required]") && help.contains("[bf16-mixed]"), "{help}");
}

/// On a terminal (a pseudo-terminal here, through Python's pty) each step prints a progress line
/// on stderr; elsewhere (every other test) none.
#[test]
fn a_terminal_gets_a_progress_line_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))";
    let o = Command::new(openseek_tests::python())
        .args(["-c", spawn, tool("os-train").to_str().unwrap()])
        .args(args(dir.path(), &["--train-iters", "4"]))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    for step in 1..=4 {
        let line = out.lines().find(|l| l.starts_with(&format!("os-train: step {step}/4  loss "))).unwrap_or_else(|| panic!("no progress line for step {step}:\n{out}"));
        assert!(line.contains("  lr ") && line.contains("k tokens/s  ETA 0:"), "{line}");
    }
}
