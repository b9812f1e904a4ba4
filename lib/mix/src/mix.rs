//! Building a mix: a `MixSpec` planned against the shards' document lengths (what the dry run
//! reports), then built into a sample store: one Megatron GPT index per dataset (in parallel) and
//! one continuous blended index across the stages of a curriculum.
//!
//! A single-stage mix is Megatron's BlendedDataset exactly. In a curriculum each stage is blended
//! like a Megatron blend of its own weights and budget; a dataset that appears in several stages
//! has one GPT index, asked for the sum of the stages' requests, and each stage continues where
//! the previous one left off in that dataset (no sample is repeated across stages before an epoch
//! ends).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, Failure};
use openseek_shards::indexed::IndexedDataset;
use rayon::prelude::*;

use crate::array::{write_npy, IndexArray};
use crate::blend;
use crate::gpt::{self, GptParams};
use crate::recipe::MixSpec;
use crate::store::{self, DatasetRecord, Manifest, StageRecord};

pub const SPLIT_NAMES: [&str; 3] = ["train", "valid", "test"];

/// One dataset of the mix with its shard facts.
pub struct PlannedDataset {
    pub label: String,
    pub prefix: PathBuf,
    pub sequences: u64,
    pub range: std::ops::Range<u32>,
    pub tokens_available: u64,
    pub samples_requested: u64,
    pub samples_used: u64,
    pub epochs: u32,
    pub separate_final_epoch: bool,
    /// Samples the GPT index will hold.
    pub samples_built: u64,
}

pub struct MixPlan {
    pub spec: MixSpec,
    pub split_index: usize,
    pub datasets: Vec<PlannedDataset>,
    pub stages: Vec<StageRecord>,
    /// Blended (dataset, sample in dataset), all stages back to back.
    pub dataset_index: Vec<i16>,
    pub dataset_sample_index: Vec<i64>,
    lengths: Vec<Vec<i32>>,
}

impl MixPlan {
    pub fn num_samples(&self) -> u64 {
        self.dataset_index.len() as u64
    }
}

fn open_shard(prefix: &Path, label: &str, where_: &str) -> Result<IndexedDataset, Failure> {
    IndexedDataset::open(prefix).map_err(|e| e.context(format!("{where_} ({label})")))
}

/// Plan the mix: open every shard, split its documents, blend every stage, and check that no
/// dataset is asked for more samples than its index will hold.
/// `surplus` is Megatron's `mid_level_dataset_surplus` (`DEFAULT_SURPLUS`; 0 for a single
/// unweighted dataset, which Megatron builds without a blend).
pub fn plan(spec: MixSpec, split_index: usize, surplus: f64) -> Result<MixPlan, Failure> {
    // Global datasets: the k-th occurrence of a prefix in a stage is the same dataset in every stage.
    let mut keys: HashMap<(PathBuf, usize), usize> = HashMap::new();
    let mut datasets: Vec<PlannedDataset> = Vec::new();
    let mut lengths: Vec<Vec<i32>> = Vec::new();
    let mut stage_maps: Vec<Vec<usize>> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for (k, stage) in spec.stages.iter().enumerate() {
        let mut seen: HashMap<PathBuf, usize> = HashMap::new();
        let mut map = Vec::new();
        for (e_i, entry) in stage.entries.iter().enumerate() {
            let occ = seen.entry(entry.prefix.clone()).or_insert(0);
            let key = (entry.prefix.clone(), *occ);
            *occ += 1;
            let g = match keys.get(&key) {
                Some(&g) => g,
                None => {
                    let where_ = if spec.stages.len() > 1 {
                        format!("stage {} ({}), dataset {}", k + 1, stage.name, e_i + 1)
                    } else {
                        format!("dataset {}", e_i + 1)
                    };
                    let shard = match open_shard(&entry.prefix, &entry.label, &where_) {
                        Ok(shard) => shard,
                        Err(e) if e.code == openseek_common::ExitCode::NoInput => {
                            // Every missing dataset is reported at once, below.
                            missing.push(e.message);
                            keys.insert(key, usize::MAX);
                            map.push(usize::MAX);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let lens: Vec<i32> = shard.sequence_lengths().into_iter().map(|l| l as i32).collect();
                    let ranges = blend::split_ranges(&spec.split_fractions, lens.len() as u64);
                    let range = ranges[split_index].clone().ok_or_else(|| {
                        Failure::config(format!("split {:?} gives the {} split no documents", spec.split, SPLIT_NAMES[split_index]))
                    })?;
                    let tokens: u64 = lens[range.start as usize..range.end as usize].iter().map(|&l| l as u64).sum();
                    if tokens < 2 {
                        return Err(Failure::data(format!(
                            "{where_} ({}): {} holds {tokens} tokens in the {} split; a dataset needs at least 2",
                            entry.label,
                            entry.prefix.display(),
                            SPLIT_NAMES[split_index]
                        )));
                    }
                    let g = datasets.len();
                    datasets.push(PlannedDataset {
                        label: entry.label.clone(),
                        prefix: entry.prefix.clone(),
                        sequences: lens.len() as u64,
                        range,
                        tokens_available: tokens,
                        samples_requested: 0,
                        samples_used: 0,
                        epochs: 0,
                        separate_final_epoch: false,
                        samples_built: 0,
                    });
                    lengths.push(lens);
                    keys.insert(key, g);
                    g
                }
            };
            map.push(g);
        }
        stage_maps.push(map);
    }
    if !missing.is_empty() {
        return Err(Failure::no_input(format!(
            "{} of the mix's datasets cannot be read:\n  {}",
            missing.len(),
            missing.join("\n  ")
        )));
    }
    if datasets.len() >= 32767 {
        return Err(Failure::config(format!("{} datasets: Megatron's blend index holds at most 32766", datasets.len())));
    }
    let blend_plans: Vec<blend::BlendPlan> = spec
        .stages
        .iter()
        .map(|stage| blend::plan(&stage.entries.iter().map(|e| e.weight).collect::<Vec<_>>(), stage.samples, surplus))
        .collect();
    check_index_memory(&spec, &datasets, &stage_maps, &blend_plans, openseek_common::size::available_memory())?;
    let mut dataset_index = Vec::new();
    let mut dataset_sample_index = Vec::new();
    let mut stages = Vec::new();
    for ((k, stage), p) in spec.stages.iter().enumerate().zip(blend_plans) {
        let weights: Vec<f64> = stage.entries.iter().map(|e| e.weight).collect();
        let start = dataset_index.len() as u64;
        let (di, si) = blend::blending_indices(&p.weights, p.size);
        let map = &stage_maps[k];
        let offsets: Vec<u64> = map.iter().map(|&g| datasets[g].samples_used).collect();
        let mut counts = vec![0u64; map.len()];
        dataset_index.reserve(di.len());
        dataset_sample_index.reserve(si.len());
        for (d, s) in di.into_iter().zip(si) {
            let g = map[d as usize];
            dataset_index.push(g as i16);
            dataset_sample_index.push(offsets[d as usize] as i64 + s);
            counts[d as usize] += 1;
        }
        for (local, &g) in map.iter().enumerate() {
            datasets[g].samples_used += counts[local];
            datasets[g].samples_requested += p.requests[local];
        }
        stages.push(StageRecord {
            name: stage.name.clone(),
            start,
            end: dataset_index.len() as u64,
            weights: map.iter().zip(&weights).map(|(&g, &w)| (g, w)).collect(),
        });
    }
    for d in datasets.iter_mut() {
        let n = Some(d.samples_requested);
        d.epochs = gpt::num_epochs(d.tokens_available, spec.seq_len, n);
        d.separate_final_epoch = gpt::final_epoch_split(d.tokens_available, spec.seq_len, n).0;
        d.samples_built = (d.epochs as u64 * d.tokens_available - 1) / spec.seq_len as u64;
        if d.samples_used > d.samples_built {
            return Err(Failure::software(format!(
                "the blend takes {} samples from {} but its index holds {}; raise the surplus",
                d.samples_used, d.label, d.samples_built
            )));
        }
    }
    Ok(MixPlan { spec, split_index, datasets, stages, dataset_index, dataset_sample_index, lengths })
}

/// Refuse, before anything is allocated, a mix whose indices would not fit in `available` bytes
/// of memory (they are built in memory, then written): the blend's 10 bytes per sample, and per
/// dataset its GPT document index (4 bytes per document per epoch), sample index (16 bytes per
/// sample) and shuffle index (8 bytes per sample) over the epochs the samples asked for take.
fn check_index_memory(
    spec: &MixSpec,
    datasets: &[PlannedDataset],
    stage_maps: &[Vec<usize>],
    blend_plans: &[blend::BlendPlan],
    available: Option<u64>,
) -> Result<(), Failure> {
    let mut requested = vec![0f64; datasets.len()];
    let mut blended = 0f64;
    for (map, p) in stage_maps.iter().zip(blend_plans) {
        blended += p.size as f64;
        for (&g, &r) in map.iter().zip(&p.requests) {
            requested[g] += r as f64;
        }
    }
    let seq_len = spec.seq_len as f64;
    let mut needed = blended * 10.0;
    for (d, &samples) in datasets.iter().zip(&requested) {
        let epochs = ((samples * seq_len + 1.0) / d.tokens_available as f64).ceil().max(1.0);
        let documents = (d.range.end - d.range.start) as f64;
        let built = epochs * d.tokens_available as f64 / seq_len;
        needed += epochs * documents * 4.0 + built * 24.0;
    }
    let Some(available) = available else { return Ok(()) };
    if needed > available as f64 {
        let total: u64 = spec.stages.iter().map(|s| s.samples).fold(0, u64::saturating_add);
        return Err(Failure::usage(format!(
            "{total} samples of {} tokens: their indices need about {} of memory but {} is available; \
             ask for fewer samples (--samples, --tokens, total_samples) or build on a machine with more memory",
            spec.seq_len + 1,
            openseek_common::size::human(needed as u64),
            openseek_common::size::human(available)
        )));
    }
    Ok(())
}

/// The per-dataset table the dry run prints, and warnings for datasets repeated more than
/// `repeat_warning` times.
pub fn report(plan: &MixPlan, repeat_warning: f64) -> (String, Vec<String>) {
    let total = plan.num_samples().max(1) as f64;
    let seq = plan.spec.seq_len as u64;
    let mut out = String::new();
    let weight_of = |g: usize| -> Vec<String> {
        plan.stages.iter().filter_map(|s| s.weights.iter().find(|(d, _)| *d == g).map(|(_, w)| format!("{w}"))).collect()
    };
    out.push_str(&format!(
        "{:>3}  {:<44} {:>12} {:>16} {:>16} {:>8} {:>7} {:>9}\n",
        "#", "dataset", "weight", "tokens avail", "tokens used", "epochs", "built", "share"
    ));
    let mut warnings = Vec::new();
    for (g, d) in plan.datasets.iter().enumerate() {
        let used = d.samples_used * seq;
        let epochs_used = used as f64 / d.tokens_available as f64;
        let mut label = d.label.clone();
        if label.len() > 44 {
            label = format!("…{}", &label[label.len() - 43..]);
        }
        out.push_str(&format!(
            "{:>3}  {:<44} {:>12} {:>16} {:>16} {:>8.3} {:>7} {:>8.4}%\n",
            g,
            label,
            weight_of(g).join("/"),
            d.tokens_available,
            used,
            epochs_used,
            d.epochs,
            100.0 * d.samples_used as f64 / total
        ));
        if epochs_used > repeat_warning {
            warnings.push(format!(
                "{} is repeated {epochs_used:.2} times ({} tokens used of {} available), more than the threshold {repeat_warning}",
                d.label, used, d.tokens_available
            ));
        }
    }
    out.push_str(&format!(
        "total: {} samples of {} tokens ({} tokens), {} datasets, seed {}, split {:?} ({})\n",
        plan.num_samples(),
        seq + 1,
        plan.num_samples() * seq,
        plan.datasets.len(),
        plan.spec.seed,
        plan.spec.split,
        SPLIT_NAMES[plan.split_index]
    ));
    for s in &plan.stages {
        out.push_str(&format!("stage {}: samples {}..{}\n", s.name, s.start, s.end));
    }
    (out, warnings)
}

fn write_array(outputs: &mut AtomicOutputs, path: &Path, array: &IndexArray, cols: usize) -> Result<(), Failure> {
    let file = outputs.create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write_npy(&mut w, array, cols).and_then(|()| w.flush()).map_err(|e| Failure::io(format!("{}: cannot write: {e}", path.display())))
}

/// Build every dataset's GPT index (in parallel) and write the store to `dir` (made ready by
/// `store::prepare_output`).
pub fn build(mut plan: MixPlan, dir: &Path, provenance: Option<serde_json::Value>, blended: bool) -> Result<Manifest, Failure> {
    openseek_common::output::create_dir(dir)?;
    let seq_len = plan.spec.seq_len;
    let seed = plan.spec.seed;
    let drop_last = true;
    let jobs: Vec<(usize, &PlannedDataset, &Vec<i32>)> =
        plan.datasets.iter().zip(&plan.lengths).enumerate().map(|(g, (d, l))| (g, d, l)).collect();
    let mut outputs = AtomicOutputs::new();
    let out_lock = std::sync::Mutex::new(&mut outputs);
    let results: Vec<Result<(u64, u32, bool), Failure>> = jobs
        .par_iter()
        .map(|(g, d, lens)| {
            let params = GptParams { seq_len, seed, num_samples: Some(d.samples_requested), drop_last_partial: drop_last };
            let idx = gpt::build(lens, d.range.clone(), &params);
            let mut outputs = out_lock.lock().unwrap();
            write_array(&mut outputs, &dir.join(store::dataset_file(*g, "document_index")), &idx.document_index, 1)?;
            write_array(&mut outputs, &dir.join(store::dataset_file(*g, "sample_index")), &idx.sample_index, 2)?;
            write_array(&mut outputs, &dir.join(store::dataset_file(*g, "shuffle_index")), &idx.shuffle_index, 1)?;
            Ok((idx.len(), idx.num_epochs, idx.separate_final_epoch))
        })
        .collect();
    let mut built = Vec::new();
    for r in results {
        built.push(r?);
    }
    let blended_samples = plan.num_samples();
    if blended {
        write_array(&mut outputs, &dir.join(store::BLEND_DATASET_INDEX), &IndexArray::I16(std::mem::take(&mut plan.dataset_index)), 1)?;
        write_array(&mut outputs, &dir.join(store::BLEND_DATASET_SAMPLE_INDEX), &IndexArray::I64(std::mem::take(&mut plan.dataset_sample_index)), 1)?;
    }
    // Unblended (one dataset, os-pack): the store is the whole GPT index, as Megatron's
    // GPTDataset exposes every sample of its epochs.
    let total = if blended { blended_samples } else { built.first().map(|b| b.0).unwrap_or(0) };
    let datasets = plan
        .datasets
        .iter()
        .zip(&built)
        .map(|(d, &(n, epochs, sep))| DatasetRecord {
            label: d.label.clone(),
            prefix: std::path::absolute(&d.prefix).unwrap_or_else(|_| d.prefix.clone()),
            sequences: d.sequences,
            document_range: [d.range.start as u64, d.range.end as u64],
            tokens_available: d.tokens_available,
            samples_requested: d.samples_requested,
            samples_built: n,
            samples_used: d.samples_used,
            epochs,
            separate_final_epoch: sep,
            epochs_used: d.samples_used as f64 * seq_len as f64 / d.tokens_available as f64,
            share: d.samples_used as f64 / total.max(1) as f64,
        })
        .collect();
    let manifest = Manifest {
        format: store::FORMAT.into(),
        version: store::VERSION,
        kind: "megatron".into(),
        name: plan.spec.name.clone(),
        seq_len,
        seed,
        split: plan.spec.split.clone(),
        split_name: SPLIT_NAMES[plan.split_index].into(),
        num_samples: total,
        datasets,
        stages: plan.stages.clone(),
        blended,
        eod_token: None,
        pad_token: None,
        packing: None,
        source: plan.spec.source.as_ref().map(|s| serde_json::to_value(s).unwrap()),
        provenance,
    };
    write_manifest(&mut outputs, dir, &manifest)?;
    outputs.commit()?;
    Ok(manifest)
}

pub fn write_manifest(outputs: &mut AtomicOutputs, dir: &Path, manifest: &Manifest) -> Result<(), Failure> {
    outputs.write_json(&dir.join(store::MANIFEST), manifest)
}

/// The dry-run plan as JSON: per dataset its weight(s), tokens available and used, epochs, share.
pub fn plan_json(plan: &MixPlan) -> serde_json::Value {
    let seq = plan.spec.seq_len as u64;
    let total = plan.num_samples().max(1) as f64;
    let datasets: Vec<serde_json::Value> = plan
        .datasets
        .iter()
        .enumerate()
        .map(|(g, d)| {
            let weights: Vec<f64> =
                plan.stages.iter().filter_map(|s| s.weights.iter().find(|(x, _)| *x == g).map(|(_, w)| *w)).collect();
            serde_json::json!({
                "dataset": g,
                "label": d.label,
                "prefix": d.prefix,
                "weights": weights,
                "tokens_available": d.tokens_available,
                "tokens_used": d.samples_used * seq,
                "samples_requested": d.samples_requested,
                "samples_used": d.samples_used,
                "epochs": d.samples_used as f64 * seq as f64 / d.tokens_available as f64,
                "epochs_built": d.epochs,
                "share": d.samples_used as f64 / total,
            })
        })
        .collect();
    serde_json::json!({
        "seq_len": plan.spec.seq_len,
        "seed": plan.spec.seed,
        "split": plan.spec.split,
        "split_name": SPLIT_NAMES[plan.split_index],
        "num_samples": plan.num_samples(),
        "datasets": datasets,
        "stages": plan.stages,
    })
}
