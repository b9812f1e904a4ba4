//! os-mix: blend many token shard datasets into one Megatron-identical sample index (or a
//! curriculum of such blends), report a plan with --dry-run, and look at samples with `inspect`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use openseek_common::{provenance::Provenance, Failure};
use openseek_mix::{inspect, mix, recipe};

#[derive(Parser)]
#[command(name = "os-mix", version, about = "Blend token shards into one Megatron-identical sample index")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print samples of a store: dataset, document ids, token ids, and text with --decode.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Megatron's data_path: "W1 PREFIX1 W2 PREFIX2 ..." (weights need not sum to 1).
    #[arg(long, conflicts_with = "recipe")]
    weights: Option<String>,
    /// A recipe file (.toml, .yaml, .json): datasets or curriculum stages, budget, seed, split.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Sequence length (tokens per sample, plus one for the labels).
    #[arg(long)]
    seq_len: Option<u32>,
    /// Total samples of the blend.
    #[arg(long, conflicts_with = "tokens", value_parser = clap::value_parser!(u64).range(1..))]
    samples: Option<u64>,
    /// Total tokens of the blend (samples = ceil(tokens / seq_len)).
    #[arg(long)]
    tokens: Option<f64>,
    /// numpy RandomState seed (Megatron's --seed; default 1234).
    #[arg(long)]
    seed: Option<u64>,
    /// Megatron split string, e.g. "998,1,1" (default "1,0,0", or the recipe's).
    #[arg(long)]
    split: Option<String>,
    /// Which split to build.
    #[arg(long, default_value = "train", value_parser = ["train", "valid", "test"])]
    split_name: String,
    /// Directory the prefixes are relative to (overrides the recipe's data_root).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Output directory of the sample store.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Replace a store already in the output directory (its files are removed first).
    #[arg(long)]
    force: bool,
    /// Print the plan (weight, tokens available and used, epochs, share per dataset) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Warn when a dataset is used more than this many times over.
    #[arg(long, default_value_t = 1.25)]
    repeat_warning: f64,
    /// Machine-readable plan/summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// A store written by os-mix or os-pack.
    dir: PathBuf,
    /// Samples A:B (B exclusive; either may be omitted), or a single index.
    #[arg(long, default_value = "0:1")]
    range: String,
    /// One JSON object per sample per line.
    #[arg(long)]
    json: bool,
    /// Decode tokens to text with this tokenizer (tokenizer.json, *.tiktoken, or their directory).
    #[arg(long)]
    decode: Option<PathBuf>,
}

fn main() {
    openseek_common::exit::run_main("os-mix", || {
        let cli = openseek_common::exit::parse_args::<Cli>();
        match cli.command {
            Some(Command::Inspect(a)) => run_inspect(a),
            None => run_build(cli.build),
        }
    })
}

fn run_inspect(a: InspectArgs) -> Result<(), Failure> {
    let decoder = match &a.decode {
        Some(path) => {
            let tok = openseek_tokenizer::Tokenizer::load(path)?;
            Some(Box::new(move |ids: &[u32]| tok.decode(ids)) as inspect::Decoder)
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    inspect::inspect(&a.dir, &a.range, a.json, decoder.as_ref(), &mut out)
}

fn run_build(a: BuildArgs) -> Result<(), Failure> {
    let (recipe, recipe_path) = match (&a.weights, &a.recipe) {
        (Some(w), None) => {
            let r = recipe::Recipe {
                name: None,
                description: None,
                seq_len: None,
                seed: None,
                split: None,
                total_samples: None,
                total_tokens: None,
                data_root: None,
                source: None,
                datasets: recipe::parse_weights(w)?,
                stages: vec![],
            };
            (r, None)
        }
        (None, Some(p)) => (recipe::load(p)?, Some(p.as_path())),
        _ => return Err(Failure::usage("give --weights \"W1 PREFIX1 ...\" or --recipe FILE (see --help)")),
    };
    let overrides = recipe::Overrides {
        seq_len: a.seq_len,
        seed: a.seed,
        split: a.split.clone(),
        total_samples: a.samples,
        total_tokens: a.tokens,
        data_root: a.data_root.clone(),
    };
    if let (Some(output), false, false) = (&a.output, a.dry_run, a.force) {
        // Refused before the plan is made (it may take a while), not after.
        openseek_mix::store::check_output(output, false)?;
    }
    let (spec, warnings) = recipe::resolve(&recipe, recipe_path, &overrides)?;
    for w in &warnings {
        eprintln!("os-mix: warning: {w}");
    }
    let split_index = mix::SPLIT_NAMES.iter().position(|s| *s == a.split_name).unwrap();
    let plan = mix::plan(spec, split_index, openseek_mix::blend::DEFAULT_SURPLUS)?;
    let (table, repeat) = mix::report(&plan, a.repeat_warning);
    for w in &repeat {
        eprintln!("os-mix: warning: {w}");
    }
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&mix::plan_json(&plan)).unwrap());
        } else {
            print!("{table}");
        }
        return Ok(());
    }
    let output = a.output.ok_or_else(|| Failure::usage("--output DIR is required (or --dry-run)"))?;
    openseek_mix::store::prepare_output(&output, a.force)?;
    let provenance = serde_json::to_value(Provenance::capture("os-mix", env!("CARGO_PKG_VERSION"))).ok();
    let manifest = mix::build(plan, &output, provenance, true)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifest).unwrap());
    } else {
        print!("{table}");
        println!("wrote {} ({} samples)", output.display(), manifest.num_samples);
    }
    Ok(())
}
