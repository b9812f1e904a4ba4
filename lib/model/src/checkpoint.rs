//! Hugging Face checkpoints in and out: `model.safetensors` or shards with
//! `model.safetensors.index.json`, bf16/fp16/fp32, routed experts stored one tensor per expert
//! (OpenSeek release, older transformers) or fused (transformers 5). Names and shapes are all
//! checked before any data is read; one error lists every missing, unexpected and mis-shaped tensor.
//! Saving writes sharded safetensors + index, config.json and generation_config.json, experts per expert.
//! Multi-token-prediction depths (`crate::mtp`) are read and written in DeepSeek-V3's release layout.

use crate::config::Config;
use crate::model::DeepseekV3;
use crate::weights::Weights;
use crate::mtp;
use crate::shapes::{self, expected_shapes};
use crate::safetensors::{self, read_tensor, SafetensorsFile};
use openseek_safetensors::ShardWriter;
use openseek_common::{AtomicOutputs, Failure};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The copies of the shared embedding and head that DeepSeek-V3's release stores with each MTP
/// depth (`{prefix}.embed_tokens.weight`, `{prefix}.shared_head.head.weight`; vLLM and SGLang load
/// their MTP draft models from them). The model keeps one embedding and one head; `save` writes
/// these copies of them, `load` checks them against the main ones.
pub fn shared_copies(cfg: &Config) -> Vec<(String, &'static str)> {
    let head = if cfg.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    (0..cfg.num_nextn_predict_layers as usize)
        .flat_map(|k| {
            let p = shapes::mtp_prefix(cfg, k);
            [(format!("{p}.embed_tokens.weight"), "model.embed_tokens.weight"), (format!("{p}.shared_head.head.weight"), head)]
        })
        .collect()
}

/// The stored layout of one fused expert tensor: per expert, `experts.{e}.{proj}.weight` with shape `shape`.
fn per_expert_names(fused: &str, cfg: &Config) -> Option<Vec<(String, Vec<i64>)>> {
    let (prefix, kind) = fused.rsplit_once('.')?;
    if !prefix.ends_with("mlp.experts") {
        return None;
    }
    let (h, inter) = (cfg.hidden_size, cfg.moe_intermediate_size);
    let projs: &[(&str, [i64; 2])] = match kind {
        "gate_up_proj" => &[("gate_proj", [inter, h]), ("up_proj", [inter, h])],
        "down_proj" => &[("down_proj", [h, inter])],
        _ => return None,
    };
    let mut out = vec![];
    for e in 0..cfg.n_routed_experts {
        for (proj, shape) in projs {
            out.push((format!("{prefix}.{e}.{proj}.weight"), shape.to_vec()));
        }
    }
    Some(out)
}

/// Where every stored tensor is: one file, or shards listed by an index.
pub struct Stored {
    files: Vec<SafetensorsFile>,
    /// name -> file number.
    pub location: BTreeMap<String, usize>,
}

impl Stored {
    pub fn open(dir: &Path) -> Result<Stored, Failure> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut files = vec![];
        let mut location = BTreeMap::new();
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Failure::io_at(&index, "cannot read", &e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| Failure::data(format!("{}: {e}", index.display())))?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| Failure::data(format!("{}: no weight_map object", index.display())))?;
            let mut shard_no: BTreeMap<String, usize> = BTreeMap::new();
            for (name, shard) in map {
                let shard = shard
                    .as_str()
                    .ok_or_else(|| Failure::data(format!("{}: weight_map[{name}] is not a file name", index.display())))?;
                if !shard_no.contains_key(shard) {
                    shard_no.insert(shard.to_string(), files.len());
                    files.push(SafetensorsFile::open(&dir.join(shard))?);
                }
                let n = shard_no[shard];
                if !files[n].tensors.contains_key(name) {
                    return Err(Failure::data(format!("{}: lists {name} in {shard}, which does not hold it", index.display())));
                }
                location.insert(name.clone(), n);
            }
        } else if single.is_file() {
            let f = SafetensorsFile::open(&single)?;
            for name in f.tensors.keys() {
                location.insert(name.clone(), 0);
            }
            files.push(f);
        } else {
            return Err(Failure::no_input(format!(
                "{}: no model.safetensors or model.safetensors.index.json; is this a Hugging Face model directory?",
                dir.display()
            )));
        }
        Ok(Stored { files, location })
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.location.get(name).map(|&n| self.files[n].tensors[name].shape.iter().map(|&d| d as i64).collect())
    }

    fn read(&self, name: &str, kind: Kind) -> Result<Tensor, Failure> {
        read_tensor(&self.files[self.location[name]], name, kind)
    }
}

/// How a model tensor is found in a checkpoint.
enum Source {
    Direct(String),
    /// Per-expert tensors, stacked along a new first dim (gate_up: gate and up concatenated per expert).
    PerExpert(Vec<Vec<String>>),
}

/// What `plan` found: a source for every model tensor to read, and whether the checkpoint lacks
/// every tensor of the MTP depths its config declares (they are then initialised, see `load`).
struct Planned {
    sources: Vec<(String, Source)>,
    mtp_absent: bool,
}

/// Match the checkpoint against the config: a source for every model tensor, or one error that
/// lists every problem (names, and shapes where they matter).
fn plan(cfg: &Config, stored: &Stored, dir: &Path) -> Result<Planned, Failure> {
    let mut plan = vec![];
    let mut used: BTreeSet<String> = BTreeSet::new();
    let (mut missing, mut misshaped) = (vec![], vec![]);
    let copies = shared_copies(cfg);
    let is_copy = |name: &str| copies.iter().any(|(c, _)| c == name);
    // A checkpoint without any tensor of the declared MTP depths (a release without them, or a
    // config that declares them for a run to train): they are initialised rather than missing.
    let mtp_absent = cfg.num_nextn_predict_layers > 0 && !stored.location.keys().any(|n| shapes::is_mtp_name(cfg, n) && !is_copy(n));
    let mut check = |name: &str, shape: &[i64], used: &mut BTreeSet<String>| match stored.shape(name) {
        None => missing.push(format!("{name} {shape:?}")),
        Some(s) => {
            used.insert(name.to_string());
            if s.as_slice() != shape {
                misshaped.push(format!("{name} is {s:?}, expected {shape:?}"));
            }
        }
    };
    for (name, shape) in expected_shapes(cfg) {
        if mtp_absent && shapes::is_mtp_name(cfg, &name) {
            continue;
        }
        match per_expert_names(&name, cfg) {
            // Fused in the checkpoint (transformers 5), or absent in both layouts: check the fused name.
            Some(parts) if stored.shape(&name).is_none() && parts.iter().any(|(n, _)| stored.shape(n).is_some()) => {
                for (n, s) in &parts {
                    check(n, s, &mut used);
                }
                let per = if name.ends_with("gate_up_proj") { 2 } else { 1 };
                let groups = parts.chunks(per).map(|c| c.iter().map(|(n, _)| n.clone()).collect()).collect();
                plan.push((name, Source::PerExpert(groups)));
            }
            _ => {
                check(&name, &shape, &mut used);
                plan.push((name.clone(), Source::Direct(name)));
            }
        }
    }
    // Tolerated extras, shape-checked: a stored head of a tied model, and the MTP depths' copies of
    // the shared embedding and head.
    let full = [cfg.vocab_size, cfg.hidden_size];
    for name in copies.iter().map(|(c, _)| c.as_str()).chain(cfg.tie_word_embeddings.then_some("lm_head.weight")) {
        if let Some(s) = stored.shape(name) {
            used.insert(name.to_string());
            if *s != full {
                misshaped.push(format!("{name} is {s:?}, expected {full:?}"));
            }
        }
    }
    let unexpected: Vec<String> = stored.location.keys().filter(|n| !used.contains(*n)).map(|n| format!("{n} {:?}", stored.shape(n).unwrap())).collect();
    let bad_dtype: Vec<String> = stored
        .location
        .iter()
        .filter(|(n, _)| used.contains(*n))
        .filter_map(|(n, &f)| {
            let d = stored.files[f].tensors[n].dtype;
            safetensors::kind_of(d).is_none().then(|| format!("{n} is {d}"))
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() && bad_dtype.is_empty() {
        return Ok(Planned { sources: plan, mtp_absent });
    }
    let past_main = |item: &String| shapes::layer_index(item).is_some_and(|i| i >= cfg.num_hidden_layers);
    let mtp_involved = missing.iter().chain(&unexpected).chain(&misshaped).any(past_main);
    let mut msg = format!("{}: the checkpoint does not fit its config.json", dir.display());
    let mut section = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            msg.push_str(&format!("\n  {} {title}:", items.len()));
            for i in items {
                msg.push_str(&format!("\n    {i}"));
            }
        }
    };
    section("missing", missing);
    section("unexpected", unexpected);
    section("mis-shaped", misshaped);
    section("of an unsupported dtype (expected F32, BF16, F16 or F64)", bad_dtype);
    msg.push_str("\n  check that config.json belongs to these weights (layers, experts, q_lora_rank, tie_word_embeddings)");
    if mtp_involved {
        msg.push_str(&format!(
            "; layers from {} on are multi-token-prediction layers only as far as num_nextn_predict_layers ({}) declares them",
            cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        ));
    }
    Err(Failure::data(msg))
}

/// The seed of MTP weights initialised at load time.
pub const MTP_INIT_SEED: u64 = 0x6d7470;

/// Load `DIR` (config.json + safetensors) onto `device`, weights in `kind`
/// (the router's correction bias stays fp32). MTP depths the config declares are loaded with the
/// rest; where the checkpoint holds none of their tensors they are initialised as megatron-core
/// does (`mtp::megatron_init`, std `initializer_range`, a fixed seed so every load agrees) and a
/// warning says so. Stored copies of the shared embedding and head that differ from the main
/// ones are reported and not used (the MTP depths share the main model's).
pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<DeepseekV3, Failure> {
    let mut cfg = Config::load(dir)?;
    let stored = Stored::open(dir)?;
    let Planned { sources: mut plan, mtp_absent } = plan(&cfg, &stored, dir)?;
    // A tied config with a stored head that differs from the embeddings: transformers keeps
    // the stored head (and warns), so do the same.
    if cfg.tie_word_embeddings && stored.location.contains_key("lm_head.weight") {
        let head = stored.read("lm_head.weight", Kind::Float)?;
        let embed = stored.read("model.embed_tokens.weight", Kind::Float)?;
        if !head.equal(&embed) {
            eprintln!(
                "warning: {}: config.json ties the embeddings, yet the checkpoint holds a different lm_head.weight; using it as an untied head, as transformers does",
                dir.display()
            );
            cfg.tie_word_embeddings = false;
            cfg.raw["tie_word_embeddings"] = json!(false);
            plan.push(("lm_head.weight".to_string(), Source::Direct("lm_head.weight".to_string())));
        }
    }
    for (copy, main) in shared_copies(&cfg) {
        if stored.location.contains_key(&copy) && !stored.read(&copy, Kind::Float)?.equal(&stored.read(main, Kind::Float)?) {
            eprintln!(
                "warning: {}: {copy} differs from {main}; the MTP layers share the main model's embedding and head, so it is not used (a save writes a copy of {main} in its place)",
                dir.display()
            );
        }
    }
    let mut weights = Weights::new();
    for (name, source) in plan {
        let k = if name.ends_with("e_score_correction_bias") { Kind::Float } else { kind };
        let t = match source {
            Source::Direct(n) => stored.read(&n, k)?,
            Source::PerExpert(groups) => {
                let experts = groups
                    .iter()
                    .map(|g| Ok(Tensor::cat(&g.iter().map(|n| stored.read(n, k)).collect::<Result<Vec<_>, Failure>>()?, 0)))
                    .collect::<Result<Vec<_>, Failure>>()?;
                Tensor::stack(&experts, 0)
            }
        };
        weights.insert(name, t.to_device(device));
    }
    if mtp_absent {
        eprintln!(
            "warning: {}: config.json declares {} multi-token-prediction layer(s) (num_nextn_predict_layers) but the checkpoint holds none of their weights; initialising them as megatron-core does (normal(0, {}), output projections scaled by 1/sqrt(2 x {} layers), norms one)",
            dir.display(),
            cfg.num_nextn_predict_layers,
            cfg.initializer_range,
            cfg.num_hidden_layers
        );
        weights.extend(mtp::megatron_init(&cfg, cfg.initializer_range, MTP_INIT_SEED, kind, device));
    }
    Ok(DeepseekV3::from_weights(cfg, weights))
}

/// The state dict with experts split one tensor per expert (the release layout).
pub fn per_expert_state(model: &DeepseekV3) -> Vec<(String, Tensor)> {
    let cfg = &model.config;
    let mut out = vec![];
    for (name, t) in model.named_tensors() {
        match per_expert_names(&name, cfg) {
            None => out.push((name, t)),
            Some(parts) => {
                let per = if name.ends_with("gate_up_proj") { 2 } else { 1 };
                for (e, chunk) in parts.chunks(per).enumerate() {
                    let expert = t.get(e as i64);
                    let pieces = expert.chunk(per as i64, 0);
                    for ((n, _), piece) in chunk.iter().zip(pieces) {
                        out.push((n.clone(), piece.contiguous()));
                    }
                }
            }
        }
    }
    out
}

/// Save as a HF model directory: shards of at most `max_shard_bytes`, index, config.json,
/// generation_config.json. All files appear together (atomic), the index last. MTP depths are
/// written with the copies of the shared embedding and head their release layout has (`shared_copies`).
pub fn save(model: &DeepseekV3, dir: &Path, kind: Kind, max_shard_bytes: usize) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::io_at(dir, "cannot create the output directory", &e))?;
    let mut state = per_expert_state(model);
    let named: BTreeMap<String, Tensor> = model.named_tensors().into_iter().collect();
    for (copy, main) in shared_copies(&model.config) {
        state.push((copy, named[main].shallow_clone()));
    }
    let tensors: Vec<(String, Tensor)> = state
        .into_iter()
        .map(|(n, t)| {
            let k = if n.ends_with("e_score_correction_bias") { Kind::Float } else { kind };
            (n, t.to_kind(k))
        })
        .collect();
    let plan = tensors.iter().map(|(n, t)| safetensors::out_tensor(n, t)).collect::<Result<Vec<_>, _>>()?;
    let mut out = AtomicOutputs::new();
    let mut writer = ShardWriter::new(dir, plan, max_shard_bytes as u64);
    for (_, t) in &tensors {
        writer.write_next(&mut out, &safetensors::tensor_bytes(t)?)?;
    }
    let cfg = &model.config;
    let mut config = cfg.raw.clone();
    config["torch_dtype"] = json!(match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    });
    config["dtype"] = config["torch_dtype"].clone();
    let mut generation = json!({"_from_model_config": true});
    if let Some(b) = cfg.bos_token_id {
        generation["bos_token_id"] = json!(b);
    }
    match cfg.eos_token_ids.as_slice() {
        [] => {}
        [e] => generation["eos_token_id"] = json!(e),
        many => generation["eos_token_id"] = json!(many),
    }
    if let Some(p) = cfg.pad_token_id {
        generation["pad_token_id"] = json!(p);
    }
    out.write_json(&dir.join("config.json"), &config)?;
    out.write_json(&dir.join("generation_config.json"), &generation)?;
    writer.finish(&mut out)?;
    out.commit()
}
