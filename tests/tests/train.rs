//! os-train end to end on CPU with the demo recipe's tiny OpenSeek-architecture model: it learns
//! (loss far below the corpus' unigram entropy), the logged learning rates follow the formulas,
//! TensorBoard's own reader reads the event files, and a run killed (SIGKILL, or during a save)
//! or stopped by USR1/TERM resumes to exactly the losses and weights of an uninterrupted run.

use openseek_mix::store::SampleStore;
use openseek_tests::{demo_store, root, run_python, run_tool, tool};
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

/// The last record of each step in RUN_DIR/log.jsonl (a resumed run logs some steps twice).
fn log(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap_or_default();
    let mut by_step: Vec<Value> = vec![];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
        let s = v["step"].as_u64().unwrap() as usize;
        by_step.truncate(s - 1);
        by_step.push(v);
    }
    by_step
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
    let bytes = final_weights(whole.path());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (name, entry) = header.as_object().unwrap().iter().find(|(n, _)| n.contains("mlp.experts.") && n.ends_with("down_proj.weight")).unwrap();
    assert_eq!(entry["dtype"], "F32", "{name}");
    let [start, end] = [0, 1].map(|i| 8 + header_len + entry["data_offsets"][i].as_u64().unwrap() as usize);
    let data = &bytes[start..end];
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
