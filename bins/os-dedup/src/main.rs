//! os-dedup: remove near-duplicate documents (MinHash, datatrove's scheme, in stages that run as
//! Slurm arrays or all at once) and exact duplicates (whole documents, repeated substrings) from
//! raw text corpora, writing the kept documents and a JSON manifest.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use openseek_common::exit::run_main;
use openseek_corpus::inputs;
use openseek_corpus::options::RecordOptions;
use openseek_dedup::exact::{ExactJob, ExactMode};
use openseek_dedup::minhash::MinhashConfig;
use openseek_dedup::minhash_stages::{manifest_path, MinhashJob, Stage};

#[derive(Parser)]
#[command(
    name = "os-dedup",
    version,
    about = "Deduplicate raw text corpora (MinHash near-duplicates, exact duplicates)",
    after_help = "Examples:\n  \
      os-dedup minhash --output clean/web 'raw/*.jsonl.zst'\n  \
      os-dedup minhash --stage signatures --shard-index $SLURM_ARRAY_TASK_ID --num-shards 64 --work w --output clean/web 'raw/*'\n\n\
      Inputs: what os-tokenize reads (.jsonl/.ndjson, .json, .parquet, .txt, optionally .gz/.zst; globs; directories).\n\
      Outputs: OUTPUT/<input name> (JSON lines; other layouts become .jsonl) and the manifest OUTPUT.json."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Near-duplicate removal with MinHash LSH, as datatrove's minhash_deduplication (same documents removed).
    Minhash(MinhashArgs),
    /// Exact duplicates: whole documents (normalised text), or repeated spans cut out (suffix array).
    Exact(ExactArgs),
}

#[derive(Args)]
struct ExactArgs {
    #[command(flatten)]
    common: Common,
    /// documents: drop a document whose normalised text was seen before; substrings: cut every
    /// later occurrence of a span of at least --min-bytes bytes repeated anywhere in the corpus.
    #[arg(long, value_enum, default_value_t = ExactModeArg::Documents)]
    mode: ExactModeArg,
    /// Shortest repeated span cut in substrings mode (bytes).
    #[arg(long, default_value_t = 100)]
    min_bytes: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExactModeArg {
    Documents,
    Substrings,
}

#[derive(Args)]
struct Common {
    /// Output directory for the kept documents; the manifest is written beside it as OUTPUT.json.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    records: RecordOptions,
    /// Replace existing outputs (and redo finished parts).
    #[arg(long)]
    force: bool,
    /// No progress messages.
    #[arg(long, short)]
    quiet: bool,
    /// Input files, globs or directories.
    #[arg(required = true)]
    inputs: Vec<String>,
}

#[derive(Args)]
struct MinhashArgs {
    #[command(flatten)]
    common: Common,
    /// Which stage to run: all of them, or one (for Slurm arrays: signatures and filter per input file, buckets per band, clusters once).
    #[arg(long, value_enum, default_value_t = StageArg::All)]
    stage: StageArg,
    /// Work directory for the stages' files [default: OUTPUT.work].
    #[arg(long)]
    work: Option<PathBuf>,
    /// This task's share when a stage runs as a job array (with --num-shards; e.g. $SLURM_ARRAY_TASK_ID).
    #[arg(long, requires = "num_shards")]
    shard_index: Option<usize>,
    /// Number of array tasks sharing the stage.
    #[arg(long, requires = "shard_index")]
    num_shards: Option<usize>,
    /// Words per shingle.
    #[arg(long, default_value_t = 5)]
    n_grams: usize,
    /// Number of bands (datatrove's num_buckets).
    #[arg(long, default_value_t = 14)]
    bands: usize,
    /// Hashes per band.
    #[arg(long, default_value_t = 8)]
    hashes_per_band: usize,
    /// Seed of the hash permutations (datatrove's default 1).
    #[arg(long, default_value_t = 1)]
    seed: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum StageArg {
    All,
    Signatures,
    Buckets,
    Clusters,
    Filter,
}

fn main() {
    let cli = openseek_common::exit::parse_args::<Cli>();
    run_main("os-dedup", || match cli.command {
        Command::Exact(args) => {
            let common = &args.common;
            if args.min_bytes == 0 {
                return Err(openseek_common::Failure::usage("--min-bytes must be at least 1"));
            }
            let job = ExactJob {
                inputs: inputs::resolve(&common.inputs)?,
                output: common.output.clone(),
                mode: match args.mode {
                    ExactModeArg::Documents => ExactMode::Documents,
                    ExactModeArg::Substrings => ExactMode::Substrings { min_bytes: args.min_bytes },
                },
                text_key: common.records.text_key.clone(),
                on_error: common.records.on_error,
                workers: common.records.workers(),
                force: common.force,
                quiet: common.quiet,
            };
            let report = job.run()?;
            if !common.quiet {
                eprintln!(
                    "os-dedup: {} documents, {} kept, {} dropped, {} edited, {} of {} text bytes removed in {:.1}s -> {}/",
                    report.documents, report.kept, report.dropped, report.edited, report.removed_bytes, report.text_bytes, report.wall_seconds, job.output.display()
                );
            }
            Ok(())
        }
        Command::Minhash(args) => {
            let common = &args.common;
            if args.n_grams == 0 || args.bands == 0 || args.hashes_per_band == 0 {
                return Err(openseek_common::Failure::usage("--n-grams, --bands and --hashes-per-band must be at least 1"));
            }
            let shard = match (args.shard_index, args.num_shards) {
                (Some(i), Some(n)) if n == 0 || i >= n => {
                    return Err(openseek_common::Failure::usage(format!("--shard-index {i} must be below --num-shards {n}")))
                }
                (Some(i), Some(n)) => Some((i, n)),
                _ => None,
            };
            let job = MinhashJob {
                inputs: inputs::resolve(&common.inputs)?,
                shard,
                work: args.work.clone().unwrap_or_else(|| {
                    let mut p = common.output.as_os_str().to_owned();
                    p.push(".work");
                    PathBuf::from(p)
                }),
                output: common.output.clone(),
                config: MinhashConfig { n_grams: args.n_grams, num_buckets: args.bands, hashes_per_bucket: args.hashes_per_band, seed: args.seed },
                text_key: common.records.text_key.clone(),
                on_error: common.records.on_error,
                workers: common.records.workers(),
                force: common.force,
                quiet: common.quiet,
            };
            let stage = match args.stage {
                StageArg::All => Stage::All,
                StageArg::Signatures => Stage::Signatures,
                StageArg::Buckets => Stage::Buckets,
                StageArg::Clusters => Stage::Clusters,
                StageArg::Filter => Stage::Filter,
            };
            if let Some(report) = job.run(stage)? {
                if !common.quiet {
                    eprintln!(
                        "os-dedup: {} documents, {} kept, {} removed as near-duplicates ({} clusters) in {:.1}s -> {}/ and {}",
                        report.documents,
                        report.kept,
                        report.removed,
                        report.clusters.clusters,
                        report.wall_seconds,
                        job.output.display(),
                        manifest_path(&job.output).display()
                    );
                }
            }
            Ok(())
        }
    });
}
