//! os-mix and the openseek-mix library checked against numpy and megatron-core themselves.

use openseek_mix::{blend, rng::RandomState};
use openseek_tests::run_python;
use serde_json::{json, Value};

fn sha_i64(values: &[i64]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    openseek_common::hash::sha256_bytes(&bytes)
}

#[test]
fn random_state_shuffle_matches_numpy() {
    let cases: Vec<(u32, usize)> = vec![
        (0, 1),
        (0, 2),
        (1, 10),
        (1234, 1000),
        (42, 65_537),
        (4_294_967_295, 3),
        (2024, 1_000_000),
        (7, 3_000_000),
    ];
    let arg = json!({"shuffles": cases.iter().map(|(s, n)| json!([s, n])).collect::<Vec<_>>()}).to_string();
    let out: Value = serde_json::from_str(&run_python("megatron_gpt_numpy.py", &[&arg])).unwrap();
    for ((seed, n), want) in cases.iter().zip(out["shuffles"].as_array().unwrap()) {
        let mut rs = RandomState::new(*seed);
        let mut a: Vec<i64> = (0..*n as i64).collect();
        rs.shuffle(&mut a);
        let mut b: Vec<u32> = (0..(*n / 3 + 1) as u32).collect();
        rs.shuffle(&mut b);
        let head: Vec<i64> = want["head"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(&a[..head.len()], &head[..], "seed {seed} n {n}: first elements");
        assert_eq!(sha_i64(&a), want["sha256"].as_str().unwrap(), "seed {seed} n {n}: whole permutation");
        let b64: Vec<i64> = b.iter().map(|&x| x as i64).collect();
        assert_eq!(sha_i64(&b64), want["sha256_second"].as_str().unwrap(), "seed {seed} n {n}: second shuffle");
        let raw: Vec<u64> = (0..3).map(|_| rs.next_u32() as u64).collect();
        let want_raw: Vec<u64> = want["raw32"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(raw, want_raw, "seed {seed} n {n}: words consumed");
    }
}

#[test]
fn weight_normalisation_matches_numpy_bit_for_bit() {
    // Lengths around numpy's pairwise-summation thresholds (8, 128), and the 86-weight baseline size.
    let mut cases: Vec<Vec<f64>> = Vec::new();
    let mut x = 0.123456789f64;
    for len in [1usize, 2, 3, 7, 8, 9, 15, 16, 17, 86, 127, 128, 129, 200, 300, 1000] {
        let mut w = Vec::new();
        for _ in 0..len {
            x = (x * 9301.0 + 0.49297).fract();
            w.push(x * 3.7 + 1e-3);
        }
        cases.push(w);
    }
    let arg = json!({ "weights": cases }).to_string();
    let out: Value = serde_json::from_str(&run_python("megatron_gpt_numpy.py", &[&arg])).unwrap();
    for (i, w) in cases.iter().enumerate() {
        let sum = blend::numpy_sum(w).to_bits();
        assert_eq!(sum, out["sums"][i].as_u64().unwrap(), "sum of {} weights", w.len());
        let norm: Vec<u64> = blend::normalize(w).iter().map(|v| v.to_bits()).collect();
        let want: Vec<u64> = out["normalized"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(norm, want, "normalised {} weights", w.len());
    }
}

/// Twelve shards written by megatron-core, blended by megatron-core and by os-mix: every index
/// array byte-identical, every sample's tokens and documents identical.
#[test]
fn os_mix_blend_is_megatron_blended_dataset_sample_by_sample() {
    let work = tempfile::tempdir().unwrap();
    let weights = [0.1, 0.3, 0.05, 0.2, 0.07, 0.5, 1.5, 0.01, 0.3, 0.2, 0.11, 0.3];
    let config = json!({
        "shards": [[40,1,30],[100,5,200],[30,100,300],[300,1,5],[50,20,60],[60,1,100],[70,2,50],[80,3,40],[30,10,90],[25,1,400],[90,1,20],[55,4,70]],
        "weights": weights, "seq_len": 32, "samples": 3000, "seed": 4321, "split": "90,5,5",
        "vocab": 1000, "eod": 999, "data_seed": 3,
    });
    let work_s = work.path().to_str().unwrap();
    let meg: Value = serde_json::from_str(&run_python("megatron_gpt_blend.py", &[work_s, &config.to_string()])).unwrap();
    let prefixes: Vec<&str> = meg["prefixes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let spec: Vec<String> = weights.iter().zip(&prefixes).map(|(w, p)| format!("{w} {p}")).collect();
    let out_dir = work.path().join("ours");
    let out = openseek_tests::run_tool(
        "os-mix",
        &["--weights", &spec.join(" "), "--seq-len", "32", "--samples", "3000", "--seed", "4321", "--split", "90,5,5", "--output", out_dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "os-mix failed: {}", String::from_utf8_lossy(&out.stderr));
    let megdir = work.path().join("megatron");
    let mut compared = 0;
    for entry in std::fs::read_dir(&megdir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with("_index.npy") {
            continue;
        }
        let want = std::fs::read(megdir.join(&name)).unwrap();
        let got = std::fs::read(out_dir.join(&name)).unwrap_or_else(|e| panic!("{name} missing from the os-mix store: {e}"));
        assert!(want == got, "{name} differs from megatron-core's");
        compared += 1;
    }
    assert_eq!(compared, 2 + 3 * 12);
    let store = openseek_mix::store::SampleStore::open(&out_dir).unwrap();
    assert_eq!(store.len(), meg["num_samples"].as_u64().unwrap());
    let samples = openseek_mix::array::NpyMap::open(&megdir.join("samples.npy")).unwrap();
    let width = 33;
    for i in 0..store.len() {
        let (tokens, src) = store.sample(i);
        let want: Vec<u32> = (0..width).map(|k| samples.get(i as usize * width + k) as u32).collect();
        assert_eq!(tokens, want, "sample {i} tokens");
        let docs: Vec<u64> = meg["documents"][i as usize].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(src.pieces.iter().map(|p| p.sequence).collect::<Vec<_>>(), docs, "sample {i} documents");
    }
}

fn megatron_blend(work: &std::path::Path, extra: Value) -> (Value, std::path::PathBuf) {
    let mut config = json!({
        "shards": [[40,1,30],[100,5,200],[30,100,300],[300,1,5],[50,20,60],[60,1,100],[70,2,50],[80,3,40],[30,10,90],[25,1,400],[90,1,20],[55,4,70]],
        "weights": [0.1, 0.3, 0.05, 0.2, 0.07, 0.5, 1.5, 0.01, 0.3, 0.2, 0.11, 0.3], "seq_len": 32, "samples": 3000, "seed": 4321, "split": "90,5,5",
        "vocab": 1000, "eod": 999, "data_seed": 3,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let meg: Value = serde_json::from_str(&run_python("megatron_gpt_blend.py", &[work.to_str().unwrap(), &config.to_string()])).unwrap();
    let prefixes: Vec<&str> = meg["prefixes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let weights: Vec<f64> = config["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
    let spec: Vec<String> = weights.iter().zip(&prefixes).map(|(w, p)| format!("{w} {p}")).collect();
    let out_dir = work.join("ours");
    let out = openseek_tests::run_tool(
        "os-mix",
        &["--weights", &spec.join(" "), "--seq-len", "32", "--samples", "3000", "--seed", "4321", "--split", "90,5,5", "--output", out_dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "os-mix failed: {}", String::from_utf8_lossy(&out.stderr));
    (meg, out_dir)
}

/// The reader's tokens, labels, loss mask and position ids equal megatron-core's GPTDataset
/// `__getitem__` with reset_position_ids, reset_attention_mask, eod_mask_loss and a pad token.
#[test]
fn reader_matches_megatron_getitem_with_all_options() {
    use openseek_mix::reader::{Boundaries, Cursor, DataLoader, ReaderOptions};
    let work = tempfile::tempdir().unwrap();
    let (_, dir) = megatron_blend(
        work.path(),
        json!({"reset_position_ids": true, "reset_attention_mask": true, "eod_mask_loss": true, "pad": 998}),
    );
    let store = openseek_mix::store::SampleStore::open(&dir).unwrap();
    let opts = ReaderOptions {
        reset_position_ids: true,
        reset_attention_mask: true,
        eod_mask_loss: true,
        eod_token: Some(999),
        pad_token: Some(998),
        boundaries: Boundaries::Eod,
    };
    let meg = |name: &str| openseek_mix::array::NpyMap::open(&work.path().join("megatron").join(format!("batch_{name}.npy"))).unwrap();
    let (mt, ml, mm, mp) = (meg("tokens"), meg("labels"), meg("loss_mask"), meg("position_ids"));
    let mut loader = DataLoader::new(&store, opts, 0, 1, 4, Cursor::default()).unwrap();
    let mut checked_resets = 0;
    for step in 0..16 {
        let b = loader.next_batch().unwrap().unwrap();
        for r in 0..4 {
            let i = step * 4 + r;
            for k in 0..32 {
                let at = i * 32 + k;
                assert_eq!(b.tokens[r * 32 + k] as i64, mt.get(at), "sample {i} token {k}");
                assert_eq!(b.labels[r * 32 + k] as i64, ml.get(at), "sample {i} label {k}");
                assert_eq!(b.loss_mask[r * 32 + k] as i64, mm.get(at), "sample {i} loss mask {k}");
                assert_eq!(b.position_ids[r * 32 + k] as i64, mp.get(at), "sample {i} position {k}");
            }
            // Attention blocks: every block starts right after an EOD and none spans one.
            let cu = &b.cu_seqlens[r];
            assert_eq!((cu[0], *cu.last().unwrap()), (0, 32));
            checked_resets += cu.len() - 2;
        }
    }
    assert!(checked_resets > 20, "the data must exercise document resets ({checked_resets})");
    assert_eq!(loader.cursor(), Cursor { consumed_samples: 64 });
}

/// Resuming from a saved cursor continues with the very next sample, also when the number of
/// data-parallel ranks and the micro-batch size change.
#[test]
fn cursor_resumes_exactly_across_data_parallel_sizes() {
    use openseek_mix::reader::{Cursor, DataLoader, ReaderOptions};
    let work = tempfile::tempdir().unwrap();
    let (_, dir) = megatron_blend(work.path(), json!({}));
    let store = openseek_mix::store::SampleStore::open(&dir).unwrap();
    let reference = openseek_mix::store::SampleStore::open(&dir).unwrap();
    let mut seen: Vec<(u64, Vec<u32>)> = Vec::new();
    let mut cursor = Cursor::default();
    // Phase 1: 4 ranks x micro-batch 2 for 5 steps; phase 2: 3 ranks x 3; phase 3: 1 rank x 5.
    for (dp, mbs, steps) in [(4usize, 2usize, 5usize), (3, 3, 4), (1, 5, 3)] {
        let saved = serde_json::to_string(&cursor).unwrap();
        let restored: Cursor = serde_json::from_str(&saved).unwrap();
        let mut loaders: Vec<DataLoader> =
            (0..dp).map(|r| DataLoader::new(&store, ReaderOptions::default(), r, dp, mbs, restored).unwrap()).collect();
        for _ in 0..steps {
            for l in loaders.iter_mut() {
                let b = l.next_batch().unwrap().unwrap();
                for (r, id) in b.sample_ids.iter().enumerate() {
                    seen.push((*id, b.tokens[r * 32..(r + 1) * 32].to_vec()));
                }
            }
        }
        cursor = loaders[0].cursor();
        assert!(loaders.iter().all(|l| l.cursor() == cursor));
    }
    assert_eq!(cursor.consumed_samples, 40 + 36 + 15);
    for (k, (id, tokens)) in seen.iter().enumerate() {
        assert_eq!(*id, k as u64, "samples must follow the global order without gaps or repeats");
        assert_eq!(tokens[..], reference.sample(*id).0[..32]);
    }
}

/// The shipped recipes parse and resolve to what their seeds say.
#[test]
fn shipped_recipes_resolve() {
    use openseek_mix::recipe::{load, resolve, Overrides};
    let dir = openseek_tests::root().join("recipes");
    let get = |name: &str| {
        let path = dir.join(name);
        let r = load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        resolve(&r, Some(&path), &Overrides::default()).unwrap_or_else(|e| panic!("{name}: {e}")).0
    };
    let base = get("openseek-small-v1-baseline.toml");
    assert_eq!(base.stages.len(), 1);
    assert_eq!(base.stages[0].entries.len(), 84);
    assert_eq!((base.seq_len, base.total_samples()), (4096, 24_576_000));
    assert_eq!(base.stages[0].entries[0].weight, 1.1068);
    assert!(base.stages[0].entries[0].prefix.ends_with("data/OpenSeek-Pretrain-100B/Nemotron-CC-high-actual-actual-high/part_142_text_document"));
    let cur = get("seed001-curriculum.toml");
    assert_eq!(cur.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["foundation", "specialization", "integration"]);
    assert_eq!(cur.stages[0].samples, (5.0e10f64 / 4096.0).ceil() as u64);
    let sel = get("seed003-selection.yaml");
    assert_eq!(sel.stages[0].entries.len(), 18);
    assert_eq!(sel.total_samples(), (14.88e9f64 / 4096.0).ceil() as u64);
    assert_eq!(sel.split, "998,1,1");
    let ratio = get("seed004-ratio-mix.json");
    assert_eq!((ratio.seed, ratio.total_samples(), ratio.stages[0].entries.len()), (233, 7_500_000, 32));
}

/// A curriculum is one continuous index: stage boundaries recorded, each stage blended by its own
/// weights, and a dataset shared by stages continues where the previous stage stopped.
#[test]
fn curriculum_stages_form_one_continuous_index() {
    let work = tempfile::tempdir().unwrap();
    let (meg, _) = megatron_blend(work.path(), json!({}));
    let p: Vec<&str> = meg["prefixes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let recipe = format!(
        "seq_len = 32\nseed = 9\n[[stages]]\nname = \"a\"\nsamples = 500\n[[stages.datasets]]\nprefix = \"{}\"\nweight = 3\n[[stages.datasets]]\nprefix = \"{}\"\nweight = 1\n\
         [[stages]]\nname = \"b\"\ntokens = 16000\n[[stages.datasets]]\nprefix = \"{}\"\nweight = 1\n[[stages.datasets]]\nprefix = \"{}\"\nweight = 1\n",
        p[1], p[5], p[5], p[9]
    );
    let path = work.path().join("cur.toml");
    std::fs::write(&path, recipe).unwrap();
    let out_dir = work.path().join("cur");
    let dry = openseek_tests::run_tool("os-mix", &["--recipe", path.to_str().unwrap(), "--dry-run", "--json"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let plan: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan["datasets"].as_array().unwrap().len(), 3);
    let out = openseek_tests::run_tool("os-mix", &["--recipe", path.to_str().unwrap(), "--output", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = openseek_mix::store::SampleStore::open(&out_dir).unwrap();
    let st = &store.manifest().stages;
    assert_eq!((st[0].start, st[0].end, st[1].start, st[1].end), (0, 500, 500, 1000));
    let mut per_stage = [[0u64; 3]; 2];
    let mut next = [0u64; 3];
    for i in 0..store.len() {
        let s = store.source(i);
        per_stage[(i >= 500) as usize][s.dataset as usize] += 1;
        assert_eq!(s.dataset_sample, next[s.dataset as usize], "sample {i}: each dataset is read in order, across stages");
        next[s.dataset as usize] += 1;
    }
    assert_eq!(per_stage, [[375, 125, 0], [0, 250, 250]]);
    assert_eq!(store.manifest().datasets[1].samples_used, 375);
}
