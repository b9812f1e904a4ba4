//! The training configuration: one flat set of options read from TOML or YAML, each also settable
//! on the command line as `--name value` (or `--name=value`, dashes or underscores), checked and
//! resolved into the lengths the loop needs.

use crate::schedule::{Schedule, Style, WsdDecay};
use openseek_common::Failure;
use openseek_model::FastPaths;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// bf16 compute on bf16 weights, with fp32 master weights and fp32 Adam moments in the
    /// optimizer; gradients summed in fp32 (Megatron's bf16 with its distributed optimizer).
    Bf16Mixed,
    /// bf16 compute on fp32 weights cast where used (as torch.autocast), fp32 gradients and Adam
    /// moments: no bf16 copy of the weights, one rounding fewer in the gradients.
    Bf16Autocast,
    /// bf16 weights and compute; Adam moments fp32, updates rounded into the bf16 weights.
    Bf16,
    /// fp32 throughout (the CPU path).
    Fp32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNan {
    /// Skip the update (the batch is consumed), log the batch's sample ids, carry on.
    Skip,
    /// Log the sample ids and stop (exit 65).
    Stop,
}

/// The dtype the optimizer keeps Adam's two moments in (master weights stay fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentsDtype {
    Fp32,
    /// bf16 moments, as DeepSeek-V3 trains (Megatron's `--use-precision-aware-optimizer
    /// --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16`): each update reads and writes half the
    /// moment bytes; the arithmetic stays fp32, the stored moments are rounded to bf16.
    Bf16,
}

/// How a step's loss (and so its gradient) averages over tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAveraging {
    /// Each micro-batch's mean over its loss tokens, then the mean over micro-batches and ranks
    /// (Megatron's default, without `--calculate-per-token-loss`; the seeds' FlagScale configs).
    PerMicroBatch,
    /// The sum over the global batch's loss tokens divided by their number (Megatron's
    /// `--calculate-per-token-loss`).
    PerToken,
}

/// Switches for measuring and debugging. None changes the numbers a run computes beyond rounding
/// (the fast paths compute what the plain paths do), so they are grouped apart from the options
/// that define a run; all are recorded in `train_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugOptions {
    /// Fast paths to turn off, by name (a list or a comma-separated string): the model's
    /// (`FastPaths::NAMES`) and os-train's (`TrainFastPaths::NAMES`).
    #[serde(default, deserialize_with = "names")]
    pub disable: Vec<String>,
    /// The LM head + loss: `fused` (one pass per chunk, no autograd graph) or `autograd` (the
    /// reference the tests compare with).
    #[serde(default)]
    pub loss: HeadLoss,
    /// Print each phase's wall time per micro-batch (device synchronised) on stderr.
    #[serde(default)]
    pub profile: bool,
    /// Write the process's third step (its micro-batches, the reduction and the update) as a Chrome trace here.
    pub trace: Option<PathBuf>,
    /// Run the collectives through NCCL (and so the ZeRO-1 optimizer) even on one GPU, to measure
    /// the multi-GPU path where only one GPU is at hand.
    #[serde(default)]
    pub force_nccl: bool,
}

/// The LM head + loss implementation (`debug.loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadLoss {
    #[default]
    Fused,
    Autograd,
}

/// os-train's own fast paths (the model's are `openseek_model::FastPaths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainFastPaths {
    /// The head weight's gradient added straight into its `.grad` per loss chunk.
    pub head_grad: bool,
    /// The first chunk's head-gradient product written into a fresh `.grad` (no zero fill).
    pub head_assign: bool,
    /// The loss's softmax - one-hot as one CUDA kernel per chunk.
    pub xent_kernel: bool,
    /// Gradients set to none after an update (else zeroed in place).
    pub grad_none: bool,
    /// Micro-batch gradients summed into fp32 by one CUDA kernel (else ATen's mixed-dtype `add_`).
    pub accumulate_kernel: bool,
}

impl Default for TrainFastPaths {
    fn default() -> TrainFastPaths {
        TrainFastPaths { head_grad: true, head_assign: true, xent_kernel: true, grad_none: true, accumulate_kernel: true }
    }
}

impl TrainFastPaths {
    pub const NAMES: [&'static str; 5] = ["head_grad", "head_assign", "xent_kernel", "grad_none", "accumulate_kernel"];
}

impl DebugOptions {
    /// The model's and os-train's fast paths with `disable` applied; an unknown name is an error.
    pub fn fast_paths(&self) -> Result<(FastPaths, TrainFastPaths), Failure> {
        let (model, rest) = FastPaths::with_disabled(&self.disable);
        let mut train = TrainFastPaths::default();
        for name in rest {
            match name {
                "head_grad" => train.head_grad = false,
                "head_assign" => train.head_assign = false,
                "xent_kernel" => train.xent_kernel = false,
                "grad_none" => train.grad_none = false,
                "accumulate_kernel" => train.accumulate_kernel = false,
                other => {
                    let known: Vec<&str> = FastPaths::NAMES.iter().chain(&TrainFastPaths::NAMES).copied().collect();
                    return Err(Failure::config(format!("debug.disable: unknown fast path {other:?}; known: {}", known.join(", "))));
                }
            }
        }
        Ok((model, train))
    }
}

/// A list of names, or one comma-separated string of them.
fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Names::deserialize(d)? {
        Names::List(l) => l,
        Names::Text(t) => t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
    })
}

/// Where a from-scratch model's shape comes from: a config.json path, or the config inline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelConfig {
    Path(PathBuf),
    Inline(serde_json::Map<String, Value>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Start from this Hugging Face checkpoint directory (continued pretraining).
    pub init_from: Option<PathBuf>,
    /// Or from scratch with this model config (a config.json path or an inline table).
    pub model_config: Option<ModelConfig>,
    /// Init std from scratch (default: the model config's initializer_range).
    pub init_std: Option<f64>,
    /// A tokenizer directory whose files are copied into every checkpoint, so each one is a whole
    /// Hugging Face model directory (default: `init_from`'s tokenizer files, else the tokenizer the
    /// store's shards were made with; none found is an error: crate::tokenizer_source).
    pub tokenizer: Option<PathBuf>,
    /// The sample store (os-mix / os-pack output directory).
    pub data: PathBuf,
    /// Attention within documents (Megatron --reset-attention-mask + --reset-position-ids): tokens
    /// see only earlier tokens of their own document (EOD-delimited), positions restart per document.
    #[serde(default)]
    pub attention_per_document: bool,
    /// Loss mask 0 on EOD tokens of the input (Megatron --eod-mask-loss).
    #[serde(default)]
    pub eod_mask_loss: bool,

    pub micro_batch_size: usize,
    /// Samples per optimizer step (gradient accumulation makes up the difference).
    pub global_batch_size: usize,
    pub train_iters: Option<u64>,
    pub train_samples: Option<u64>,

    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "cosine")]
    pub lr_schedule: Style,
    pub warmup_iters: Option<u64>,
    pub warmup_samples: Option<u64>,
    /// Where the decay ends (default: the end of training).
    pub decay_iters: Option<u64>,
    pub decay_samples: Option<u64>,
    /// WSD: the length of the final decay.
    pub wsd_decay_iters: Option<u64>,
    pub wsd_decay_samples: Option<u64>,
    #[serde(default = "linear")]
    pub wsd_decay_style: WsdDecay,

    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "beta1")]
    pub adam_beta1: f64,
    #[serde(default = "beta2")]
    pub adam_beta2: f64,
    #[serde(default = "eps")]
    pub adam_eps: f64,
    /// The dtype of Adam's moments in the optimizer state.
    #[serde(default = "fp32_moments")]
    pub adam_moments_dtype: MomentsDtype,
    /// Global gradient-norm clipping (0 = off).
    #[serde(default = "one")]
    pub clip_grad: f64,
    #[serde(default = "bf16_mixed")]
    pub precision: Precision,
    /// How the loss averages over the step's tokens.
    #[serde(default = "per_micro_batch")]
    pub loss_averaging: LossAveraging,

    /// The aux-loss-free balance: bias_e += rate * sign(mean load - load_e) after each step (0 = off).
    #[serde(default = "bias_rate")]
    pub router_bias_update_rate: f64,
    /// The sequence-wise balance loss coefficient (0 = off).
    #[serde(default = "seq_aux")]
    pub seq_aux_loss_coeff: f64,
    /// Router z-loss coefficient (0 = off).
    #[serde(default)]
    pub z_loss_coeff: f64,
    /// Multi-token prediction (DeepSeek-V3; the model's `num_nextn_predict_layers` depths): the MTP
    /// loss, averaged over the depths, times this is added to the LM loss (OpenSeek-Small-v1 trained
    /// with 0.3, `mtp_loss_coeff` in its FlagScale config). 0: not computed, the MTP weights are
    /// kept unchanged in the checkpoints. No effect on a model without MTP layers.
    #[serde(default = "mtp_coeff")]
    pub mtp_loss_coeff: f64,

    /// Layers whose activations are recomputed in the backward pass: "none", "all" or "0,2,4".
    #[serde(default = "none")]
    pub recompute: String,
    /// Tokens per chunk of the LM head + loss (bounds the logits' memory).
    #[serde(default = "chunk")]
    pub loss_chunk_tokens: usize,
    /// With several ranks, start averaging each layer's gradients as soon as the last
    /// micro-batch's backward pass completes them, overlapped with the rest of the pass
    /// (Megatron's `overlap_grad_reduce`); false: all at once after the pass. Same numbers.
    #[serde(default = "yes")]
    pub overlap_grad_reduce: bool,
    /// With several ranks (ZeRO-1), the all-gathers of updated parameters run behind the next
    /// forward pass, each layer waiting only for its own bucket (Megatron's `overlap_param_gather`,
    /// set in the seeds' FlagScale configs); false: the step waits for them. Same numbers.
    #[serde(default = "yes")]
    pub overlap_param_gather: bool,

    /// cpu, cuda, cuda:N or auto.
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default = "seed")]
    pub seed: u64,
    /// CPU threads for torch (default: torch's choice).
    pub threads: Option<usize>,

    /// Checkpoint every N steps (a checkpoint is always written at the end).
    pub save_interval: Option<u64>,
    /// Write a checkpoint after the last step (turn off only for benchmarks).
    #[serde(default = "yes")]
    pub save_at_end: bool,
    /// Keep only the newest K checkpoints.
    pub keep_last: Option<usize>,
    #[serde(default = "skip")]
    pub on_nan: OnNan,
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// The MFU basis in TFLOP/s (default: H100 SXM dense bf16, 989).
    #[serde(default = "peak")]
    pub peak_tflops: f64,
    /// Measuring and debugging switches (`[debug]`; flags `--debug.disable xent_kernel`).
    #[serde(default)]
    pub debug: DebugOptions,
}

/// Every option with a one-line description, in the order of [`TrainConfig`]'s fields (tables'
/// options as `table.name`): what `os-train --help` lists, with the defaults taken from serde
/// ([`options_help`]). A unit test checks that it names exactly the keys of TrainConfig.
pub const OPTIONS: &[(&str, &str)] = &[
    ("init_from", "start from this Hugging Face checkpoint directory (continued pretraining)"),
    ("model_config", "or from scratch with this model config: a config.json path or an inline table"),
    ("init_std", "init std from scratch (unset: the model config's initializer_range)"),
    ("tokenizer", "tokenizer directory copied into every checkpoint (unset: init_from's, else the one the store's shards were made with)"),
    ("data", "the sample store (os-mix / os-pack output directory)"),
    ("attention_per_document", "attention within EOD-delimited documents, positions restart (Megatron --reset-attention-mask --reset-position-ids)"),
    ("eod_mask_loss", "no loss on EOD input tokens (Megatron --eod-mask-loss)"),
    ("micro_batch_size", "samples per forward/backward pass per rank"),
    ("global_batch_size", "samples per optimizer step (gradient accumulation makes up the difference)"),
    ("train_iters", "optimizer steps to train (or train_samples)"),
    ("train_samples", "samples to train (or train_iters)"),
    ("lr", "peak learning rate"),
    ("min_lr", "learning rate at the end of the decay"),
    ("lr_schedule", "constant, cosine, linear or wsd"),
    ("warmup_iters", "linear warm-up from 0, in steps (or warmup_samples)"),
    ("warmup_samples", "linear warm-up from 0, in samples"),
    ("decay_iters", "where the decay ends, in steps (unset: the end of training)"),
    ("decay_samples", "where the decay ends, in samples"),
    ("wsd_decay_iters", "wsd: the length of the final decay, in steps"),
    ("wsd_decay_samples", "wsd: the length of the final decay, in samples"),
    ("wsd_decay_style", "wsd: linear, cosine, exponential or minus_sqrt"),
    ("weight_decay", "AdamW's decoupled weight decay (none on norms, biases, router biases)"),
    ("adam_beta1", "AdamW beta1"),
    ("adam_beta2", "AdamW beta2"),
    ("adam_eps", "AdamW epsilon"),
    ("adam_moments_dtype", "fp32, or bf16 (Adam moments stored in bf16, as DeepSeek-V3; checkpoints keep them as fp32)"),
    ("clip_grad", "global gradient-norm clipping (0 = off)"),
    ("precision", "bf16-mixed, bf16-autocast, bf16 or fp32"),
    ("loss_averaging", "per_micro_batch (Megatron's default) or per_token (--calculate-per-token-loss)"),
    ("router_bias_update_rate", "aux-loss-free balancing: bias_e += rate * sign(mean load - load_e) per step (0 = off)"),
    ("seq_aux_loss_coeff", "sequence-wise balance loss coefficient (0 = off)"),
    ("z_loss_coeff", "router z-loss coefficient (0 = off)"),
    ("mtp_loss_coeff", "multi-token-prediction loss weight, for a model with num_nextn_predict_layers (0 = MTP layers kept, not trained)"),
    ("recompute", "layers recomputed in the backward pass: none, all or a list like 0,2,4"),
    ("loss_chunk_tokens", "tokens per chunk of the LM head + loss (bounds the logits' memory)"),
    ("overlap_grad_reduce", "several ranks: reduce gradients during the backward pass (same numbers)"),
    ("overlap_param_gather", "several ranks: gather updated parameters behind the next forward pass (same numbers)"),
    ("device", "cpu, cuda, cuda:N or auto"),
    ("seed", "seed of a from-scratch init"),
    ("threads", "CPU threads for torch (unset: torch's choice)"),
    ("save_interval", "checkpoint every N steps"),
    ("save_at_end", "checkpoint after the last step"),
    ("keep_last", "keep only the newest K checkpoints (unset: all)"),
    ("on_nan", "a non-finite loss or gradient: skip (the step's update) or stop (exit 65)"),
    ("tensorboard", "write TensorBoard event files in the run directory"),
    ("peak_tflops", "per-device TFLOP/s the MFU is relative to"),
    ("debug.disable", "fast paths to turn off, comma-separated (measuring and debugging)"),
    ("debug.loss", "LM head + loss: fused or autograd"),
    ("debug.profile", "print each phase's wall time per micro-batch on stderr"),
    ("debug.trace", "write the third step (micro-batches, reduction, update) as a Chrome trace to this file"),
    ("debug.force_nccl", "collectives through NCCL (and ZeRO-1) even on one GPU"),
];

/// Options without a default: a config must set them.
const REQUIRED: [&str; 4] = ["data", "micro_batch_size", "global_batch_size", "lr"];

/// Each option's default as serde fills it in, as text ("required", "unset" or the value); keys as
/// in [`OPTIONS`].
fn defaults() -> serde_json::Map<String, Value> {
    let filled: TrainConfig = serde_json::from_value(Value::Object(required_placeholders())).expect("every option but REQUIRED has a default");
    let mut out = serde_json::Map::new();
    for (key, value) in serde_json::to_value(filled).unwrap().as_object().unwrap() {
        match value {
            Value::Object(table) => out.extend(table.iter().map(|(k, v)| (format!("{key}.{k}"), v.clone()))),
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    for key in REQUIRED {
        out.insert(key.into(), Value::String("required".into()));
    }
    out
}

/// A value of the right type for each of [`REQUIRED`]: with them, any one option deserializes alone.
fn required_placeholders() -> serde_json::Map<String, Value> {
    let values = serde_json::json!({"data": "", "micro_batch_size": 1, "global_batch_size": 1, "lr": 0.0});
    let Value::Object(map) = values else { unreachable!("an object literal") };
    map
}

/// serde's message for `map`, which did not deserialize, with the option it is about: serde_json
/// names unknown and missing options but not an option whose value has the wrong type
/// (`invalid type: string "x", expected f64`). Each option is tried alone to find it.
fn name_the_option(map: &serde_json::Map<String, Value>, whole: serde_json::Error) -> String {
    for (key, value) in map {
        let mut alone = required_placeholders();
        alone.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<TrainConfig>(Value::Object(alone)) {
            return format!("{key} = {value}: {e}");
        }
    }
    whole.to_string()
}

/// Options are finite numbers. TOML and YAML can write NaN and infinities (`nan`, `inf`, `.nan`),
/// which JSON cannot hold (they would become null: an error without the option's name, or an
/// optional option silently unset), so they are refused here by name.
fn finite(key: &str, x: f64) -> Result<(), Failure> {
    match x.is_finite() {
        true => Ok(()),
        false => Err(Failure::config(format!("{key} = {x}: options must be finite numbers"))),
    }
}

fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

fn finite_toml(key: &str, value: &toml::Value) -> Result<(), Failure> {
    match value {
        toml::Value::Float(x) => finite(key, *x),
        toml::Value::Table(t) => t.iter().try_for_each(|(k, v)| finite_toml(&dotted(key, k), v)),
        toml::Value::Array(a) => a.iter().try_for_each(|v| finite_toml(key, v)),
        _ => Ok(()),
    }
}

fn finite_yaml(key: &str, value: &serde_norway::Value) -> Result<(), Failure> {
    use serde_norway::Value as Y;
    match value {
        Y::Number(n) => n.as_f64().map_or(Ok(()), |x| finite(key, x)),
        Y::Mapping(m) => m.iter().try_for_each(|(k, v)| finite_yaml(&dotted(key, k.as_str().unwrap_or("?")), v)),
        Y::Sequence(a) => a.iter().try_for_each(|v| finite_yaml(key, v)),
        Y::Tagged(t) => finite_yaml(key, &t.value),
        _ => Ok(()),
    }
}

/// The options section of `os-train --help`: every option, its default and what it does.
pub fn options_help() -> String {
    let defaults = defaults();
    let mut text = String::from(
        "Config options (keys of the --config file; each also a flag, --name value or --name=value, dashes or underscores; flags override the file):\n",
    );
    for (key, about) in OPTIONS {
        let default = match &defaults[*key] {
            Value::Null => "unset".to_string(),
            Value::String(s) if s.is_empty() => "\"\"".to_string(),
            Value::Array(a) if a.is_empty() => "none".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("  {key:<24} [{default}] {about}\n"));
    }
    text
}

fn cosine() -> Style {
    Style::Cosine
}
fn linear() -> WsdDecay {
    WsdDecay::Linear
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.95
}
fn eps() -> f64 {
    1e-8
}
fn fp32_moments() -> MomentsDtype {
    MomentsDtype::Fp32
}
fn one() -> f64 {
    1.0
}
fn bf16_mixed() -> Precision {
    Precision::Bf16Mixed
}
fn per_micro_batch() -> LossAveraging {
    LossAveraging::PerMicroBatch
}
fn bias_rate() -> f64 {
    1e-3
}
fn seq_aux() -> f64 {
    1e-4
}
fn mtp_coeff() -> f64 {
    0.3
}
fn none() -> String {
    "none".into()
}
fn chunk() -> usize {
    8192
}
fn auto() -> String {
    "auto".into()
}
fn seed() -> u64 {
    1234
}
fn skip() -> OnNan {
    OnNan::Skip
}
fn yes() -> bool {
    true
}
fn peak() -> f64 {
    crate::metrics::H100_BF16_PEAK_TFLOPS
}

/// Read a config file (`.toml`, `.yaml`/`.yml` or `.json`) as a JSON object.
pub fn read_file(path: &Path) -> Result<serde_json::Map<String, Value>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read the config", &e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let value: Value = match ext {
        "toml" => {
            let t: toml::Value = toml::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
            finite_toml("", &t).map_err(|e| Failure::config(format!("{}: {}", path.display(), e.message)))?;
            serde_json::to_value(t).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?
        }
        "yaml" | "yml" => {
            let y: serde_norway::Value = serde_norway::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
            finite_yaml("", &y).map_err(|e| Failure::config(format!("{}: {}", path.display(), e.message)))?;
            serde_norway::from_value(y).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?
        }
        "json" => serde_json::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?,
        _ => return Err(Failure::config(format!("{}: expected a .toml, .yaml, .yml or .json config", path.display()))),
    };
    let Value::Object(mut map) = value else {
        return Err(Failure::config(format!("{}: the config must be a table of options", path.display())));
    };
    // Relative paths in a config file are relative to the file.
    let base = path.parent().unwrap_or(Path::new("."));
    for key in ["init_from", "data", "model_config", "tokenizer"] {
        if let Some(Value::String(p)) = map.get(key) {
            let p = Path::new(p);
            if p.is_relative() {
                map.insert(key.into(), Value::String(base.join(p).to_string_lossy().into_owned()));
            }
        }
    }
    Ok(map)
}

/// Apply `--name value` / `--name=value` pairs over `map`. Values are read as JSON (numbers,
/// booleans, arrays, objects) and fall back to strings; `--table.name value` sets `name` in the
/// table `table` (e.g. `--debug.disable xent_kernel`).
pub fn apply_flags(map: &mut serde_json::Map<String, Value>, flags: &[String]) -> Result<(), Failure> {
    let mut i = 0;
    while i < flags.len() {
        let Some(flag) = flags[i].strip_prefix("--") else {
            return Err(Failure::usage(format!("unexpected argument {:?}: options are --name value", flags[i])));
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                i += 1;
                let v = flags.get(i).ok_or_else(|| Failure::usage(format!("--{flag} needs a value")))?;
                (flag.to_string(), v.clone())
            }
        };
        let key = name.replace('-', "_");
        if let Ok(x) = value.parse::<f64>() {
            finite(&format!("--{name}"), x)?;
        }
        let v = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
        match key.split_once('.') {
            Some((table, inner)) => match map.entry(table.to_string()).or_insert_with(|| Value::Object(Default::default())) {
                Value::Object(t) => {
                    t.insert(inner.to_string(), v);
                }
                _ => return Err(Failure::usage(format!("--{name}: {table} is not a table of options"))),
            },
            None => {
                map.insert(key, v);
            }
        }
        i += 1;
    }
    Ok(())
}

impl TrainConfig {
    pub fn from_map(map: serde_json::Map<String, Value>) -> Result<TrainConfig, Failure> {
        let cfg: TrainConfig = match serde_json::from_value(Value::Object(map.clone())) {
            Ok(cfg) => cfg,
            Err(e) => return Err(Failure::config(format!("training config: {}", name_the_option(&map, e)))),
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), Failure> {
        let bad = |m: String| Err(Failure::config(m));
        match (&self.init_from, &self.model_config) {
            (Some(_), Some(_)) => return bad("set either init_from (a checkpoint) or model_config (from scratch), not both".into()),
            (None, None) => return bad("set init_from (a Hugging Face checkpoint directory) or model_config (from scratch)".into()),
            _ => {}
        }
        if self.micro_batch_size == 0 || self.global_batch_size == 0 || !self.global_batch_size.is_multiple_of(self.micro_batch_size) {
            return bad(format!(
                "global_batch_size {} must be a positive multiple of micro_batch_size {}",
                self.global_batch_size, self.micro_batch_size
            ));
        }
        if self.train_iters.is_some() == self.train_samples.is_some() {
            return bad("set exactly one of train_iters and train_samples".into());
        }
        if self.warmup_iters.is_some() && self.warmup_samples.is_some() {
            return bad("set at most one of warmup_iters and warmup_samples".into());
        }
        if self.decay_iters.is_some() && self.decay_samples.is_some() {
            return bad("set at most one of decay_iters and decay_samples".into());
        }
        if self.lr_schedule == Style::Wsd && self.wsd_decay_iters.is_none() && self.wsd_decay_samples.is_none() {
            return bad("lr_schedule wsd needs wsd_decay_iters or wsd_decay_samples".into());
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad(format!("adam betas must be in [0, 1): {} {}", self.adam_beta1, self.adam_beta2));
        }
        if self.keep_last == Some(0) || self.save_interval == Some(0) {
            return bad("keep_last and save_interval must be at least 1".into());
        }
        if self.loss_chunk_tokens == 0 {
            return bad("loss_chunk_tokens must be at least 1".into());
        }
        if !(self.mtp_loss_coeff.is_finite() && self.mtp_loss_coeff >= 0.0) {
            return bad(format!("mtp_loss_coeff {} must be finite and not negative (0 turns the MTP loss off)", self.mtp_loss_coeff));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0 && self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad(format!("lr {} and min_lr {} must be finite and not negative", self.lr, self.min_lr));
        }
        self.debug.fast_paths()?;
        self.schedule().check().map_err(|m| Failure::config(format!("learning-rate schedule: {m}")))?;
        Ok(())
    }

    /// Optimizer steps in the run.
    pub fn total_steps(&self) -> u64 {
        match (self.train_iters, self.train_samples) {
            (Some(i), _) => i,
            (None, Some(s)) => s / self.global_batch_size as u64,
            (None, None) => 0,
        }
    }

    pub fn accumulation(&self) -> usize {
        self.global_batch_size / self.micro_batch_size
    }

    /// The schedule in samples (iterations times the global batch).
    pub fn schedule(&self) -> Schedule {
        let gbs = self.global_batch_size as u64;
        let in_samples = |iters: Option<u64>, samples: Option<u64>| iters.map(|i| i * gbs).or(samples);
        let total = self.total_steps() * gbs;
        Schedule {
            max_lr: self.lr,
            min_lr: self.min_lr,
            style: self.lr_schedule,
            warmup: in_samples(self.warmup_iters, self.warmup_samples).unwrap_or(0),
            decay_end: in_samples(self.decay_iters, self.decay_samples).unwrap_or(total),
            wsd_decay: in_samples(self.wsd_decay_iters, self.wsd_decay_samples).unwrap_or(0),
            wsd_style: self.wsd_decay_style,
        }
    }

    /// Which of `layers` layers recompute their activations.
    pub fn recompute_layers(&self, layers: usize) -> Result<Vec<bool>, Failure> {
        match self.recompute.trim() {
            "none" | "" => Ok(vec![false; layers]),
            "all" | "full" => Ok(vec![true; layers]),
            list => {
                let mut out = vec![false; layers];
                for part in list.split(',') {
                    let i: usize = part.trim().parse().map_err(|_| {
                        Failure::config(format!("recompute {list:?}: expected none, all or layer numbers like 0,2,4"))
                    })?;
                    if i >= layers {
                        return Err(Failure::config(format!("recompute names layer {i}; the model has {layers}")));
                    }
                    out[i] = true;
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[debug]` from a table or dotted flags; an unknown fast path or key is an error naming it.
    #[test]
    fn debug_switches_are_checked_config() {
        let c = TrainConfig::from_map(base()).unwrap();
        assert_eq!(c.debug, DebugOptions::default());
        assert_eq!(c.loss_averaging, LossAveraging::PerMicroBatch);
        let mut m = base();
        apply_flags(&mut m, &["--debug.disable".into(), "xent_kernel,rope_kernel".into(), "--debug.loss=autograd".into()]).unwrap();
        let c = TrainConfig::from_map(m).unwrap();
        let (model, train) = c.debug.fast_paths().unwrap();
        assert!(!model.rope_kernel && model.fused_norm && !train.xent_kernel && train.grad_none);
        assert_eq!(c.debug.loss, HeadLoss::Autograd);
        let mut m = base();
        m.insert("debug".into(), serde_json::json!({"disable": ["flash_pad"]}));
        let e = TrainConfig::from_map(m).unwrap_err();
        assert!(e.message.contains("flash_pad") && e.message.contains("rope_kernel"), "{}", e.message);
        let mut m = base();
        m.insert("debug".into(), serde_json::json!({"profil": true}));
        assert!(TrainConfig::from_map(m).unwrap_err().message.contains("profil"));
    }

    /// `--help`'s table names every option of TrainConfig once, and exactly the REQUIRED ones
    /// have no default.
    #[test]
    fn the_help_table_covers_every_option() {
        let listed: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), listed.len(), "an option listed twice");
        let mut keys: Vec<String> = defaults().keys().cloned().collect();
        keys.sort();
        assert_eq!(sorted, keys, "OPTIONS must list exactly TrainConfig's options");
        for key in REQUIRED {
            let mut m = required_placeholders();
            m.remove(key);
            assert!(serde_json::from_value::<TrainConfig>(Value::Object(m)).is_err(), "{key} has a default");
        }
        let help = options_help();
        assert!(help.contains("  lr_schedule              [cosine] constant, cosine"), "{help}");
        assert!(help.contains("  lr                       [required] "), "{help}");
        assert!(help.contains("  keep_last                [unset] "), "{help}");
        assert!(help.contains("  debug.disable            [none] "), "{help}");
        assert_eq!(help.lines().count(), OPTIONS.len() + 1);
    }

    fn base() -> serde_json::Map<String, Value> {
        serde_json::from_value(serde_json::json!({
            "model_config": {"vocab_size": 10}, "data": "d", "micro_batch_size": 2,
            "global_batch_size": 8, "train_iters": 100, "lr": 1e-3, "warmup_iters": 10
        }))
        .unwrap()
    }

    #[test]
    fn flags_override_and_iterations_count_in_samples() {
        let mut m = base();
        apply_flags(&mut m, &["--lr".into(), "3e-4".into(), "--lr-schedule=wsd".into(), "--wsd-decay-iters".into(), "20".into()]).unwrap();
        let c = TrainConfig::from_map(m).unwrap();
        assert_eq!(c.lr, 3e-4);
        assert_eq!(c.accumulation(), 4);
        let s = c.schedule();
        assert_eq!((s.warmup, s.decay_end, s.wsd_decay), (80, 800, 160));
        assert_eq!(s.style, Style::Wsd);
    }

    /// NaN and infinities, as TOML, YAML or a flag writes them, are refused naming the option
    /// (exit 78), also for an optional option they would otherwise leave unset.
    #[test]
    fn non_finite_numbers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text, named) in [
            ("c.toml", "lr = nan\n", "lr = NaN"),
            ("d.toml", "lr = 1e-3\ninit_std = -inf\n", "init_std = -inf"),
            ("e.toml", "[debug]\nx = inf\n", "debug.x = inf"),
            ("c.yaml", "lr: 1e-3\nmin_lr: .nan\n", "min_lr = NaN"),
            ("d.yaml", "init_std: .inf\n", "init_std = inf"),
        ] {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            let e = read_file(&path).unwrap_err();
            assert_eq!(e.code, openseek_common::ExitCode::Config, "{file}");
            assert!(e.message.contains(&format!("{file}: {named}: options must be finite numbers")), "{file}: {}", e.message);
        }
        for flag in [["--lr", "inf"], ["--min-lr", "NaN"], ["--clip-grad", "-infinity"]] {
            let e = apply_flags(&mut base(), &flag.map(String::from)).unwrap_err();
            assert_eq!(e.code, openseek_common::ExitCode::Config, "{flag:?}");
            assert!(e.message.starts_with(&format!("{} = ", flag[0])) && e.message.contains("finite"), "{flag:?}: {}", e.message);
        }
        let mut m = base();
        apply_flags(&mut m, &["--lr".into(), "2e-4".into()]).unwrap();
        assert_eq!(TrainConfig::from_map(m).unwrap().lr, 2e-4, "finite numbers pass");
    }

    #[test]
    fn mistakes_are_named() {
        let mut m = base();
        m.insert("lr_shedule".into(), Value::from("cosine"));
        assert!(TrainConfig::from_map(m).unwrap_err().message.contains("lr_shedule"));
        let mut m = base();
        m.insert("global_batch_size".into(), Value::from(7));
        assert!(TrainConfig::from_map(m).unwrap_err().message.contains("multiple"));
        let mut m = base();
        m.insert("train_samples".into(), Value::from(7));
        assert!(TrainConfig::from_map(m).unwrap_err().message.contains("exactly one"));
        // Negative, null (what JSON makes of NaN) or a string: each message names the option.
        for bad in [Value::from(-0.1), Value::from(f64::INFINITY), Value::from("NaN")] {
            let mut m = base();
            m.insert("mtp_loss_coeff".into(), bad.clone());
            let e = TrainConfig::from_map(m).unwrap_err();
            assert_eq!(e.code, openseek_common::ExitCode::Config, "{bad}");
            assert!(e.message.contains("mtp_loss_coeff"), "{bad}: {}", e.message);
        }
        let mut m = base();
        m.insert("micro_batch_size".into(), Value::from("two"));
        let e = TrainConfig::from_map(m).unwrap_err();
        assert!(e.message.contains("micro_batch_size = \"two\": invalid type"), "{}", e.message);
        let c = TrainConfig::from_map(base()).unwrap();
        assert_eq!(c.mtp_loss_coeff, 0.3, "OpenSeek-Small-v1's coefficient by default");
        assert_eq!(c.recompute_layers(3).unwrap(), vec![false; 3]);
        let mut m = base();
        m.insert("lr".into(), Value::from(-1.0));
        assert!(TrainConfig::from_map(m).unwrap_err().message.contains("not negative"));
        let mut m = base();
        m.insert("recompute".into(), Value::from("0,2"));
        assert_eq!(TrainConfig::from_map(m).unwrap().recompute_layers(3).unwrap(), vec![true, false, true]);
    }
}
