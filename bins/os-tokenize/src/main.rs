//! os-tokenize: raw text corpora to Megatron `.bin/.idx` token shards (plus a JSON manifest), or
//! to the token document stream on stdout for `os-tokenize … | os-pack …`.

use std::path::PathBuf;

use clap::Parser;
use openseek_common::{exit::run_main, Failure};
use openseek_corpus::inputs;
use openseek_corpus::options::RecordOptions;
use openseek_corpus::pipeline::{self, Output, TokenizeConfig};
use openseek_tokenizer::Tokenizer;

#[derive(Parser)]
#[command(
    name = "os-tokenize",
    version,
    about = "Tokenize raw text into Megatron-compatible token shards",
    after_help = "Examples:\n  \
      os-tokenize --tokenizer ../shared/tokenizers/openseek --wrap-docs --output data/part_0 'raw/*.jsonl.zst'\n  \
      os-tokenize --tokenizer tok/tokenizer.json --output - corpus.parquet | os-pack …\n\n\
      Inputs: .jsonl/.ndjson, .json (array or lines), .parquet, .txt (one document per file), each .jsonl/.json/.txt\n\
      optionally .gz or .zst; globs; directories (walked); - for JSON lines on stdin."
)]
struct Args {
    /// HF tokenizer.json (file or directory), or a directory with OpenSeek's qwen.tiktoken + tokenizer_config.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output prefix (writes PREFIX.bin, PREFIX.idx, PREFIX.json), or - for the token document stream on stdout.
    #[arg(long, short = 'o')]
    output: String,
    /// Wrap each document as BOS + text + EOS, as OpenSeek's preprocessing does (ids from the tokenizer config).
    #[arg(long)]
    wrap_docs: bool,
    #[command(flatten)]
    records: RecordOptions,
    /// This run's part of the inputs when split over a job array (use with --num-shards; e.g. $SLURM_ARRAY_TASK_ID).
    #[arg(long, requires = "num_shards")]
    shard_index: Option<usize>,
    /// Number of parts the inputs are split into (files dealt round-robin in sorted order).
    #[arg(long, requires = "shard_index")]
    num_shards: Option<usize>,
    /// With --shard-index past the number of input files (a job array with more tasks than
    /// files): write nothing and exit 0 instead of failing.
    #[arg(long, requires = "shard_index")]
    skip_empty_shard: bool,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Input files, globs, directories, or - (JSON lines on stdin).
    #[arg(required = true)]
    inputs: Vec<String>,
}

fn main() {
    // The stop handlers first: SIGTERM while the tokenizer loads then ends the run at its first
    // check with exit 75 (as later), instead of killing it.
    openseek_common::signals::watch();
    let args = openseek_common::exit::parse_args::<Args>();
    run_main("os-tokenize", || {
        let mut resolved = inputs::resolve(&args.inputs)?;
        let shard = match (args.shard_index, args.num_shards) {
            (Some(i), Some(n)) => {
                if args.skip_empty_shard && i < n && resolved.len() <= i {
                    eprintln!("os-tokenize: shard {i} of {n} has no input files; nothing to do (--skip-empty-shard)");
                    return Ok(());
                }
                resolved = inputs::select_shard(resolved, i, n)?;
                Some((i, n))
            }
            _ => None,
        };
        let output = if args.output == "-" { Output::Stdout } else { Output::Shards(PathBuf::from(&args.output)) };
        if output == Output::Stdout && resolved.iter().any(|i| i.is_stdin()) && args.inputs.len() > 1 {
            return Err(Failure::usage("stdin can only be combined with --output PREFIX when it is the only input"));
        }
        let tokenizer = Tokenizer::load(&args.tokenizer)?;
        let config = TokenizeConfig {
            inputs: resolved,
            text_key: args.records.text_key.clone(),
            wrap_docs: args.wrap_docs,
            workers: args.records.workers(),
            on_error: args.records.on_error,
            output,
            force: args.force,
            quiet: args.quiet,
            shard,
        };
        let report = pipeline::run(&config, &tokenizer)?;
        if !args.quiet {
            let skipped: u64 = report.skipped.values().sum();
            let rate = report.tokens as f64 / report.wall_seconds.max(1e-9);
            eprintln!(
                "os-tokenize: {} documents, {} tokens ({}) from {} inputs in {:.1}s ({:.2}M tokens/s){}{}",
                report.documents,
                report.tokens,
                report.dtype,
                report.inputs.len(),
                report.wall_seconds,
                rate / 1e6,
                if skipped > 0 { format!(", {skipped} records skipped") } else { String::new() },
                match &config.output {
                    Output::Shards(p) => format!(" -> {}.{{bin,idx,json}}", p.display()),
                    Output::Stdout => String::new(),
                }
            );
        }
        Ok(())
    });
}
