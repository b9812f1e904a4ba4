//! The conversion: open the checkpoint, refuse unknown keys, plan every HF tensor (name, dtype,
//! shape checked against the config), then stream: one whole Megatron tensor at a time is read
//! from its ranks' shards, cut into its HF tensors and written into sharded safetensors, so
//! memory holds about one tensor, never every rank's shards. All outputs are atomic; the index
//! and `megatron2hf_info.json` (what was read, mapped and ignored, with the tool's provenance) come last.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::{provenance::Provenance, AtomicOutputs, Failure};
use openseek_safetensors::{OutTensor, ShardWriter};
use serde::Serialize;

use crate::checkpoint::{iteration_dir, Checkpoint, Entry};
use crate::hf::{self, Shape};
use crate::mapping::{self, Part};

pub struct Options {
    /// Megatron's `--save` directory (or one iteration directory).
    pub load: PathBuf,
    pub iteration: Option<String>,
    pub out: PathBuf,
    /// The true vocabulary size (Megatron's embedding is padded past it).
    pub vocab_size: Option<usize>,
    pub max_shard_bytes: u64,
    /// Convert what maps even if some model keys are unknown (they are listed in the info file).
    pub skip_unknown: bool,
    /// Tokenizer files to copy beside the weights.
    pub tokenizer: Option<PathBuf>,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub source: PathBuf,
    pub format: &'static str,
    pub iteration: Option<u64>,
    pub tensor_parallel: usize,
    pub pipeline_parallel: usize,
    pub expert_parallel: usize,
    pub padded_vocab: usize,
    pub vocab_size: usize,
    pub megatron_tensors: usize,
    pub hf_tensors: usize,
    pub total_bytes: u64,
    pub shards: Vec<String>,
    pub ignored: BTreeMap<String, usize>,
    pub unknown: Vec<String>,
    pub provenance: Provenance,
}

struct Planned {
    entry: usize,
    part: Part,
    out: OutTensor,
}

/// Natural HF order: embedding, layers by number (experts by number), final norm, head.
fn order_key(name: &str) -> (u8, usize, String, usize, String) {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let (l, r) = rest.split_once('.').unwrap_or((rest, ""));
        let l = l.parse().unwrap_or(usize::MAX);
        if let Some(e) = r.strip_prefix("mlp.experts.") {
            let (n, w) = e.split_once('.').unwrap_or((e, ""));
            return (1, l, "mlp.experts.".into(), n.parse().unwrap_or(usize::MAX), w.to_string());
        }
        return (1, l, r.to_string(), 0, String::new());
    }
    let group = match name {
        "model.embed_tokens.weight" => 0,
        "model.norm.weight" => 2,
        _ => 3,
    };
    (group, 0, name.to_string(), 0, String::new())
}

fn part_shape(e: &Entry, part: Part, vocab: usize) -> Result<Vec<usize>, Failure> {
    let mut s = e.shape.clone();
    match part {
        Part::Whole => {}
        Part::Gate | Part::Up => {
            if !s[0].is_multiple_of(2) {
                return Err(Failure::data(format!("{}: fused gate/up tensor with an odd number of rows {:?}", e.key, e.shape)));
            }
            s[0] /= 2;
        }
        Part::Vocab => {
            if vocab > s[0] {
                return Err(Failure::usage(format!("--vocab-size {vocab} is larger than the checkpoint's {} embedding rows", s[0])));
            }
            s[0] = vocab;
        }
    }
    Ok(s)
}

/// The bytes of one part of a whole row-major tensor.
fn part_bytes(whole: &[u8], part: Part, rows: usize, row_bytes: usize, vocab: usize) -> &[u8] {
    match part {
        Part::Whole => whole,
        Part::Gate => &whole[..rows / 2 * row_bytes],
        Part::Up => &whole[rows / 2 * row_bytes..],
        Part::Vocab => &whole[..vocab * row_bytes],
    }
}

fn copy_tokenizer(from: &Path, out: &Path, outputs: &mut AtomicOutputs) -> Result<Vec<String>, Failure> {
    let mut copied = Vec::new();
    let rd = std::fs::read_dir(from).map_err(|e| Failure::io_at(from, "cannot list tokenizer directory", &e))?;
    let mut names: Vec<_> = rd.flatten().filter(|e| e.path().is_file()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in names {
        let weights = n.ends_with(".safetensors") || n.ends_with(".bin") || n.ends_with(".pt") || n.starts_with("model.safetensors");
        if weights || n == "config.json" || n == "generation_config.json" || n.starts_with('.') {
            continue;
        }
        let data = std::fs::read(from.join(&n)).map_err(|e| Failure::io_at(&from.join(&n), "cannot read", &e))?;
        let dst = out.join(&n);
        outputs.create(&dst)?.write_all(&data).map_err(|e| Failure::io_at(&dst, "cannot write", &e))?;
        copied.push(n);
    }
    Ok(copied)
}

/// Open the checkpoint in `load` (see [`iteration_dir`]), recognising its format: `torch_dist`
/// where the iteration directory holds a `.metadata`, else the legacy `torch` format.
pub fn open(load: &Path, iteration: Option<&str>) -> Result<Checkpoint, Failure> {
    let (dir, it) = iteration_dir(load, iteration)?;
    let mut ck = if dir.join(".metadata").is_file() { crate::dcp::open(&dir)? } else { crate::legacy::open(&dir)? };
    ck.iteration = it;
    Ok(ck)
}

/// Convert. `progress` is told each HF tensor written (name, bytes so far, total bytes); an error
/// it returns (a stop signal) ends the conversion with nothing written.
pub fn convert(
    opts: &Options,
    provenance: Provenance,
    mut progress: impl FnMut(&str, u64, u64) -> Result<(), Failure>,
) -> Result<Report, Failure> {
    let ck = open(&opts.load, opts.iteration.as_deref())?;
    if !ck.unknown.is_empty() && !opts.skip_unknown {
        let list: Vec<String> = ck.unknown.iter().take(10).map(|(k, f)| format!("{}: {k}", f.display())).collect();
        return Err(Failure::data(format!(
            "{} checkpoint key(s) are neither converted nor known to be ignorable:\n  {}{}\n(--skip-unknown converts the rest and lists them in megatron2hf_info.json)",
            ck.unknown.len(),
            list.join("\n  "),
            if ck.unknown.len() > 10 { "\n  ..." } else { "" }
        )));
    }
    let embedding = ck
        .entries
        .iter()
        .find(|e| e.key == "embedding.word_embeddings.weight")
        .ok_or_else(|| Failure::data(format!("{}: no embedding.word_embeddings.weight", ck.dir.display())))?;
    let padded = embedding.shape[0];
    let vocab = match (opts.vocab_size, ck.args.get("vocab_size").and_then(|v| v.as_int())) {
        (Some(v), _) => v,
        (None, Some(v)) if v > 0 => v as usize,
        _ => {
            return Err(Failure::usage(format!(
                "{}: the true vocabulary size is not in the checkpoint (its embedding has {padded} rows, padded by Megatron): pass --vocab-size",
                ck.dir.display()
            )))
        }
    };
    let shape = Shape::from_checkpoint(&ck, vocab)?;
    let torch_dtype = embedding.dtype.torch_name();

    // Plan.
    let mut plan = Vec::new();
    for (i, e) in ck.entries.iter().enumerate() {
        let model = mapping::Model { tied: shape.tied, layers: shape.layers, mtp: shape.mtp };
        let mapping::Target::Hf(parts) = mapping::target(&e.key, &model) else { continue };
        for (name, part) in parts {
            let s = part_shape(e, part, vocab)?;
            let want = shape.expected(&name).ok_or_else(|| {
                Failure::data(format!("{} (from {}): not a tensor of the model args describe", e.key, files_of(e)))
            })?;
            if s != want {
                return Err(Failure::data(format!(
                    "{} (from {}): merged shape {s:?} for {name}, but the args give {want:?}",
                    e.key,
                    files_of(e)
                )));
            }
            let bytes = (s.iter().product::<usize>() * e.dtype.size()) as u64;
            plan.push(Planned { entry: i, part, out: OutTensor { name, dtype: e.dtype.safetensors_name(), shape: s, bytes } });
        }
    }
    plan.sort_by_key(|p| order_key(&p.out.name));
    let missing: Vec<String> = expected_names(&shape).into_iter().filter(|n| !plan.iter().any(|p| &p.out.name == n)).collect();
    if !missing.is_empty() {
        return Err(Failure::data(format!(
            "{}: the checkpoint lacks {} tensor(s) the model needs, e.g. {}",
            ck.dir.display(),
            missing.len(),
            missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        )));
    }

    // Output directory.
    openseek_common::output::create_dir(&opts.out)?;
    if opts.out.join("model.safetensors.index.json").exists() || opts.out.join("model.safetensors").exists() {
        return Err(openseek_common::output::cannot_create(&opts.out, "it already holds a checkpoint; choose an empty directory"));
    }

    // Stream.
    let mut outputs = AtomicOutputs::new();
    let total: u64 = plan.iter().map(|p| p.out.bytes).sum();
    let mut writer = ShardWriter::new(&opts.out, plan.iter().map(|p| p.out.clone()).collect(), opts.max_shard_bytes);
    let mut cache: Option<(usize, Vec<u8>)> = None;
    let mut done = 0u64;
    for p in &plan {
        if cache.as_ref().map(|(i, _)| *i) != Some(p.entry) {
            drop(cache.take()); // free the previous tensor before reading the next
            cache = Some((p.entry, ck.read(&ck.entries[p.entry])?));
        }
        let e = &ck.entries[p.entry];
        let whole = &cache.as_ref().unwrap().1;
        let row_bytes = e.shape[1..].iter().product::<usize>() * e.dtype.size();
        writer.write_next(&mut outputs, part_bytes(whole, p.part, e.shape[0], row_bytes, vocab))?;
        done += p.out.bytes;
        progress(&p.out.name, done, total)?;
    }
    drop(cache);
    outputs.write_json(&opts.out.join("config.json"), &hf::config_json(&ck, &shape, torch_dtype, opts.bos_token_id, opts.eos_token_id))?;
    outputs.write_json(&opts.out.join("generation_config.json"), &hf::generation_config_json(opts.bos_token_id, opts.eos_token_id))?;
    if let Some(t) = &opts.tokenizer {
        copy_tokenizer(t, &opts.out, &mut outputs)?;
    }
    let shards = writer.finish(&mut outputs)?;
    let report = Report {
        source: ck.dir.clone(),
        format: ck.format.name(),
        iteration: ck.iteration,
        tensor_parallel: ck.parallel.0,
        pipeline_parallel: ck.parallel.1,
        expert_parallel: ck.parallel.2,
        padded_vocab: padded,
        vocab_size: vocab,
        megatron_tensors: ck.entries.len(),
        hf_tensors: plan.len(),
        total_bytes: total,
        shards,
        ignored: ck.ignored.clone(),
        unknown: ck.unknown.iter().map(|(k, f)| format!("{}: {k}", f.display())).collect(),
        provenance,
    };
    outputs.write_json(&opts.out.join("megatron2hf_info.json"), &report)?;
    outputs.commit()?;
    Ok(report)
}

fn files_of(e: &Entry) -> String {
    e.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Every tensor name the HF model has under `s`: the main model, then the MTP layers with the
/// release's copies of the embedding and head.
fn expected_names(s: &Shape) -> Vec<String> {
    let mut v = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if !s.tied {
        v.push("lm_head.weight".into());
    }
    for l in 0..s.layers + s.mtp {
        let p = format!("model.layers.{l}.");
        let mut names = vec!["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_a_layernorm.weight", "self_attn.kv_b_proj.weight", "self_attn.o_proj.weight"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        if s.q_lora_rank.is_some() {
            names.extend(["self_attn.q_a_proj.weight", "self_attn.q_a_layernorm.weight", "self_attn.q_b_proj.weight"].map(String::from));
        } else {
            names.push("self_attn.q_proj.weight".into());
        }
        if l < s.first_k_dense || s.first_k_dense >= s.layers {
            names.extend(["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"].map(String::from));
        } else {
            names.extend(["mlp.gate.weight", "mlp.gate.e_score_correction_bias"].map(String::from));
            if s.shared_intermediate > 0 {
                names.extend(["mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight", "mlp.shared_experts.down_proj.weight"].map(String::from));
            }
            for e in 0..s.experts {
                names.extend(["gate_proj", "up_proj", "down_proj"].map(|w| format!("mlp.experts.{e}.{w}.weight")));
            }
        }
        if l >= s.layers {
            names.extend(["enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "embed_tokens.weight", "shared_head.head.weight"].map(String::from));
        }
        v.extend(names.into_iter().map(|n| format!("{p}{n}")));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_order_is_numeric() {
        let mut names = vec!["lm_head.weight", "model.layers.10.input_layernorm.weight", "model.layers.2.mlp.experts.10.up_proj.weight", "model.layers.2.mlp.experts.9.up_proj.weight", "model.norm.weight", "model.embed_tokens.weight"];
        names.sort_by_key(|n| order_key(n));
        assert_eq!(
            names,
            ["model.embed_tokens.weight", "model.layers.2.mlp.experts.9.up_proj.weight", "model.layers.2.mlp.experts.10.up_proj.weight", "model.layers.10.input_layernorm.weight", "model.norm.weight", "lm_head.weight"]
        );
    }
}
