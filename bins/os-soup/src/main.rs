//! os-soup: merge Hugging Face checkpoints (model soups and mergekit's methods) tensor by
//! tensor over memory maps, from flags or a mergekit-style YAML config.

use std::path::PathBuf;

use clap::Parser;
use openseek_common::{provenance::Provenance, Failure};
use openseek_soup::config::{MergePlan, Method, ModelSpec, Param, Params};
use openseek_soup::{run_merge, MergeOptions};

#[derive(Parser)]
#[command(name = "os-soup", version, about = "Merge HF checkpoints: averages, EMA, and mergekit's linear, slerp, task_arithmetic, ties, dare_linear, dare_ties")]
struct Cli {
    /// Checkpoint directories to merge, in order (with --latest: run directories holding
    /// checkpoint-N / iter_N subdirectories).
    models: Vec<PathBuf>,
    /// A mergekit-style YAML config (merge_method, base_model, models, parameters, dtype).
    #[arg(long, conflicts_with_all = ["method", "weights", "latest"])]
    config: Option<PathBuf>,
    /// average, weighted, ema, linear, slerp, task_arithmetic, ties, dare_linear, dare_ties.
    #[arg(long, default_value = "average")]
    method: Option<String>,
    /// Base model (slerp's t = 0 end; the reference of task arithmetic, ties and dare).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Weight per model, comma-separated, in model order.
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Density per model (ties / dare): one value for all, or one per model.
    #[arg(long, value_delimiter = ',')]
    density: Option<Vec<f64>>,
    /// Take the latest N checkpoints (by step number) of the directory given: one holding
    /// checkpoint-N / iter_N / step-N subdirectories, or an os-train run directory (its
    /// checkpoints/). With fewer (at least 2), those are averaged and a note says so.
    #[arg(long)]
    latest: Option<usize>,
    /// EMA decay: ema = decay * ema + (1 - decay) * next checkpoint.
    #[arg(long)]
    decay: Option<f64>,
    /// slerp's interpolation factor.
    #[arg(long)]
    t: Option<f64>,
    /// Divide by the sum of weights (default: yes for average/linear/ties, no otherwise).
    #[arg(long)]
    normalize: Option<bool>,
    /// Rescale DARE's kept deltas to the original L1 norm (default yes for dare_*).
    #[arg(long)]
    rescale: Option<bool>,
    /// Scale of the merged task vector (task arithmetic family).
    #[arg(long)]
    lambda: Option<f64>,
    /// Seed of DARE's random drop.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute dtype: inputs are cast to it and the output has it (float32, bfloat16, float16).
    #[arg(long)]
    dtype: Option<String>,
    /// Output dtype (default: --dtype, else each tensor's input dtype).
    #[arg(long)]
    out_dtype: Option<String>,
    /// Output directory (created; must not already hold weights).
    #[arg(long, short = 'o', visible_alias = "out")]
    output: PathBuf,
    /// Largest output shard, e.g. 5GB, 500MB.
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// Skip tensors that are missing or mismatched in some input (reported in merge_info.json).
    #[arg(long)]
    allow_partial: bool,
    /// Do not hash the input files for merge_info.json.
    #[arg(long)]
    no_hash: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn plan_from_flags(cli: &Cli) -> Result<MergePlan, Failure> {
    let method_name = cli.method.clone().unwrap_or_else(|| "average".into());
    let method = Method::parse(&method_name)?;
    let mut paths = cli.models.clone();
    if let Some(n) = cli.latest {
        if paths.len() != 1 {
            return Err(Failure::usage("--latest N takes exactly one run directory"));
        }
        let run = paths[0].clone();
        paths = openseek_soup::select::latest(&run, n)?;
        if paths.len() < n && !cli.quiet {
            eprintln!(
                "os-soup: note: --latest {n} but {} holds {} checkpoints (training keeps only its newest); averaging those {}",
                run.display(),
                paths.len(),
                paths.len()
            );
        }
    }
    if method_name == "weighted" && cli.weights.is_none() {
        return Err(Failure::usage("--method weighted needs --weights w1,w2,..."));
    }
    let per_model = |name: &str, values: &Option<Vec<f64>>| -> Result<Option<Vec<f64>>, Failure> {
        match values {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(vec![v[0]; paths.len()])),
            Some(v) if v.len() == paths.len() => Ok(Some(v.clone())),
            Some(v) => Err(Failure::usage(format!("--{name} has {} values for {} models", v.len(), paths.len()))),
        }
    };
    let weights = per_model("weights", &cli.weights)?;
    let density = per_model("density", &cli.density)?;
    let models = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut parameters = Params::new();
            if let Some(w) = &weights {
                parameters.insert("weight".into(), Param::Number(w[i]));
            }
            if let Some(d) = &density {
                parameters.insert("density".into(), Param::Number(d[i]));
            }
            ModelSpec { path: p.clone(), parameters }
        })
        .collect();
    let mut parameters = Params::new();
    for (k, v) in [("decay", cli.decay), ("t", cli.t), ("lambda", cli.lambda)] {
        if let Some(v) = v {
            parameters.insert(k.into(), Param::Number(v));
        }
    }
    for (k, v) in [("normalize", cli.normalize), ("rescale", cli.rescale)] {
        if let Some(v) = v {
            parameters.insert(k.into(), Param::Bool(v));
        }
    }
    let mut plan = MergePlan {
        method,
        method_name,
        base: cli.base.clone(),
        models,
        parameters,
        dtype: cli.dtype.clone(),
        out_dtype: cli.out_dtype.clone(),
        seed: cli.seed,
    };
    plan.normalize_base();
    plan.validate()?;
    Ok(plan)
}

fn main() {
    openseek_common::exit::run_main("os-soup", || {
        let cli = openseek_common::exit::parse_args::<Cli>();
        let plan = match &cli.config {
            Some(path) => {
                if !cli.models.is_empty() {
                    return Err(Failure::usage("give the models in the config or on the command line, not both"));
                }
                let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read config", &e))?;
                let mut plan = MergePlan::from_yaml(&text, &path.display().to_string())?;
                if cli.seed != 0 {
                    plan.seed = cli.seed;
                }
                if cli.dtype.is_some() {
                    plan.dtype = cli.dtype.clone();
                }
                if cli.out_dtype.is_some() {
                    plan.out_dtype = cli.out_dtype.clone();
                }
                if let Some(b) = &cli.base {
                    plan.base = Some(b.clone());
                    plan.normalize_base();
                }
                plan.validate()?;
                plan
            }
            None => plan_from_flags(&cli)?,
        };
        let options = MergeOptions {
            out: cli.output.clone(),
            max_shard_bytes: openseek_common::size::parse_size(&cli.shard_size, "--shard-size")?,
            allow_partial: cli.allow_partial,
            hash_inputs: !cli.no_hash,
            provenance: Some(Provenance::capture("os-soup", env!("CARGO_PKG_VERSION"))),
        };
        let started = std::time::Instant::now();
        let report = run_merge(&plan, &options)?;
        if !cli.quiet {
            eprintln!(
                "os-soup: {} merged {} tensors ({} copied, {} skipped) from {} inputs into {} ({} shard(s), {:.1} MB) in {:.2}s",
                plan.method_name,
                report.merged.len(),
                report.copied.len(),
                report.skipped.len(),
                plan.models.len() + plan.base.is_some() as usize,
                cli.output.display(),
                report.shards.len(),
                report.output_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })
}
