//! The merge driver: open every input over memory maps, check that their tensors agree (names,
//! shapes, dtypes), plan the output shards, then merge tensor by tensor (only one tensor per
//! input is decoded at a time) and stream the results out; copy config and tokenizer files from
//! the reference checkpoint (the base, else the first model) and write the index and
//! `merge_info.json` last, all through `AtomicOutputs`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::{hash::sha256_file, provenance::Provenance, AtomicOutputs, Failure};
use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::config::{MergePlan, Method};
use crate::dtype::{self, FloatType};
use crate::methods::{self, Sparsify, TaskArithmetic};
use openseek_safetensors::{OutTensor, ShardWriter};

/// Files copied from the reference checkpoint when present.
pub const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
];

pub struct MergeOptions {
    pub out: PathBuf,
    pub max_shard_bytes: u64,
    /// Skip (and report) tensors that are missing or mismatched instead of failing.
    pub allow_partial: bool,
    /// Record SHA-256 of every input file in merge_info.json.
    pub hash_inputs: bool,
    pub provenance: Option<Provenance>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct MergeReport {
    pub merged: Vec<String>,
    /// Non-float tensors copied unchanged from the reference checkpoint.
    pub copied: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub shards: Vec<String>,
    pub output_bytes: u64,
}

#[derive(Serialize)]
struct InputInfo {
    path: String,
    role: &'static str,
    parameters: BTreeMap<String, crate::config::Param>,
    files: Vec<FileInfo>,
}

#[derive(Serialize)]
struct FileInfo {
    name: String,
    bytes: u64,
    sha256: Option<String>,
}

/// Stable 64-bit FNV-1a of a tensor name: the per-tensor part of DARE's seeds.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn seed_for(seed: u64, tensor: &str, model: usize) -> u64 {
    let mut x = seed ^ fnv1a(tensor) ^ ((model as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Merge as `plan` says into `options.out`.
pub fn run_merge(plan: &MergePlan, options: &MergeOptions) -> Result<MergeReport, Failure> {
    plan.validate()?;
    let base = plan.base.as_deref().map(Checkpoint::open).transpose()?;
    let models: Vec<Checkpoint> = plan.models.iter().map(|m| Checkpoint::open(&m.path)).collect::<Result<_, _>>()?;
    let reference = base.as_ref().unwrap_or(&models[0]);
    let compute = plan.dtype.as_deref().map(FloatType::parse).transpose()?;
    let out_type = plan.out_dtype.as_deref().map(FloatType::parse).transpose()?.or(compute);

    // Every checkpoint taking part, base first.
    let all: Vec<&Checkpoint> = base.iter().chain(models.iter()).collect();
    let label = |c: &Checkpoint| c.dir.display().to_string();

    // Check agreement and plan the outputs.
    let mut skipped = Vec::new();
    let mut planned: Vec<(String, Option<FloatType>)> = Vec::new();
    let mut out_tensors = Vec::new();
    for (name, entry) in &reference.tensors {
        let mut problem = None;
        for c in &all[..] {
            match c.tensors.get(name) {
                None => problem = Some(format!("missing from {}", label(c))),
                Some(e) if e.shape != entry.shape => {
                    problem = Some(format!(
                        "shape {:?} in {} but {:?} in {}",
                        entry.shape,
                        label(reference),
                        e.shape,
                        label(c)
                    ))
                }
                Some(e) if e.dtype != entry.dtype && compute.is_none() => {
                    problem = Some(format!(
                        "dtype {:?} in {} but {:?} in {} (set --dtype / dtype: to merge across dtypes)",
                        entry.dtype,
                        label(reference),
                        e.dtype,
                        label(c)
                    ))
                }
                Some(e) if FloatType::from_safetensors(e.dtype).is_none() != FloatType::from_safetensors(entry.dtype).is_none() => {
                    problem = Some(format!("float in one checkpoint, not in {}", label(c)))
                }
                _ => {}
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(reason) = problem {
            if !options.allow_partial {
                return Err(Failure::data(format!(
                    "tensor {name}: {reason}; the checkpoints must have the same tensors (or pass --allow-partial to skip it)"
                )));
            }
            skipped.push(Skipped { name: name.clone(), reason });
            continue;
        }
        let in_type = FloatType::from_safetensors(entry.dtype);
        let (dtype_name, bytes) = match in_type {
            Some(t) => {
                let o = out_type.unwrap_or(t);
                let count: usize = entry.shape.iter().product();
                (o.header_name(), (count * o.size()) as u64)
            }
            None => (safetensors_dtype_name(entry.dtype), (entry.end - entry.start) as u64),
        };
        out_tensors.push(OutTensor { name: name.clone(), dtype: dtype_name, shape: entry.shape.clone(), bytes });
        planned.push((name.clone(), in_type));
    }
    for c in &all[..] {
        for name in c.tensors.keys() {
            if !reference.tensors.contains_key(name) {
                let reason = format!("in {} but not in the reference {}", label(c), label(reference));
                if !options.allow_partial {
                    return Err(Failure::data(format!("tensor {name}: {reason}; pass --allow-partial to skip it")));
                }
                if !skipped.iter().any(|s| &s.name == name) {
                    skipped.push(Skipped { name: name.clone(), reason });
                }
            }
        }
    }
    if planned.is_empty() {
        return Err(Failure::data("no tensor can be merged: every one is missing or mismatched somewhere"));
    }

    prepare_out_dir(&options.out)?;
    let mut outputs = AtomicOutputs::new();
    let output_bytes: u64 = out_tensors.iter().map(|t| t.bytes).sum();
    let mut writer = ShardWriter::new(&options.out, out_tensors, options.max_shard_bytes);
    let mut merged = Vec::new();
    let mut copied = Vec::new();
    for (name, in_type) in &planned {
        let Some(in_type) = *in_type else {
            let e = &reference.tensors[name];
            writer.write_next(&mut outputs, reference.bytes(e))?;
            copied.push(name.clone());
            continue;
        };
        let decode = |c: &Checkpoint| -> Vec<f32> {
            let e = &c.tensors[name];
            let t = FloatType::from_safetensors(e.dtype).expect("checked float");
            let mut v = dtype::decode(t, c.bytes(e));
            // Inputs are cast to the compute dtype first (as mergekit does).
            if let Some(ct) = compute {
                if ct != t && ct.size() < t.size() {
                    v = dtype::decode(ct, &dtype::encode(ct, &v));
                }
            }
            v
        };
        let base_values = base.as_ref().map(decode);
        let inputs: Vec<Vec<f32>> = models.par_iter().map(decode).collect();
        let input_refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let result = merge_one(plan, name, base_values.as_deref(), &input_refs)?;
        let o = out_type.unwrap_or(in_type);
        let finite_inputs = || base_values.iter().map(Vec::as_slice).chain(input_refs.iter().copied()).all(|v| v.par_iter().all(|x| x.is_finite()));
        refuse_non_finite(name, &result, o, finite_inputs)?;
        drop(inputs);
        writer.write_next(&mut outputs, &dtype::encode(o, &result))?;
        merged.push(name.clone());
    }
    let shards = writer.finish(&mut outputs)?;

    // config.json (with the output dtype) and tokenizer files from the reference.
    let config_path = reference.dir.join("config.json");
    if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| Failure::io_at(&config_path, "cannot read", &e))?;
        let mut config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Failure::data(format!("{}: invalid JSON: {e}", config_path.display())))?;
        if let (Some(o), Some(obj)) = (out_type, config.as_object_mut()) {
            obj.insert("torch_dtype".into(), o.torch_name().into());
            if obj.contains_key("dtype") {
                obj.insert("dtype".into(), o.torch_name().into());
            }
        }
        let path = options.out.join("config.json");
        outputs
            .create(&path)?
            .write_all(serde_json::to_string_pretty(&config).unwrap().as_bytes())
            .map_err(|e| Failure::io_at(&path, "cannot write", &e))?;
    }
    for name in COPIED_FILES {
        let src = reference.dir.join(name);
        if src.is_file() {
            let dst = options.out.join(name);
            let mut f = outputs.create(&dst)?;
            let mut r = std::fs::File::open(&src).map_err(|e| Failure::io_at(&src, "cannot open", &e))?;
            std::io::copy(&mut r, &mut f).map_err(|e| Failure::io_at(&dst, "cannot write", &e))?;
        }
    }

    let report = MergeReport { merged, copied, skipped, shards, output_bytes };
    let info = merge_info(plan, options, base.as_ref(), &models, &report, out_type)?;
    let path = options.out.join("merge_info.json");
    outputs
        .create(&path)?
        .write_all(serde_json::to_string_pretty(&info).unwrap().as_bytes())
        .map_err(|e| Failure::io_at(&path, "cannot write", &e))?;
    outputs.commit()?;
    Ok(report)
}

fn safetensors_dtype_name(d: openseek_safetensors::Dtype) -> &'static str {
    use openseek_safetensors::Dtype::*;
    match d {
        BOOL => "BOOL",
        U8 => "U8",
        I8 => "I8",
        I16 => "I16",
        U16 => "U16",
        I32 => "I32",
        U32 => "U32",
        I64 => "I64",
        U64 => "U64",
        F8_E4M3 => "F8_E4M3",
        F8_E5M2 => "F8_E5M2",
        _ => "U8",
    }
}

fn prepare_out_dir(out: &Path) -> Result<(), Failure> {
    openseek_common::output::create_dir(out)?;
    let stale: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| openseek_common::output::cannot_create(out, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.ends_with(".safetensors") || n == "model.safetensors.index.json")
        .collect();
    if !stale.is_empty() {
        return Err(openseek_common::output::cannot_create(
            out,
            format!("it already holds weights ({}); choose an empty output directory or remove them", stale.join(", ")),
        ));
    }
    Ok(())
}

/// A merge that turns finite inputs into infinities or NaN (weights that overflow, a normalising
/// sum of zero) is an error naming the tensor (exit 65), not a model written with them.
/// `finite_inputs` is only asked when the result has non-finite values: non-finite inputs pass
/// through as they are.
fn refuse_non_finite(name: &str, result: &[f32], out: FloatType, finite_inputs: impl FnOnce() -> bool) -> Result<(), Failure> {
    let limit = out.overflow_threshold();
    let bad = |v: &f32| v.is_nan() || v.abs() >= limit;
    let count = result.par_iter().filter(|v| bad(v)).count();
    if count == 0 || !finite_inputs() {
        return Ok(());
    }
    let first = result.iter().position(bad).unwrap_or(0);
    Err(Failure::data(format!(
        "tensor {name}: the merge turns finite inputs into {count} non-finite value(s) in {} (the first at element {first}: {}); \
         nothing was written: check the weights and normalisation",
        out.torch_name(),
        result[first]
    )))
}

/// The merged f32 values of one tensor.
fn merge_one(plan: &MergePlan, name: &str, base: Option<&[f32]>, inputs: &[&[f32]]) -> Result<Vec<f32>, Failure> {
    let n_models = inputs.len();
    let param = |m: usize, key: &str, default: Option<f64>| -> Result<f32, Failure> {
        plan.model_param(m, key, name).or(default).map(|v| v as f32).ok_or_else(|| {
            Failure::config(format!(
                "{}: no \"{key}\" for {} (tensor {name}); give it per model or under parameters",
                plan.method_name,
                plan.models[m].path.display()
            ))
        })
    };
    Ok(match plan.method {
        Method::Linear => {
            let weights: Vec<f32> = (0..n_models).map(|m| param(m, "weight", Some(1.0))).collect::<Result<_, _>>()?;
            let normalize = plan.global_bool("normalize", name, true);
            let sum: f32 = weights.iter().sum();
            if normalize && !(sum > 0.0 && sum.is_finite()) {
                return Err(Failure::config(format!(
                    "{}: the weights {weights:?} for tensor {name} sum to {sum}; normalising divides by the sum, which must be positive \
                     (or set normalize: false / --normalize false)",
                    plan.method_name
                )));
            }
            methods::linear(inputs, &weights, normalize)
        }
        Method::Ema => {
            let decay = plan.global_param("decay", name).ok_or_else(|| Failure::config("ema needs a decay (--decay or parameters: {decay: 0.9})"))?;
            if !(0.0..1.0).contains(&decay) {
                return Err(Failure::config(format!("ema decay must be in [0, 1), got {decay}")));
            }
            methods::linear(inputs, &methods::ema_weights(n_models, decay), false)
        }
        Method::Slerp => {
            let t = plan.global_param("t", name).ok_or_else(|| Failure::config(format!("slerp needs t (tensor {name})")))?;
            methods::slerp(t as f32, base.expect("validated"), inputs[0])
        }
        Method::TaskArithmetic | Method::Ties | Method::DareLinear | Method::DareTies => {
            let (sparsify, consensus, normalize, rescale) = match plan.method {
                Method::TaskArithmetic => (Sparsify::None, false, false, false),
                Method::Ties => (Sparsify::Magnitude, true, true, false),
                Method::DareLinear => (Sparsify::Random, false, false, true),
                _ => (Sparsify::Random, true, false, true),
            };
            let weights: Vec<f32> = (0..n_models).map(|m| param(m, "weight", None)).collect::<Result<_, _>>()?;
            let densities: Vec<f32> = (0..n_models).map(|m| param(m, "density", Some(1.0))).collect::<Result<_, _>>()?;
            let seeds: Vec<u64> = (0..n_models).map(|m| seed_for(plan.seed, name, m)).collect();
            let p = TaskArithmetic {
                sparsify,
                consensus,
                normalize: plan.global_bool("normalize", name, normalize),
                rescale: plan.global_bool("rescale", name, rescale),
                lambda: plan.global_param("lambda", name).unwrap_or(1.0) as f32,
                weights: &weights,
                densities: &densities,
                seeds: &seeds,
            };
            methods::task_arithmetic(base.expect("validated"), inputs, &p)
        }
    })
}

fn file_infos(c: &Checkpoint, hash: bool) -> Result<Vec<FileInfo>, Failure> {
    let mut paths = c.files.clone();
    let config = c.dir.join("config.json");
    if config.is_file() {
        paths.push(config);
    }
    paths
        .par_iter()
        .map(|p| {
            let bytes = std::fs::metadata(p).map_err(|e| Failure::io_at(p, "cannot stat", &e))?.len();
            let sha256 = if hash { Some(sha256_file(p).map_err(|e| Failure::io_at(p, "cannot hash", &e))?) } else { None };
            Ok(FileInfo { name: p.file_name().unwrap().to_string_lossy().into_owned(), bytes, sha256 })
        })
        .collect()
}

fn merge_info(
    plan: &MergePlan,
    options: &MergeOptions,
    base: Option<&Checkpoint>,
    models: &[Checkpoint],
    report: &MergeReport,
    out_type: Option<FloatType>,
) -> Result<serde_json::Value, Failure> {
    let mut inputs = Vec::new();
    if let Some(b) = base {
        inputs.push(InputInfo {
            path: b.dir.display().to_string(),
            role: "base",
            parameters: BTreeMap::new(),
            files: file_infos(b, options.hash_inputs)?,
        });
    }
    for (spec, c) in plan.models.iter().zip(models) {
        inputs.push(InputInfo {
            path: c.dir.display().to_string(),
            role: "model",
            parameters: spec.parameters.clone(),
            files: file_infos(c, options.hash_inputs)?,
        });
    }
    Ok(serde_json::json!({
        "method": plan.method_name,
        "kernel": plan.method,
        "parameters": plan.parameters,
        "seed": plan.seed,
        "dtype": plan.dtype,
        "out_dtype": out_type.map(|t| t.torch_name()),
        "inputs": inputs,
        "shards": report.shards,
        "output_bytes": report.output_bytes,
        "merged_keys": report.merged,
        "copied_keys": report.copied,
        "skipped_keys": report.skipped,
        "provenance": options.provenance,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_results_from_finite_inputs_are_refused() {
        let e = refuse_non_finite("w", &[1.0, f32::INFINITY, f32::NAN], FloatType::F32, || true).unwrap_err();
        assert_eq!(e.code, openseek_common::ExitCode::DataErr);
        assert!(e.message.contains("tensor w") && e.message.contains("2 non-finite value(s) in float32 (the first at element 1: inf)"), "{}", e.message);
        refuse_non_finite("w", &[1.0, f32::INFINITY], FloatType::F32, || false).unwrap();
        // Finite in f32, infinite once stored: f16 past 65519, bf16 past its largest value's half ulp.
        assert!(refuse_non_finite("w", &[65519.0], FloatType::F16, || true).is_ok());
        assert!(refuse_non_finite("w", &[-65520.0], FloatType::F16, || true).is_err());
        assert!(refuse_non_finite("w", &[3.0e38], FloatType::BF16, || true).is_ok());
        assert!(refuse_non_finite("w", &[f32::MAX], FloatType::BF16, || true).is_err());
        assert!(refuse_non_finite("w", &[f32::MAX], FloatType::F32, || true).is_ok());
    }
}
