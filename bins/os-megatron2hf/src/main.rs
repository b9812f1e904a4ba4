//! os-megatron2hf: convert a Megatron / FlagScale checkpoint (legacy `torch` or `torch_dist`
//! format, any tensor / pipeline / expert parallel layout) of a DeepSeek-V3-style model into a
//! Hugging Face checkpoint, tensor by tensor.

use std::path::PathBuf;

use clap::Parser;
use openseek_common::{progress::Progress, provenance::Provenance};
use openseek_megatron::{convert, Options};

#[derive(Parser)]
#[command(name = "os-megatron2hf", version, about = "Megatron / FlagScale checkpoints (torch, torch_dist) -> Hugging Face safetensors")]
struct Cli {
    /// Megatron's save directory (holding latest_checkpointed_iteration.txt), or an iteration directory.
    #[arg(long)]
    load: PathBuf,
    /// Iteration to convert (a number or `release`); default: latest_checkpointed_iteration.txt.
    #[arg(long)]
    iteration: Option<String>,
    /// Output directory (created; must not already hold a checkpoint).
    #[arg(long, short = 'o', visible_alias = "out")]
    output: PathBuf,
    /// True vocabulary size; Megatron's embedding rows past it are padding and are dropped
    /// (default: args.vocab_size when the checkpoint has it).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Largest output shard, e.g. 5GB, 500MB.
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// Convert even if some model keys are unknown (they are listed in megatron2hf_info.json).
    #[arg(long)]
    skip_unknown: bool,
    /// Copy the tokenizer files of this directory into the output.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// BOS token id for config.json and generation_config.json.
    #[arg(long)]
    bos_token_id: Option<i64>,
    /// EOS token id for config.json and generation_config.json.
    #[arg(long)]
    eos_token_id: Option<i64>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn main() {
    openseek_common::exit::run_main("os-megatron2hf", || {
        let cli = openseek_common::exit::parse_args::<Cli>();
        let opts = Options {
            load: cli.load,
            iteration: cli.iteration,
            out: cli.output.clone(),
            vocab_size: cli.vocab_size,
            max_shard_bytes: openseek_common::size::parse_size(&cli.shard_size, "--shard-size")?,
            skip_unknown: cli.skip_unknown,
            tokenizer: cli.tokenizer,
            bos_token_id: cli.bos_token_id,
            eos_token_id: cli.eos_token_id,
        };
        let started = std::time::Instant::now();
        let stop = openseek_common::signals::watch();
        let mut progress = Progress::new("os-megatron2hf", None, cli.quiet);
        let report = convert(&opts, Provenance::capture("os-megatron2hf", env!("CARGO_PKG_VERSION")), |name, done, total| {
            progress.update(done, || format!("{name} ({:.0}% of {:.1} MB)", 100.0 * done as f64 / total.max(1) as f64, total as f64 / 1e6));
            stop.check("nothing was written; run again to convert")
        })?;
        progress.finish();
        if !cli.quiet {
            eprintln!(
                "os-megatron2hf: {} checkpoint {} (TP {} PP {} EP {}) -> {}: {} HF tensors from {} Megatron tensors, {:.1} MB in {} shard(s), {:.2}s",
                report.format,
                report.source.display(),
                report.tensor_parallel,
                report.pipeline_parallel,
                report.expert_parallel,
                cli.output.display(),
                report.hf_tensors,
                report.megatron_tensors,
                report.total_bytes as f64 / 1e6,
                report.shards.len(),
                started.elapsed().as_secs_f64()
            );
            for (why, n) in &report.ignored {
                eprintln!("  ignored: {n} x {why}");
            }
            for k in &report.unknown {
                eprintln!("  unknown, not converted: {k}");
            }
        }
        Ok(())
    })
}
