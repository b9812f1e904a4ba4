//! os-eval: evaluate an OpenSeek-Small-v1 (DeepSeek-V3) checkpoint.
//! `score` writes per-token log-probs of given sequences; the benchmark subcommands are not built yet.

use clap::{Args, Parser, Subcommand};
use openseek_common::{AtomicOutputs, ExitCode, Failure};
use openseek_model::score;
use openseek_model::tch::{Cuda, Device, Kind};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "os-eval", version, about = "Evaluate an OpenSeek-Small-v1 (DeepSeek-V3) Hugging Face checkpoint")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log-probabilities of sequences: one output line {"sum_logprob", "token_logprobs"} per input line,
    /// token_logprobs[i] = log p(t_{i+1} | t_0..t_i).
    Score(ScoreArgs),
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["tokens", "text"])))]
struct ScoreArgs {
    /// Model directory: config.json + model.safetensors (or shards with model.safetensors.index.json).
    #[arg(long)]
    model: PathBuf,
    /// JSONL, one {"tokens": [ids]} per line.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// JSONL, one {"text": "..."} per line, tokenized with the tokenizer in the model directory (no BOS added).
    #[arg(long)]
    text: Option<PathBuf>,
    /// With --text: put the tokenizer's BOS token first, so the first real token is scored too.
    #[arg(long, requires = "text")]
    bos: bool,
    /// Output JSONL, written atomically.
    #[arg(long)]
    output: PathBuf,
    /// cpu, cuda, cuda:N, or auto (cuda when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weight and activation dtype: float32 or bfloat16 (default: float32 on CPU, bfloat16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Padded tokens per forward pass.
    #[arg(long, default_value_t = 16384)]
    batch_tokens: usize,
}

fn device_of(name: &str) -> Result<Device, Failure> {
    let cuda = |i: usize| {
        if Cuda::is_available() {
            Ok(Device::Cuda(i))
        } else {
            Err(Failure::new(ExitCode::Unavailable, format!("--device {name}: CUDA is not available on this machine")))
        }
    };
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => Err(Failure::usage(format!("--device {other}: expected cpu, cuda, cuda:N or auto"))),
        },
    }
}

fn run_score(a: ScoreArgs) -> Result<(), Failure> {
    let device = device_of(&a.device)?;
    let kind = match a.dtype.as_deref() {
        None if device == Device::Cpu => Kind::Float,
        None | Some("bfloat16" | "bf16") => Kind::BFloat16,
        Some("float32" | "fp32") => Kind::Float,
        Some(other) => return Err(Failure::usage(format!("--dtype {other}: expected float32 or bfloat16"))),
    };
    let model = openseek_model::load(&a.model, kind, device)?;
    let vocab = model.config.vocab_size;
    let seqs = match (&a.tokens, &a.text) {
        (Some(path), _) => score::read_sequences(path, None, vocab)?,
        (None, Some(path)) => {
            let tok = openseek_tokenizer::Tokenizer::load(&a.model)?;
            let bos = match (a.bos, tok.bos_id()) {
                (false, _) => None,
                (true, Some(b)) => Some(b as i64),
                (true, None) => {
                    return Err(Failure::data(format!("--bos: the tokenizer in {} defines no BOS token", a.model.display())))
                }
            };
            let encode = |s: &str| bos.into_iter().chain(tok.encode(s).into_iter().map(i64::from)).collect();
            score::read_sequences(path, Some(&encode), vocab)?
        }
        (None, None) => unreachable!("clap requires --tokens or --text"),
    };
    let logprobs = score::token_logprobs(&model, &seqs, a.batch_tokens);
    let mut out = AtomicOutputs::new();
    let mut w = std::io::BufWriter::new(out.create(&a.output)?);
    for lp in &logprobs {
        writeln!(w, "{}", score::score_line(lp)).map_err(|e| Failure::io_at(&a.output, "cannot write", &e))?;
    }
    w.flush().map_err(|e| Failure::io_at(&a.output, "cannot write", &e))?;
    drop(w);
    out.commit()
}

fn main() {
    openseek_common::exit::run_main("os-eval", || match Cli::parse().command {
        Command::Score(a) => run_score(a),
        Command::Other(args) => Err(Failure::new(
            ExitCode::Unavailable,
            format!("os-eval {}: not implemented yet (only `os-eval score` is built)", args.first().map(String::as_str).unwrap_or("")),
        )),
    })
}
