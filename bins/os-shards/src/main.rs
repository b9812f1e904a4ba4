//! os-shards: inspect, check, merge, dump Megatron indexed-dataset shards (`PREFIX.bin` +
//! `PREFIX.idx`) and cut them into quality buckets by score. Thin: the work is in
//! `openseek_shards::indexed` and `openseek_shards::select`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use openseek_common::provenance::Provenance;
use openseek_common::{exit::run_main, AtomicOutputs, ExitCode, Failure};
use openseek_shards::indexed::{self, report, IndexedDataset};
use openseek_shards::select::{bucket_prefix, parse_buckets, Missing, SelectOptions, Weight};

#[derive(Parser)]
#[command(
    name = "os-shards",
    version,
    about = "Inspect, check, merge, dump Megatron indexed-dataset token shards (.bin/.idx), and cut them into quality buckets",
    after_help = "A shard is PREFIX.bin + PREFIX.idx; give PREFIX with or without the extension.\n\n\
      Examples:\n  os-shards info data/part_*.idx\n  os-shards check --vocab-size 151851 data/part_0 data/part_1\n  \
      os-shards merge --output data/all data/part_0 data/part_1\n  os-shards dump data/part_0 --document 3\n  \
      os-shards select --scores scores/part_*.jsonl --buckets high=0.2,mid=0.5,low=0.3 --output sel/cc data/cc_0 data/cc_1"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per shard: dtype, sequences, documents, tokens, bytes; then the total.
    Info {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        prefixes: Vec<PathBuf>,
    },
    /// Validate shards fully (structure and every token); exit 65 if any is corrupt.
    Check {
        /// Also fail shards holding a token id >= this vocabulary size.
        #[arg(long)]
        vocab_size: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        prefixes: Vec<PathBuf>,
    },
    /// Concatenate shards of one dtype into PREFIX.bin/.idx plus a PREFIX.json manifest (atomic).
    Merge {
        /// Output prefix.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Replace existing output files.
        #[arg(long)]
        force: bool,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Cut shards into quality buckets by `os-eval score --shards` records: documents ranked by mean
    /// log-probability (best first), each bucket written as OUTPUT-NAME.bin/.idx in the documents'
    /// original order, and OUTPUT.json recording the cut (atomic).
    Select {
        /// `os-eval score --shards` outputs (JSON lines; the parts of an array job in any order).
        /// A record's `shard` is matched to a given shard by file (from the current directory),
        /// else by its file name when only one given shard has it; records of others are ignored.
        #[arg(long, required = true, num_args = 1..)]
        scores: Vec<PathBuf>,
        /// Buckets, best first: NAME=FRACTION,… (fractions summing to 1).
        #[arg(long, default_value = "high=0.3333333333,mid=0.3333333333,low=0.3333333334")]
        buckets: String,
        /// What the fractions count.
        #[arg(long, value_enum, default_value = "documents")]
        weight: WeightArg,
        /// A document without a score: stop (exit 65), or leave it out.
        #[arg(long, value_enum, default_value = "error")]
        missing: MissingArg,
        /// Output prefix: OUTPUT-NAME.bin/.idx per bucket, OUTPUT.json.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Replace existing output files.
        #[arg(long)]
        force: bool,
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// Print sequences as JSON lines: {"sequence","document","length","tokens"}.
    Dump {
        prefix: PathBuf,
        /// Only this sequence.
        #[arg(long, conflicts_with = "document")]
        sequence: Option<usize>,
        /// Only the sequences of this document.
        #[arg(long)]
        document: Option<usize>,
        /// At most this many lines.
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn main() {
    let args = openseek_common::exit::parse_args::<Args>();
    run_main("os-shards", || match args.command {
        Command::Info { json, prefixes } => info(&prefixes, json),
        Command::Check { vocab_size, json, prefixes } => check(&prefixes, vocab_size, json),
        Command::Merge { output, force, inputs } => merge(&output, force, &inputs),
        Command::Dump { prefix, sequence, document, limit } => dump(&prefix, sequence, document, limit),
        Command::Select { scores, buckets, weight, missing, output, force, shards } => {
            let weight = match weight {
                WeightArg::Documents => Weight::Documents,
                WeightArg::Tokens => Weight::Tokens,
            };
            let missing = match missing {
                MissingArg::Error => Missing::Error,
                MissingArg::Drop => Missing::Drop,
            };
            select(&scores, SelectOptions { buckets: parse_buckets(&buckets)?, weight, missing }, &output, force, &shards)
        }
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WeightArg {
    Documents,
    Tokens,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MissingArg {
    Error,
    Drop,
}

fn select(scores: &[PathBuf], options: SelectOptions, output: &Path, force: bool, inputs: &[PathBuf]) -> Result<(), Failure> {
    let provenance = Provenance::capture("os-shards", env!("CARGO_PKG_VERSION"));
    let manifest_path = PathBuf::from(format!("{}.json", output.display()));
    let mut targets = vec![manifest_path.clone()];
    for b in &options.buckets {
        let prefix = bucket_prefix(output, &b.name);
        targets.extend([indexed::bin_path(&prefix), indexed::idx_path(&prefix)]);
    }
    openseek_common::output::refuse_existing(&targets, force)?;
    let shards = prefixes(inputs).iter().map(|p| IndexedDataset::open(p)).collect::<Result<Vec<_>, _>>()?;
    let mut outputs = AtomicOutputs::new();
    let report = openseek_shards::select::select(&shards, scores, output, &options, &mut outputs)?;
    let manifest = serde_json::json!({
        "tool": "os-shards select",
        "version": env!("CARGO_PKG_VERSION"),
        "provenance": provenance,
        "config": {
            "shards": shards.iter().map(|s| s.prefix().display().to_string()).collect::<Vec<_>>(),
            "scores": scores,
            "options": options,
            "ranking": "mean log-probability per document (sum over its sequences' scored tokens), best first",
        },
        "report": report,
    });
    outputs.write_json(&manifest_path, &manifest)?;
    outputs.commit()?;
    for b in &report.buckets {
        eprintln!(
            "os-shards: {}: {} documents, {} tokens, mean log-prob {}",
            b.prefix.display(),
            b.documents,
            b.tokens,
            match (b.mean_logprob_max, b.mean_logprob_min) {
                (Some(hi), Some(lo)) => format!("{hi:.4} .. {lo:.4}"),
                _ => "(empty)".into(),
            }
        );
    }
    if report.unscorable_documents + report.missing_documents + report.other_shard_records > 0 {
        eprintln!(
            "os-shards: left out {} single-token documents (nothing to score) and {} without scores; ignored {} records of other shards",
            report.unscorable_documents, report.missing_documents, report.other_shard_records
        );
    }
    Ok(())
}

fn prefixes(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths.iter().map(|p| indexed::strip_extension(p)).collect()
}

fn stdout_failure(e: std::io::Error) -> Failure {
    Failure::io(format!("cannot write to stdout: {e}"))
}

fn info(paths: &[PathBuf], json: bool) -> Result<(), Failure> {
    let mut shards = Vec::new();
    for prefix in prefixes(paths) {
        shards.push(IndexedDataset::open(&prefix)?.summary());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report::info_json(&shards)).unwrap());
    } else {
        print!("{}", report::info_table(&shards));
    }
    Ok(())
}

fn check(paths: &[PathBuf], vocab_size: Option<u64>, json: bool) -> Result<(), Failure> {
    let mut failures: Vec<Failure> = Vec::new();
    let mut results = Vec::new();
    for prefix in prefixes(paths) {
        let result = indexed::check(&prefix).and_then(|r| match (vocab_size, r.max_token) {
            (Some(v), Some(max)) if max as u64 >= v => Err(Failure::data(format!(
                "{}: holds token id {max}, but the vocabulary has {v} ids (0..{v}): tokenized with another tokenizer?",
                indexed::bin_path(&prefix).display()
            ))),
            _ => Ok(r),
        });
        match result {
            Ok(r) => {
                if !json {
                    let ids = match (r.min_token, r.max_token) {
                        (Some(lo), Some(hi)) => format!(", token ids {lo}..={hi}"),
                        _ => String::new(),
                    };
                    println!(
                        "{}: OK ({}, {} sequences, {} documents, {} tokens{ids}{})",
                        prefix.display(),
                        r.dtype,
                        r.sequences,
                        r.documents,
                        r.tokens,
                        if r.has_sequence_modes { ", with sequence modes" } else { "" }
                    );
                }
                results.push(serde_json::json!({ "prefix": prefix, "ok": true, "report": r }));
            }
            Err(e) => {
                let status = if e.code == ExitCode::DataErr { "CORRUPT" } else { "ERROR" };
                if !json {
                    println!("{}: {status}: {}", prefix.display(), e.message);
                }
                results.push(serde_json::json!({ "prefix": prefix, "ok": false, "exit_code": e.code as i32, "error": e.message }));
                failures.push(e);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results).unwrap());
    }
    let total = results.len();
    match failures.iter().find(|f| f.code == ExitCode::DataErr).or(failures.first()) {
        None => Ok(()),
        Some(worst) => Err(Failure::new(
            worst.code,
            format!("{} of {total} shard(s) failed the check; the first: {}", failures.len(), worst.message),
        )),
    }
}

fn merge(output: &Path, force: bool, inputs: &[PathBuf]) -> Result<(), Failure> {
    let provenance = Provenance::capture("os-shards", env!("CARGO_PKG_VERSION"));
    let output = indexed::strip_extension(output);
    let manifest_path = PathBuf::from(format!("{}.json", output.display()));
    let targets = [indexed::bin_path(&output), indexed::idx_path(&output), manifest_path.clone()];
    openseek_common::output::refuse_existing(&targets, force)?;
    let mut outputs = AtomicOutputs::new();
    let merged = indexed::merge_detailed(&prefixes(inputs), &output, &mut outputs)?;
    let manifest = report::merge_manifest(&output, &merged, &provenance);
    outputs.write_json(&manifest_path, &manifest)?;
    outputs.commit()?;
    let s = &merged.output;
    eprintln!(
        "os-shards: merged {} shard(s) into {}: {}, {} sequences, {} documents, {} tokens",
        merged.inputs.len(),
        output.display(),
        s.dtype,
        s.sequences,
        s.documents,
        s.tokens
    );
    Ok(())
}

fn dump(path: &Path, sequence: Option<usize>, document: Option<usize>, limit: Option<usize>) -> Result<(), Failure> {
    let ds = IndexedDataset::open(&indexed::strip_extension(path))?;
    let range = match (sequence, document) {
        (Some(i), _) => {
            if i >= ds.num_sequences() {
                return Err(Failure::usage(format!("--sequence {i}: {} has {} sequences", ds.prefix().display(), ds.num_sequences())));
            }
            i..i + 1
        }
        (None, Some(d)) => {
            if d >= ds.num_documents() {
                return Err(Failure::usage(format!("--document {d}: {} has {} documents", ds.prefix().display(), ds.num_documents())));
            }
            ds.document_sequences(d)
        }
        (None, None) => 0..ds.num_sequences(),
    };
    let count = limit.unwrap_or(usize::MAX).min(range.len());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in range.take(count) {
        match report::write_dump_line(&mut out, i, ds.document_of_sequence(i), &ds.sequence(i)) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.map_err(stdout_failure)?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(stdout_failure),
    }
}
