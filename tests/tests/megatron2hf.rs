//! os-megatron2hf end to end on real Megatron checkpoints made by megatron-core on CPU
//! (`tests/python/megatron_ckpt.py`): a small DeepSeek-V3-style model (MLA, dense first layer,
//! 8 routed experts with expert bias, shared experts) saved as torch_dist (TP1, and TP2 x EP2 as
//! megatron-core reshards it; an all-MoE q-LoRA variant whose layers megatron-core stacks into one
//! tensor per name) and in the legacy torch layout (TP2 x EP2 untied, PP2 tied, and EP2
//! bf16 under Transformer Engine's names and grouped-GEMM expert layout, TP2 x EP2 with the legacy
//! GroupedMLP weight1/weight2 experts). Every converted tensor
//! must equal the TP1 source after the documented mapping, and os-eval's log-probs on the
//! converted float32 models must equal megatron-core's forward, as transformers' do.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use openseek_tests::{run_python, run_tool};
use serde_json::Value;

/// The checkpoints, made once per test run (about 30 s on 2 cores).
fn checkpoints() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        run_python("megatron_ckpt.py", &["make", d.path().to_str().unwrap()]);
        d
    })
    .path()
}

fn convert(name: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let src = checkpoints().join(name);
    let mut args = vec!["--load", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    run_tool("os-megatron2hf", &args)
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "os-megatron2hf failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn scores(model: &Path) -> Vec<Value> {
    let out = model.join("scores.jsonl");
    let tokens = checkpoints().join("tokens.jsonl");
    let o = run_tool(
        "os-eval",
        &["score", "--model", model.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--output", out.to_str().unwrap(), "--device", "cpu"],
    );
    assert!(o.status.success(), "os-eval score failed: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_layout_converts_to_the_source_weights_and_megatrons_logits() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(checkpoints().join("reference.json")).unwrap()).unwrap();
    // (checkpoint, tied, bf16, reference forward); dist_allmoe is given as its iteration directory.
    let layouts = [
        ("dist_tp1", false, false, "untied"),
        ("dist_tp2ep2", false, false, "untied"),
        ("torch_tp2ep2", false, false, "untied"),
        ("torch_pp2", true, false, "tied"),
        ("torch_te_ep2", false, true, ""),
        ("torch_gg_tp2ep2", false, false, "untied"),
        ("dist_allmoe/iter_0000010", false, false, "allmoe"),
    ];
    let out = tempfile::tempdir().unwrap();
    // Tokenizer files are copied; weights and configs beside them are not.
    let tok = out.path().join("tok");
    std::fs::create_dir(&tok).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"] {
        std::fs::write(tok.join(f), f).unwrap();
    }
    let mut specs = Vec::new();
    for (name, tied, bf16, reference) in layouts {
        let hf = out.path().join(name.replace('/', "_"));
        ok(&convert(name, &hf, &["--vocab-size", "250", "--shard-size", "400KB", "--bos-token-id", "1", "--eos-token-id", "2", "--tokenizer", tok.to_str().unwrap()]));
        specs.push(format!("{}{}{}{}", hf.display(), if tied { ":tied" } else { "" }, if bf16 { ":bf16" } else { "" }, if reference == "allmoe" { ":allmoe" } else { "" }));
    }
    // Every HF tensor equals the megatron-core TP1 model's after the documented mapping.
    let full = checkpoints().join("full.pt");
    let mut check = vec!["check", full.to_str().unwrap()];
    check.extend(specs.iter().map(String::as_str));
    let compared: Vec<usize> = run_python("megatron_ckpt.py", &check).lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(compared, [121, 121, 121, 120, 121, 121, 155]);

    // transformers loads what was written (tied head, q-LoRA, all-MoE) and computes megatron-core's forward.
    let tf: Vec<String> = ["torch_pp2:tied", "dist_allmoe_iter_0000010:allmoe", "torch_gg_tp2ep2:untied"]
        .iter()
        .map(|s| format!("{}", out.path().join(s).display()))
        .collect();
    let mut args = vec!["transformers", checkpoints().to_str().unwrap()];
    args.extend(tf.iter().map(String::as_str));
    let diffs: Vec<f64> = run_python("megatron_ckpt.py", &args).lines().map(|d| d.trim().parse().unwrap()).collect();
    assert_eq!(diffs.len(), tf.len());
    assert!(diffs.iter().all(|d| *d < 1e-4), "transformers' log-probs differ from megatron-core's by {diffs:?}");

    for (name, tied, bf16, reference_key) in layouts {
        let hf = out.path().join(name.replace('/', "_"));
        assert_eq!(std::fs::read_to_string(hf.join("tokenizer.json")).unwrap(), "tokenizer.json");
        assert!(hf.join("tokenizer_config.json").is_file() && !hf.join("model.safetensors").exists());

        let config: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["vocab_size"], 250, "{name}");
        assert_eq!(config["first_k_dense_replace"], if reference_key == "allmoe" { 0 } else { 1 }, "{name}");
        assert_eq!(config["n_shared_experts"], 2, "{name}");
        assert_eq!(config["tie_word_embeddings"], tied, "{name}");
        assert_eq!(config["eos_token_id"], 2, "{name}");
        assert_eq!(config["torch_dtype"], if bf16 { "bfloat16" } else { "float32" }, "{name}");
        let index: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("model.safetensors.index.json")).unwrap()).unwrap();
        let shards: std::collections::BTreeSet<&str> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
        assert!(shards.len() > 1, "{name}: --shard-size 400KB gives several shards");
        let info: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("megatron2hf_info.json")).unwrap()).unwrap();
        assert_eq!(info["iteration"], 10, "{name}");
        assert_eq!(info["padded_vocab"], 256, "{name}");
        assert_eq!(info["provenance"]["tool"], "os-megatron2hf");
        assert!(info["unknown"].as_array().unwrap().is_empty());

        // Our model on the converted checkpoint scores tokens as megatron-core's forward does.
        if bf16 {
            continue; // the reference forward ran in float32
        }
        let want = &reference[reference_key];
        let got = scores(&hf);
        assert_eq!(got.len(), want.as_array().unwrap().len());
        for (g, w) in got.iter().zip(want.as_array().unwrap()) {
            let (g, w) = (g["token_logprobs"].as_array().unwrap(), w["token_logprobs"].as_array().unwrap());
            assert_eq!(g.len(), w.len());
            for (a, b) in g.iter().zip(w) {
                let d = (a.as_f64().unwrap() - b.as_f64().unwrap()).abs();
                assert!(d < 1e-4, "{name}: log-prob {a} vs megatron-core {b}");
            }
        }
    }
}

#[test]
fn the_legacy_layout_has_megatrons_rank_directory_names() {
    let names = |c: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(checkpoints().join(c).join("iter_0000010")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(names("torch_tp2ep2"), ["mp_rank_00_000", "mp_rank_01_001"]);
    assert_eq!(names("torch_pp2"), ["mp_rank_00_000", "mp_rank_00_001"]);
    assert_eq!(std::fs::read_to_string(checkpoints().join("torch_pp2/latest_checkpointed_iteration.txt")).unwrap().trim(), "10");
}

fn fails(o: &std::process::Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

#[test]
fn bad_checkpoints_are_refused_naming_the_file() {
    let out = tempfile::tempdir().unwrap();
    let hf = out.path().join("hf");
    let v = ["--vocab-size", "250"];

    // An iteration that is not there.
    fails(&convert("torch_pp2", &hf, &["--vocab-size", "250", "--iteration", "20"]), 66, &["iter_0000020: iteration directory missing (present: iter_0000010)"]);
    // A key nobody maps: refused by default, converted around with --skip-unknown and listed.
    let o = convert("bad_unknown", &hf, &v);
    fails(&o, 65, &["mp_rank_00_000/model_optim_rng.pt: decoder.layers.0.self_attention.linear_qkv.weight"]);
    assert!(!hf.join("model.safetensors.index.json").exists());
    ok(&convert("bad_unknown", &hf, &["--vocab-size", "250", "--skip-unknown"]));
    let info: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("megatron2hf_info.json")).unwrap()).unwrap();
    assert!(info["unknown"][0].as_str().unwrap().ends_with("mp_rank_00_000/model_optim_rng.pt: decoder.layers.0.self_attention.linear_qkv.weight"));
    // The output directory now holds a checkpoint: not overwritten.
    fails(&convert("torch_tp2ep2", &hf, &v), 73, &["already holds a checkpoint"]);
    // Ranks that disagree on a shape.
    let hf2 = out.path().join("hf2");
    fails(
        &convert("bad_shape", &hf2, &v),
        65,
        &["shape mismatch between ranks for decoder.layers.0.self_attention.linear_q_proj.weight", "mp_rank_00_000/model_optim_rng.pt has [48, 64]", "mp_rank_01_001/model_optim_rng.pt has [40, 64]"],
    );
    // A missing rank directory.
    let partial = out.path().join("partial");
    copy_dir(&checkpoints().join("torch_tp2ep2"), &partial);
    std::fs::remove_dir_all(partial.join("iter_0000010/mp_rank_01_001")).unwrap();
    let o = run_tool("os-megatron2hf", &["--load", partial.to_str().unwrap(), "--out", hf2.to_str().unwrap(), "--vocab-size", "250"]);
    fails(&o, 66, &["args.tensor_model_parallel_size is 2", "rank files are missing"]);
    // The true vocabulary is not in these args: the tool asks for it.
    fails(&convert("dist_tp1", &hf2, &[]), 64, &["--vocab-size", "256 rows"]);
    assert!(!hf2.exists() || std::fs::read_dir(&hf2).unwrap().next().is_none(), "nothing written on failure");
}

fn copy_dir(from: &Path, to: &PathBuf) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
