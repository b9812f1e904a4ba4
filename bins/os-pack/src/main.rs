//! os-pack: turn documents (a Megatron shard, or the token stream of `os-tokenize --output -`)
//! into training samples of seq_len + 1 tokens, in a memory-mapped sample store.

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use openseek_common::{provenance::Provenance, AtomicOutputs, Failure};
use openseek_mix::{blend, mix, pack, recipe, store};
use openseek_shards::docstream::DocStreamReader;
use openseek_shards::indexed::{DType, IndexedDataset, IndexedDatasetWriter};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Strategy {
    /// Megatron GPTDataset: shuffled documents concatenated, samples cross documents.
    Megatron,
    /// Best-fit-decreasing packing of whole documents (longer ones split), padding the rest.
    Bfd,
    /// One document per sample, cut or padded.
    Truncate,
    /// TRL's pack_dataset strategy "bfd" exactly (rows of seq_len + 1 tokens = TRL's seq_length;
    /// longer documents truncated, the rest dropped; per map batch; no shuffle).
    TrlBfd,
    /// TRL's pack_dataset strategy "bfd_split" exactly (longer documents split into row-sized fragments).
    TrlBfdSplit,
}

#[derive(Parser)]
#[command(name = "os-pack", version, about = "Pack documents into training samples of seq_len + 1 tokens")]
struct Cli {
    /// A Megatron dataset prefix (PREFIX.bin/.idx), or "-" for a token document stream on stdin.
    #[arg(long)]
    input: String,
    /// Output directory of the sample store.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Replace a store already in the output directory (its files are removed first).
    #[arg(long)]
    force: bool,
    #[arg(long, value_enum, default_value = "megatron")]
    strategy: Strategy,
    #[arg(long)]
    seq_len: u32,
    /// Samples (megatron strategy; default one epoch). Megatron builds whole epochs, so the store
    /// may hold more: a reader takes the first N.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    samples: Option<u64>,
    /// numpy RandomState seed (Megatron's --seed).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Megatron split string (megatron strategy), e.g. "998,1,1".
    #[arg(long, default_value = "1,0,0")]
    split: String,
    #[arg(long, default_value = "train", value_parser = ["train", "valid", "test"])]
    split_name: String,
    /// Token id that fills padding (recorded in the manifest; readers mask padding by position).
    #[arg(long)]
    pad_token: Option<u32>,
    /// EOD token id, recorded for readers.
    #[arg(long)]
    eod_token: Option<u32>,
    /// TRL strategies: the rows of each `datasets.map` batch are packed on their own (map's batch_size).
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    trl_batch_size: usize,
    /// TRL strategies: map's num_proc (the rows are split into this many contiguous shards first).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    trl_num_proc: usize,
    /// Machine-readable summary.
    #[arg(long)]
    json: bool,
}

fn main() {
    openseek_common::exit::run_main("os-pack", || run(openseek_common::exit::parse_args::<Cli>()))
}

/// Write a token stream from stdin as DIR/documents.{bin,idx}; returns the prefix.
fn stream_to_shard(dir: &Path, outputs: &mut AtomicOutputs) -> Result<PathBuf, Failure> {
    let stdin = std::io::stdin();
    let mut reader = DocStreamReader::new(std::io::BufReader::with_capacity(1 << 20, stdin.lock()), "stdin")?;
    let dtype = match reader.vocab_size() {
        0 => DType::for_vocab_size(usize::MAX),
        v => DType::for_vocab_size(v as usize),
    };
    let prefix = dir.join(store::STREAM_DOCUMENTS);
    let mut w = IndexedDatasetWriter::create(&prefix, dtype, outputs)?;
    let mut doc = Vec::new();
    while reader.next_document(&mut doc)? {
        w.add_document(&doc)?;
    }
    w.finish(outputs)?;
    Ok(prefix)
}

fn run(cli: Cli) -> Result<(), Failure> {
    if cli.seq_len < 2 {
        return Err(Failure::usage("--seq-len must be at least 2"));
    }
    let seed = u32::try_from(cli.seed).map_err(|_| Failure::usage("--seed must be in 0..=4294967295"))?;
    if cli.strategy != Strategy::Megatron && cli.samples.is_some() {
        return Err(Failure::usage("--samples applies to --strategy megatron; packing takes every document once"));
    }
    // The documents an earlier os-pack of a stream wrote into this store: replacing the store
    // would remove its own input.
    let input = Path::new(&cli.input);
    let input_is_the_store = cli.input != "-"
        && input.file_name().is_some_and(|n| n == store::STREAM_DOCUMENTS)
        && input.parent().and_then(|p| std::path::absolute(if p.as_os_str().is_empty() { Path::new(".") } else { p }).ok())
            == std::path::absolute(&cli.output).ok();
    if input_is_the_store {
        return Err(Failure::usage(format!("--input {} is the documents of the output store {}; write the new store elsewhere", cli.input, cli.output.display())));
    }
    store::prepare_output(&cli.output, cli.force)?;
    let provenance = serde_json::to_value(Provenance::capture("os-pack", env!("CARGO_PKG_VERSION"))).ok();
    let mut outputs = AtomicOutputs::new();
    let prefix = if cli.input == "-" {
        // The documents must exist before the index over them: commit them first.
        let p = stream_to_shard(&cli.output, &mut outputs)?;
        std::mem::take(&mut outputs).commit()?;
        p
    } else {
        PathBuf::from(&cli.input)
    };
    let split_index = mix::SPLIT_NAMES.iter().position(|s| *s == cli.split_name).unwrap();
    let manifest = match cli.strategy {
        Strategy::Megatron => {
            let shard = IndexedDataset::open(&prefix)?;
            let fractions = blend::parse_split(&cli.split).map_err(Failure::usage)?;
            let range = blend::split_ranges(&fractions, shard.num_sequences() as u64)[split_index]
                .clone()
                .ok_or_else(|| Failure::usage(format!("split {:?} leaves the {} split empty", cli.split, cli.split_name)))?;
            let tokens: u64 = (range.start..range.end).map(|s| shard.sequence_length(s as usize) as u64).sum();
            let samples = match cli.samples {
                Some(n) => n,
                None => tokens.saturating_sub(1) / cli.seq_len as u64,
            };
            let entry = recipe::DatasetEntry { prefix: prefix.display().to_string(), weight: Some(1.0), tokens: None, name: None };
            let r = recipe::Recipe {
                name: None,
                description: None,
                seq_len: Some(cli.seq_len),
                seed: Some(cli.seed),
                split: Some(cli.split.clone()),
                total_samples: Some(samples.max(1)),
                total_tokens: None,
                data_root: None,
                source: None,
                datasets: vec![entry],
                stages: vec![],
            };
            let (spec, _) = recipe::resolve(&r, None, &recipe::Overrides::default())?;
            // One unweighted prefix: Megatron builds the GPTDataset for exactly N samples, no blend.
            let plan = mix::plan(spec, split_index, 0.0)?;
            mix::build(plan, &cli.output, provenance, false)?
        }
        Strategy::Bfd | Strategy::Truncate | Strategy::TrlBfd | Strategy::TrlBfdSplit => {
            let shard = IndexedDataset::open(&prefix)?;
            let lengths = shard.sequence_lengths();
            let range = 0..lengths.len() as u32;
            let trl = |overflow| pack::trl_best_fit_decreasing(&lengths, range.clone(), cli.seq_len, overflow, cli.trl_batch_size, cli.trl_num_proc);
            let packed = match cli.strategy {
                Strategy::Bfd => pack::best_fit_decreasing(&lengths, range.clone(), cli.seq_len, seed),
                Strategy::TrlBfd => trl(pack::Overflow::Truncate),
                Strategy::TrlBfdSplit => trl(pack::Overflow::Split),
                _ => pack::truncate(&lengths, range.clone(), cli.seq_len),
            };
            pack::write_packed(outputs, &cli.output, &prefix, &shard, range, packed, cli.seq_len, seed, cli.pad_token, cli.eod_token, provenance)?
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&manifest).unwrap());
    } else {
        print!("wrote {}: {} samples of {} tokens", cli.output.display(), manifest.num_samples, cli.seq_len + 1);
        if let Some(asked) = cli.samples.filter(|&n| n != manifest.num_samples) {
            let d = &manifest.datasets[0];
            print!(
                " ({asked} asked for: Megatron's GPTDataset builds whole epochs, and {} epoch(s) of {} tokens make {} samples; \
                 a reader takes the first {asked})",
                d.epochs, d.tokens_available, manifest.num_samples
            );
        }
        if let Some(p) = &manifest.packing {
            print!(
                ", {} documents ({} split, {} tokens truncated), padding {} tokens = {:.2}%",
                p.documents,
                p.split_documents,
                p.truncated_tokens,
                p.padding_tokens,
                100.0 * p.padding_fraction
            );
        }
        println!();
    }
    Ok(())
}
