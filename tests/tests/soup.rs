//! os-soup end to end: tiny Llama-shaped checkpoints written by tests/python/soup_mergekit.py,
//! merged by os-soup and by mergekit (PyPI, pinned) with the same YAML, compared tensor by
//! tensor; averages / latest-N / EMA against direct computations; errors, --allow-partial,
//! sharding and merge_info.json.

use std::path::Path;

use openseek_tests::{run_python, run_tool};
use serde_json::Value;

const PY: &str = "soup_mergekit.py";

fn make(dir: &Path, extra: &[&str]) {
    let mut args = vec!["make", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_python(PY, &args);
}

fn soup(args: &[&str]) {
    let out = run_tool("os-soup", args);
    assert!(out.status.success(), "os-soup {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn mergekit(config: &Path, out: &Path) {
    run_python(PY, &["mergekit", config.to_str().unwrap(), out.to_str().unwrap()]);
}

/// (max abs difference, largest reference magnitude) over all tensors; panics on missing tensors or dtype differences.
fn compare(a: &Path, b: &Path) -> (f64, f64) {
    let json: Value = serde_json::from_str(&run_python(PY, &["compare", a.to_str().unwrap(), b.to_str().unwrap()])).unwrap();
    let map = json.as_object().unwrap();
    assert!(map.len() >= 10, "too few tensors compared: {json}");
    let mut worst = (0f64, 0f64);
    for (name, v) in map {
        assert!(v.get("max_abs").is_some(), "{name}: {v}");
        assert_eq!(v["dtype_a"], v["dtype_b"], "{name}: output dtypes differ");
        worst.0 = worst.0.max(v["max_abs"].as_f64().unwrap());
        worst.1 = worst.1.max(v["max_ref"].as_f64().unwrap());
    }
    worst
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn parity(dtype: &str, yaml: impl Fn(&str) -> String, tolerance: f64) {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    make(&m, &["--models", "3", "--dtype", dtype, "--seed", "3"]);
    let config = dir.path().join("merge.yaml");
    write(&config, &yaml(m.to_str().unwrap()));
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    soup(&["--config", config.to_str().unwrap(), "--out", ours.to_str().unwrap(), "-q"]);
    mergekit(&config, &theirs);
    let (diff, reference) = compare(&ours, &theirs);
    assert!(reference > 0.01, "degenerate fixture");
    assert!(diff <= tolerance, "os-soup differs from mergekit by {diff} (tolerance {tolerance})");
}

#[test]
fn linear_bf16_equals_mergekit_exactly() {
    parity(
        "bfloat16",
        |m| {
            format!(
                "merge_method: linear\nmodels:\n  - {{model: {m}/m1, parameters: {{weight: 0.5}}}}\n  - {{model: {m}/m2, parameters: {{weight: 0.3}}}}\n  - {{model: {m}/m3, parameters: {{weight: 0.2}}}}\n"
            )
        },
        0.0,
    );
}

#[test]
fn linear_unnormalized_to_float16_equals_mergekit() {
    parity(
        "float32",
        |m| {
            format!(
                "merge_method: linear\nmodels:\n  - {{model: {m}/m1, parameters: {{weight: 0.6}}}}\n  - {{model: {m}/m2, parameters: {{weight: [{{filter: mlp, value: 0.1}}, {{value: 0.7}}]}}}}\nparameters: {{normalize: false}}\ndtype: float16\n"
            )
        },
        0.0,
    );
}

#[test]
fn slerp_equals_mergekit() {
    parity(
        "float32",
        |m| format!("merge_method: slerp\nbase_model: {m}/base\nmodels: [{{model: {m}/base}}, {{model: {m}/m1}}]\nparameters: {{t: 0.3}}\n"),
        1e-6,
    );
}

#[test]
fn task_arithmetic_equals_mergekit() {
    parity(
        "float32",
        |m| {
            format!(
                "merge_method: task_arithmetic\nbase_model: {m}/base\nmodels:\n  - {{model: {m}/m1, parameters: {{weight: 0.7}}}}\n  - {{model: {m}/m2, parameters: {{weight: 0.4}}}}\n  - {{model: {m}/m3, parameters: {{weight: -0.2}}}}\nparameters: {{lambda: 0.9}}\n"
            )
        },
        1e-6,
    );
}

#[test]
fn ties_equals_mergekit() {
    parity(
        "float32",
        |m| {
            format!(
                "merge_method: ties\nbase_model: {m}/base\nmodels:\n  - {{model: {m}/base}}\n  - {{model: {m}/m1, parameters: {{weight: 0.7, density: 0.5}}}}\n  - {{model: {m}/m2, parameters: {{weight: 0.4, density: 0.3}}}}\n  - {{model: {m}/m3, parameters: {{weight: 0.5, density: 0.8}}}}\nparameters: {{int8_mask: true}}\ndtype: float32\n"
            )
        },
        1e-6,
    );
}

/// f32 inputs: with bf16 inputs many task-vector magnitudes tie at the top-k boundary and
/// torch's argsort breaks ties its own way, so the kept sets differ there (documented).
#[test]
fn ties_unnormalized_to_bf16_output_equals_mergekit() {
    parity(
        "float32",
        |m| {
            format!(
                "merge_method: ties\nbase_model: {m}/base\nmodels:\n  - {{model: {m}/m1, parameters: {{weight: 0.7, density: 0.5}}}}\n  - {{model: {m}/m2, parameters: {{weight: 0.4, density: 0.3}}}}\nparameters: {{normalize: false}}\ndtype: float32\nout_dtype: bfloat16\n"
            )
        },
        0.0,
    );
}

/// DARE drops at random: mergekit uses torch's generator, we use a seeded ChaCha stream, so
/// the two agree in distribution, not element by element. Checked: the kept fraction matches
/// the density for both, rescaling keeps each tensor's L1 norm, and our seed makes it repeatable.
#[test]
fn dare_linear_matches_mergekit_statistically_and_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    make(&m, &["--models", "1", "--seed", "5", "--hidden", "96"]);
    let ms = m.to_str().unwrap();
    let config = dir.path().join("dare.yaml");
    write(&config, &format!("merge_method: dare_linear\nbase_model: {ms}/base\nmodels:\n  - {{model: {ms}/m1, parameters: {{weight: 1.0, density: 0.3}}}}\n"));
    let stats = |merged: &Path| -> Value {
        serde_json::from_str(&run_python(PY, &["dare_stats", &format!("{ms}/base"), merged.to_str().unwrap(), &format!("{ms}/m1"), "0.3"])).unwrap()
    };
    let ours = dir.path().join("ours");
    soup(&["--config", config.to_str().unwrap(), "--out", ours.to_str().unwrap(), "--seed", "7", "-q"]);
    let theirs = dir.path().join("theirs");
    mergekit(&config, &theirs);
    for (who, s) in [("os-soup", stats(&ours)), ("mergekit", stats(&theirs))] {
        let kept = s["kept_fraction"].as_f64().unwrap();
        assert!((kept - 0.3).abs() < 0.01, "{who}: kept {kept}, density 0.3: {s}");
        // L1 rescale: the kept delta has the full delta's L1 norm (up to float rounding).
        assert!((s["min_l1_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-3, "{who}: {s}");
        assert!((s["max_l1_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-3, "{who}: {s}");
    }
    let again = dir.path().join("again");
    soup(&["--config", config.to_str().unwrap(), "--out", again.to_str().unwrap(), "--seed", "7", "-q"]);
    assert_eq!(compare(&ours, &again).0, 0.0, "same seed must give the same merge");
    let other = dir.path().join("other");
    soup(&["--config", config.to_str().unwrap(), "--out", other.to_str().unwrap(), "--seed", "8", "-q"]);
    assert!(compare(&ours, &other).0 > 0.0, "another seed must drop other elements");
}

#[test]
fn dare_ties_density_one_is_ties_without_trimming() {
    // With density 1 nothing is dropped, so dare_ties is deterministic and must equal mergekit.
    parity(
        "float32",
        |m| {
            format!(
                "merge_method: dare_ties\nbase_model: {m}/base\nmodels:\n  - {{model: {m}/m1, parameters: {{weight: 0.6, density: 1.0}}}}\n  - {{model: {m}/m2, parameters: {{weight: 0.5, density: 1.0}}}}\nparameters: {{normalize: true}}\n"
            )
        },
        1e-6,
    );
}

#[test]
fn averages_latest_n_and_ema_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    make(&m, &["--models", "3", "--seed", "9"]);
    // A run directory with checkpoints whose names sort differently from their steps.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for (src, name) in [("base", "checkpoint-900"), ("m1", "checkpoint-1000"), ("m2", "checkpoint-2000"), ("m3", "checkpoint-10000")] {
        std::os::unix::fs::symlink(m.join(src), run.join(name)).unwrap();
    }
    let ms = m.to_str().unwrap();
    let p = |s: &str| format!("{ms}/{s}");

    // --latest 3 picks 1000, 2000, 10000 = m1, m2, m3 (not 900, which sorts last by name).
    let latest = dir.path().join("latest");
    soup(&[run.to_str().unwrap(), "--latest", "3", "--out", latest.to_str().unwrap(), "-q"]);
    let yaml = dir.path().join("uniform.yaml");
    write(&yaml, &format!("merge_method: linear\nmodels: [{{model: {}, parameters: {{weight: 1}}}}, {{model: {}, parameters: {{weight: 1}}}}, {{model: {}, parameters: {{weight: 1}}}}]\n", p("m1"), p("m2"), p("m3")));
    let uniform = dir.path().join("uniform");
    mergekit(&yaml, &uniform);
    assert!(compare(&latest, &uniform).0 <= 1e-7);

    // Weighted average from flags equals mergekit's linear with the same weights.
    let weighted = dir.path().join("weighted");
    soup(&["--method", "weighted", "--weights", "1,3", &p("m1"), &p("m2"), "--out", weighted.to_str().unwrap(), "-q"]);
    write(&yaml, &format!("merge_method: linear\nmodels: [{{model: {}, parameters: {{weight: 1}}}}, {{model: {}, parameters: {{weight: 3}}}}]\n", p("m1"), p("m2")));
    let wk = dir.path().join("wk");
    mergekit(&yaml, &wk);
    assert!(compare(&weighted, &wk).0 <= 1e-7);

    // EMA against a sequential float32 EMA.
    let ema = dir.path().join("ema");
    soup(&["--method", "ema", "--decay", "0.8", &p("base"), &p("m1"), &p("m2"), &p("m3"), "--out", ema.to_str().unwrap(), "-q"]);
    let reference = dir.path().join("ema_ref");
    run_python(PY, &["ema", reference.to_str().unwrap(), "0.8", &p("base"), &p("m1"), &p("m2"), &p("m3")]);
    let (diff, _) = compare(&ema, &reference);
    assert!(diff <= 1e-7, "EMA differs from the sequential EMA by {diff}");
    // and it is not just the uniform average
    assert!(compare(&ema, &uniform).0 > 1e-4);
}

#[test]
fn outputs_shards_index_config_tokenizer_and_merge_info() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    make(&m, &["--models", "2", "--dtype", "bfloat16", "--shard-mb", "0.05"]);
    let out = dir.path().join("out");
    let ms = m.to_str().unwrap();
    soup(&[&format!("{ms}/m1"), &format!("{ms}/m2"), "--out", out.to_str().unwrap(), "--shard-size", "40KB", "-q"]);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() >= 3, "expected several shards: {shards:?}");
    for s in &shards {
        assert!(out.join(s).is_file(), "{s}");
        assert!(std::fs::metadata(out.join(s)).unwrap().len() < 40_000 + 70_000, "shard too large");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    let tok: Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tok["from"], "m1", "tokenizer files come from the first model");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(out.join("merge_info.json")).unwrap()).unwrap();
    assert_eq!(info["method"], "average");
    assert_eq!(info["merged_keys"].as_array().unwrap().len(), 21);
    assert_eq!(info["skipped_keys"].as_array().unwrap().len(), 0);
    let first = &info["inputs"][0]["files"][0];
    let file = m.join("m1").join(first["name"].as_str().unwrap());
    assert_eq!(first["sha256"].as_str().unwrap(), openseek_common::hash::sha256_file(&file).unwrap());
    // The merged bf16 model equals mergekit's uniform linear merge of the sharded inputs.
    let yaml = dir.path().join("u.yaml");
    write(&yaml, &format!("merge_method: linear\nmodels: [{{model: {ms}/m1, parameters: {{weight: 1}}}}, {{model: {ms}/m2, parameters: {{weight: 1}}}}]\n"));
    let theirs = dir.path().join("theirs");
    mergekit(&yaml, &theirs);
    assert_eq!(compare(&out, &theirs).0, 0.0);
    // A second run into the same directory refuses to mix with the old weights.
    let again = run_tool("os-soup", &[&format!("{ms}/m1"), &format!("{ms}/m2"), "--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(73), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn mismatched_tensors_fail_clearly_or_are_skipped_with_allow_partial() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    make(&a, &["--models", "1", "--hidden", "64"]);
    make(&b, &["--models", "1", "--hidden", "64", "--vocab", "300", "--seed", "2"]);
    let (a1, b1) = (a.join("m1"), b.join("m1"));
    let out = dir.path().join("out");
    let res = run_tool("os-soup", &[a1.to_str().unwrap(), b1.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(65));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("lm_head.weight") && err.contains("[256, 64]") && err.contains("[300, 64]") && err.contains("--allow-partial"), "{err}");
    assert!(!out.join("model.safetensors.index.json").exists(), "nothing written on failure");

    soup(&[a1.to_str().unwrap(), b1.to_str().unwrap(), "--out", out.to_str().unwrap(), "--allow-partial", "-q"]);
    let info: Value = serde_json::from_str(&std::fs::read_to_string(out.join("merge_info.json")).unwrap()).unwrap();
    let skipped: Vec<&str> = info["skipped_keys"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["lm_head.weight", "model.embed_tokens.weight"]);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert!(index["weight_map"].get("lm_head.weight").is_none());
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 19);

    // A method that needs a base, without one: a usage error.
    let res = run_tool("os-soup", &["--method", "ties", a1.to_str().unwrap(), b1.to_str().unwrap(), "--out", dir.path().join("x").to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&res.stderr).contains("base"));
}

#[test]
fn weights_are_validated_and_a_non_finite_merge_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    make(&m, &["--models", "2"]);
    let (m1, m2) = (m.join("m1"), m.join("m2"));
    let (m1, m2) = (m1.to_str().unwrap(), m2.to_str().unwrap());
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let refused = |args: &[&str], code: i32, says: &str| {
        let mut all = vec![m1, m2, "--output", o];
        all.extend_from_slice(args);
        let r = run_tool("os-soup", &all);
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert_eq!(r.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("os-soup: error: os-soup:"), "doubled prefix: {err}");
        assert!(!out.join("model.safetensors.index.json").exists() && !out.join("model.safetensors").exists(), "{args:?}: nothing written");
    };
    refused(&["--method", "weighted", "--weights", "nan,1"], 78, "weight = NaN: parameters must be finite");
    refused(&["--method", "weighted", "--weights", "1,-1"], 78, "an average takes no negative weights");
    refused(&["--method", "linear", "--weights", "1,-1"], 78, "the weights sum to 0");
    refused(&["--method", "weighted", "--weights", "1e39,1"], 78, "beyond float32");
    refused(&["--method", "weighted", "--weights", "1000000,1", "--normalize", "false", "--dtype", "float16"], 65, "the merge turns finite inputs into");
    // An output that cannot be created: 73, one prefix.
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let r = run_tool("os-soup", &[m1, m2, "-o", dir.path().join("file/sub").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(73), "{err}");
    assert!(err.starts_with("os-soup: error: ") && err.contains("cannot create output") && !err.contains("os-soup: error: os-soup:"), "{err}");
}

#[test]
fn latest_takes_an_os_train_run_directory_and_fewer_checkpoints_than_asked() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    make(&m, &["--models", "2"]);
    // An os-train run: RUN/checkpoints/step-NNNNNNN (keep_last 2), a log and TensorBoard files beside.
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::create_dir_all(run.join("tensorboard")).unwrap();
    std::fs::write(run.join("log.jsonl"), "").unwrap();
    for (src, name) in [("m1", "step-0000040"), ("m2", "step-0000080")] {
        std::os::unix::fs::symlink(m.join(src), run.join("checkpoints").join(name)).unwrap();
    }
    let out = dir.path().join("soup");
    let r = run_tool("os-soup", &["--latest", "3", run.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("--latest 3 but") && err.contains("averaging those 2"), "{err}");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(out.join("merge_info.json")).unwrap()).unwrap();
    let inputs: Vec<&str> = info["inputs"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert!(inputs[0].ends_with("step-0000040") && inputs[1].ends_with("step-0000080"), "{inputs:?}");
}
