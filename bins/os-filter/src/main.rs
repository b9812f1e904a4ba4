//! os-filter: apply a TOML recipe of rule filters to raw text corpora in one streaming pass,
//! writing the kept documents (in the input's format) and a manifest with per-filter counts.

use std::path::PathBuf;

use clap::Parser;
use openseek_common::exit::run_main;
use openseek_common::Failure;
use openseek_corpus::inputs;
use openseek_corpus::options::RecordOptions;
use openseek_filter::pass::FilterJob;

#[derive(Parser)]
#[command(
    name = "os-filter",
    version,
    about = "Filter raw text corpora with a recipe of rules, in one streaming pass",
    after_help = "Example:\n  os-filter --recipe recipes/filter-openseek.toml --output clean/web 'dedup/web/*.jsonl.zst'\n\n\
      Recipe: [[filter]] tables with kind = char_length | mean_sentence_length | symbol_ratio | gopher_quality |\n\
      gopher_repetition | average_line_length | special_characters | word_repetition | language | traditional_to_simplified | word_list | decontaminate | score (see the README).\n\
      Outputs: OUTPUT/<input name> (JSON lines) and the manifest OUTPUT.json."
)]
struct Args {
    /// The recipe (TOML).
    #[arg(long)]
    recipe: PathBuf,
    /// Output directory for the kept documents; the manifest is written beside it as OUTPUT.json.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    records: RecordOptions,
    /// This task's share of the input files when run as a job array (with --num-shards).
    #[arg(long, requires = "num_shards")]
    shard_index: Option<usize>,
    /// Number of array tasks.
    #[arg(long, requires = "shard_index")]
    num_shards: Option<usize>,
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

fn main() {
    let args = openseek_common::exit::parse_args::<Args>();
    run_main("os-filter", || {
        let shard = match (args.shard_index, args.num_shards) {
            (Some(i), Some(n)) if n == 0 || i >= n => return Err(Failure::usage(format!("--shard-index {i} must be below --num-shards {n}"))),
            (Some(i), Some(n)) => Some((i, n)),
            _ => None,
        };
        let inputs = inputs::resolve(&args.inputs)?;
        if inputs.iter().any(|i| i.is_stdin()) {
            return Err(Failure::usage("os-filter writes one output per input file; name files instead of -"));
        }
        let job = FilterJob {
            inputs,
            shard,
            output: args.output.clone(),
            recipe: args.recipe.clone(),
            filters: openseek_filter::recipe::load(&args.recipe)?,
            text_key: args.records.text_key.clone(),
            on_error: args.records.on_error,
            workers: args.records.workers(),
            force: args.force,
            quiet: args.quiet,
        };
        if let Some(report) = job.run()? {
            if !args.quiet {
                let per_filter: Vec<String> = report.counts.iter().map(|c| format!("{} -{}", c.name, c.dropped)).collect();
                eprintln!(
                    "os-filter: {} documents, {} kept ({}) in {:.1}s -> {}/",
                    report.documents,
                    report.kept,
                    per_filter.join(", "),
                    report.wall_seconds,
                    args.output.display()
                );
            }
        }
        Ok(())
    });
}
