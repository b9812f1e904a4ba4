//! os-eval: evaluate an OpenSeek-Small-v1 (DeepSeek-V3) checkpoint. `run` scores the OpenSeek
//! benchmark suite (lighteval v0.3.0 exact), `sweep` evaluates every new checkpoint of a training
//! run, `requests` writes the requests as token ids, `score` writes per-token log-probs of given
//! sequences or of every document of Megatron shards.

mod backend;
mod score;

use clap::{Args, Parser, Subcommand};
use openseek_common::provenance::Provenance;
use openseek_common::{AtomicOutputs, ExitCode, Failure};
use openseek_eval::run::{self, RunConfig, RunSummary};
use openseek_eval::{sweep, Harness, Options, Task};
use openseek_model::tch::{Device, Kind};
use openseek_model::FastPaths;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "os-eval", version, about = "Evaluate an OpenSeek-Small-v1 (DeepSeek-V3) Hugging Face checkpoint")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log-probabilities of sequences: one output line {"sum_logprob", "token_logprobs"} per input line,
    /// token_logprobs[i] = log p(t_{i+1} | t_0..t_i); or with --shards one record per document of
    /// Megatron shards (perplexity for data selection), resumable.
    Score(ScoreArgs),
    /// Evaluate a model on benchmark tasks: results.json, details.h5 and the table printed.
    Run(RunArgs),
    /// Evaluate every checkpoint of a training run not evaluated yet (safe from cron).
    Sweep(SweepArgs),
    /// Write the requests of tasks as token ids (JSONL), for inspection or another harness.
    Requests(RequestsArgs),
}

#[derive(Args)]
struct RequestsArgs {
    /// Tokenizer directory (a model directory, tokenizer.json or OpenSeek's tiktoken files).
    #[arg(long)]
    tokenizer: PathBuf,
    #[command(flatten)]
    task: TaskArgs,
    /// Output JSONL: per multiple-choice item {task, doc_index, context, continuations, norm_chars, gold};
    /// per generative item {task, doc_index, context, max_new_tokens, stop, golds}.
    #[arg(long)]
    output: PathBuf,
}

/// Which tasks, on which data, with which request conventions (shared by `requests`, `run` and `sweep`).
#[derive(Args)]
struct TaskArgs {
    /// Comma-separated tasks: openseek (the 12-column table), all (+ boolq), hellaswag, winogrande,
    /// piqa, siqa, openbookqa, arc, arc:easy, arc:challenge, commonsense_qa, mmlu[:subject],
    /// cmmlu[:subject], ceval[:subject], triviaqa, gsm8k, boolq.
    #[arg(long, default_value = "openseek")]
    tasks: String,
    /// Benchmark data directory: one folder per benchmark (layout in the README, os-eval section).
    #[arg(long)]
    data: PathBuf,
    /// Only the first N documents of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Splits instead of the tasks' defaults: one for all tasks (`validation`) or per task
    /// (`arc=validation,gsm8k=test`; a benchmark's name covers its subtasks: arc, mmlu, ...).
    #[arg(long)]
    split: Option<String>,
    /// Request conventions: lighteval (v0.3.0 + OpenSeek's task file, the seeds' numbers) or lm-eval.
    #[arg(long, default_value = "lighteval")]
    harness: String,
    /// Reproduce lighteval's GSM8K generation budget (prompt length counted in characters: 19 of
    /// 1,319 5-shot prompts get one new token). Default: the budget in tokens.
    #[arg(long)]
    lighteval_budget_quirk: bool,
    /// Seed of the GSM8K few-shot sampler (lighteval: 42).
    #[arg(long, default_value_t = 42)]
    fewshot_seed: u64,
    /// Maximum sequence length (default: the model's max_position_embeddings; 4096 for `requests`).
    #[arg(long)]
    max_length: Option<usize>,
}

impl TaskArgs {
    /// The request options, `max_length` defaulting to `model_max_length`.
    fn options(&self, model_max_length: usize) -> Result<Options, Failure> {
        let options = Options {
            max_length: self.max_length.unwrap_or(model_max_length),
            split: self.split.clone(),
            limit: self.limit,
            lighteval_budget_quirk: self.lighteval_budget_quirk,
            fewshot_seed: self.fewshot_seed,
            harness: Harness::parse(&self.harness)?,
        };
        options.check()?;
        Ok(options)
    }
}

/// What to evaluate and how (shared by `run` and `sweep`).
#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// cpu, cuda, cuda:N, or auto (cuda when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// float32 or bfloat16 (default: float32 on CPU, bfloat16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Tokens per forward pass for log-likelihoods (questions packed without padding: contexts +
    /// continuations); default 131072 on CUDA, 16384 on CPU.
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Most prompts decoded together (TriviaQA, GSM8K; continuous batching: a finished
    /// sequence's row takes the next prompt); default 512 on CUDA, 64 on CPU.
    #[arg(long)]
    generate_batch: Option<usize>,
    /// Bound on the generation KV cache in GiB (fewer rows than --generate-batch when the
    /// longest prompt plus the budget would not fit); default 16 on CUDA, 2 on CPU.
    #[arg(long)]
    generate_cache_gib: Option<f64>,
    /// Fast paths to switch off, comma-separated (the model's kernels and layouts, as os-train's
    /// [debug] disable names them: fused_norm, moe_fused, ..., decode_graph, logprob_kernel), to
    /// measure one or check a result against the plain path. Recorded in results.json
    /// (backend.disable).
    #[arg(long, value_delimiter = ',')]
    disable: Vec<String>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

impl EvalArgs {
    /// The model's fast paths with --disable applied; an unknown name is exit 64.
    fn fast_paths(&self) -> Result<FastPaths, Failure> {
        FastPaths::parse_disabled(&self.disable, "--disable")
    }
}

#[derive(Args)]
struct RunArgs {
    /// Model directory: config.json, safetensors, and the tokenizer (tokenizer.json or OpenSeek's tiktoken files).
    #[arg(long)]
    model: PathBuf,
    /// Output directory (default: eval-out/<model folder name>). Per-task records are kept in
    /// OUTPUT/tasks/, so a killed run resumes at the task where it stopped.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Tokenizer directory when the model folder holds none (default: the model folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    eval: EvalArgs,
}

#[derive(Args)]
struct SweepArgs {
    /// Training run or checkpoints folder(s): every sub-folder with a config.json (e.g.
    /// RUN/checkpoints/step-0000720) is a checkpoint; a model folder itself is one.
    #[arg(long, required = true, num_args = 1..)]
    checkpoints: Vec<PathBuf>,
    /// Sweep output: results.jsonl, results.md, plots/*.png, runs/<checkpoint>/.
    #[arg(long)]
    output: PathBuf,
    /// Tokenizer directory for checkpoints that hold none (default: each checkpoint's own).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A checkpoint that fails to load counts as still being written (left for the next sweep)
    /// while a file in it is younger than this, it holds a temporary file, or `latest` beside it
    /// names an earlier step; otherwise it is corrupt (recorded as failed, exit 65).
    #[arg(long, default_value_t = 10.0)]
    settle_minutes: f64,
    #[command(flatten)]
    eval: EvalArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["tokens", "text", "shards"])))]
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
    /// Megatron shards (PREFIX, PREFIX.bin or PREFIX.idx): every sequence is a document; one
    /// record per document {shard, sequence, document, tokens, scored, sum_logprob, mean_logprob}.
    /// Appended to OUTPUT.partial after each chunk (a killed run resumes there), OUTPUT when done.
    #[arg(long, num_args = 1..)]
    shards: Vec<PathBuf>,
    /// With --shards: tokens per window (default: the model's max_position_embeddings); longer
    /// documents are scored in windows.
    #[arg(long, requires = "shards")]
    window: Option<usize>,
    /// With --shards: tokens between window starts (default: --window); a later window scores only
    /// the tokens earlier ones did not, seeing up to window − stride tokens before them.
    #[arg(long, requires = "shards")]
    stride: Option<usize>,
    /// With --shards: also write each document's token_logprobs.
    #[arg(long, requires = "shards")]
    per_token: bool,
    /// With --shards: tokens scored between two appends to OUTPUT.partial.
    #[arg(long, default_value_t = 1 << 20, requires = "shards")]
    chunk_tokens: usize,
    /// With --shards: this worker's part (contiguous document ranges), e.g. $SLURM_ARRAY_TASK_ID.
    #[arg(long, default_value_t = 0, requires = "shards")]
    shard_index: usize,
    /// With --shards: the number of workers.
    #[arg(long, default_value_t = 1, requires = "shards")]
    num_shards: usize,
    /// With --shards: write the second chunk's scoring (CPU operators and CUDA kernels, Kineto) as
    /// a Chrome trace to this file (bench/train/trace_summary.py summarises it).
    #[arg(long, requires = "shards")]
    trace: Option<PathBuf>,
    /// Replace an existing OUTPUT (--shards).
    #[arg(long)]
    force: bool,
    /// Output JSONL, written atomically.
    #[arg(long)]
    output: PathBuf,
    /// cpu, cuda, cuda:N, or auto (cuda when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weight and activation dtype: float32 or bfloat16 (default: float32 on CPU, bfloat16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Tokens per forward pass (sequences packed without padding); default 131072 on CUDA, 16384 on CPU.
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Fast paths to switch off, comma-separated (as for `run`).
    #[arg(long, value_delimiter = ',')]
    disable: Vec<String>,
}


/// A dtype as users write it.
fn kind_name(kind: Kind) -> &'static str {
    if kind == Kind::BFloat16 {
        "bfloat16"
    } else {
        "float32"
    }
}

fn kind_of(dtype: Option<&str>, device: Device) -> Result<Kind, Failure> {
    match dtype {
        None if device == Device::Cpu => Ok(Kind::Float),
        None | Some("bfloat16" | "bf16") => Ok(Kind::BFloat16),
        Some("float32" | "fp32") => Ok(Kind::Float),
        Some(other) => Err(Failure::usage(format!("--dtype {other}: expected float32 or bfloat16"))),
    }
}

/// Load a checkpoint and its tokenizer, and evaluate it into `output`.
fn evaluate(model_dir: &Path, tokenizer_dir: &Path, output: &Path, a: &EvalArgs, tasks: &[Task]) -> Result<RunSummary, Failure> {
    let device = openseek_model::parse_device(&a.device)?;
    let kind = kind_of(a.dtype.as_deref(), device)?;
    let fast_paths = a.fast_paths()?;
    let t0 = std::time::Instant::now();
    let model_hash = openseek_eval::record::model_hash(model_dir)?;
    let tokenizer = openseek_tokenizer::Tokenizer::load(tokenizer_dir)?;
    let mut model = openseek_model::load(model_dir, kind, device)?;
    model.set_fast_paths(fast_paths);
    if tokenizer.vocab_size() as i64 > model.config.vocab_size {
        return Err(Failure::data(format!(
            "the tokenizer in {} has {} tokens but the model in {} only {} (vocab_size): they do not belong together",
            tokenizer_dir.display(),
            tokenizer.vocab_size(),
            model_dir.display(),
            model.config.vocab_size
        )));
    }
    backend::warm_up(&model);
    let load_seconds = t0.elapsed().as_secs_f64();
    let options = a.task.options(model.config.max_position_embeddings as usize)?;
    let max_length = options.max_length;
    let cfg = RunConfig {
        model_dir: model_dir.to_path_buf(),
        model_hash,
        data_dir: a.task.data.clone(),
        output_dir: output.to_path_buf(),
        tasks: tasks.to_vec(),
        options,
        backend: json!({"device": openseek_model::device_name(device), "dtype": kind_name(kind), "tokenizer_sha256": tokenizer.content_sha256()}),
        provenance: Provenance::capture("os-eval", env!("CARGO_PKG_VERSION")),
        verbose: !a.quiet,
    };
    let cpu = device == Device::Cpu;
    let batch_tokens = a.batch_tokens.unwrap_or(if cpu { 16384 } else { 131072 });
    let generate_batch = a.generate_batch.unwrap_or(if cpu { 64 } else { 512 });
    let cache_gib = a.generate_cache_gib.unwrap_or(if cpu { 2.0 } else { 16.0 });
    let mut backend = backend::ModelBackend {
        model: &model,
        tokenizer: &tokenizer,
        max_length,
        batch_tokens,
        generate_batch,
        cache_bytes: (cache_gib * (1u64 << 30) as f64) as usize,
    };
    let signals = openseek_common::signals::watch();
    let stop = || signals.check("stored the finished tasks; run again to resume");
    let mut summary = run::run(&cfg, &tokenizer, &mut backend, &stop)?;
    summary.results["timings"]["load_seconds"] = json!(load_seconds);
    // Record the batch settings too (they change speed, not results).
    summary.results["backend"]["batch_tokens"] = json!(batch_tokens);
    summary.results["backend"]["generate_batch"] = json!(generate_batch);
    summary.results["backend"]["generate_cache_gib"] = json!(cache_gib);
    summary.results["backend"]["disable"] = json!(a.disable);
    openseek_common::write_json_file(&output.join("results.json"), &summary.results)?;
    Ok(summary)
}

fn run_run(a: RunArgs) -> Result<(), Failure> {
    // The stop handlers before the model loads: a SIGTERM then ends the run at its first check
    // with exit 75 (Slurm requeues), instead of killing it.
    openseek_common::signals::watch();
    let tasks = Task::parse_list(&a.eval.task.tasks)?;
    // Bad options fail before the model is loaded (each checkpoint's own length applies later).
    a.eval.task.options(0)?;
    a.eval.fast_paths()?;
    let output = a.output.clone().unwrap_or_else(|| {
        let name = a.model.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_owned())).unwrap_or_else(|| "model".into());
        PathBuf::from("eval-out").join(name)
    });
    let summary = evaluate(&a.model, a.tokenizer.as_deref().unwrap_or(&a.model), &output, &a.eval, &tasks)?;
    print!("{}", run::format_table(&summary.table));
    if !a.eval.quiet {
        eprintln!(
            "os-eval: {} tasks ({} from earlier records); results in {}/results.json, details in {}/details.h5",
            summary.records.len(),
            summary.reused,
            output.display(),
            output.display()
        );
    }
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<(), Failure> {
    let tasks = Task::parse_list(&a.eval.task.tasks)?;
    // An unknown fast path fails here, not as a failed evaluation of every checkpoint.
    a.eval.fast_paths()?;
    let checkpoints = sweep::find_checkpoints(&a.checkpoints)?;
    let t = &a.eval.task;
    // The data check reads no lengths; each checkpoint's own default applies when it is evaluated.
    openseek_eval::check_data(&tasks, &t.data, &t.options(0)?)?;
    let mut key = json!({
        "tasks": t.tasks, "data": t.data.display().to_string(), "limit": t.limit, "split": t.split,
        "harness": t.harness, "lighteval_budget_quirk": t.lighteval_budget_quirk, "fewshot_seed": t.fewshot_seed,
        "max_length": t.max_length, "dtype": a.eval.dtype,
    });
    // Only when given, so the rows of sweeps from before --disable existed still match.
    if !a.eval.disable.is_empty() {
        key["disable"] = json!(a.eval.disable);
    }
    let mut eval = |ck: &sweep::Checkpoint, run_dir: &Path| {
        let tok = a.tokenizer.clone().unwrap_or_else(|| ck.path.clone());
        evaluate(&ck.path, &tok, run_dir, &a.eval, &tasks)
    };
    if !(a.settle_minutes >= 0.0 && a.settle_minutes.is_finite()) {
        return Err(Failure::usage(format!("--settle-minutes {}: expected a number of minutes >= 0", a.settle_minutes)));
    }
    let settle = std::time::Duration::from_secs_f64(a.settle_minutes * 60.0);
    let report = sweep::sweep(&checkpoints, &a.output, &key, settle, &mut eval, !a.eval.quiet)?;
    eprintln!(
        "os-eval sweep: {} checkpoints found, {} evaluated, {} already done, {} still being written (left for the next sweep), {} corrupt (recorded as failed); table in {}",
        checkpoints.len(),
        report.evaluated.len(),
        report.skipped_done.len(),
        report.pending.len(),
        report.failed.len(),
        a.output.join("results.md").display()
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = report.failed.iter().map(|f| f.0.as_str()).collect();
        Err(Failure::new(ExitCode::DataErr, format!("{} corrupt checkpoints recorded as failed in {}: {}", names.len(), a.output.join("results.jsonl").display(), names.join(", "))))
    }
}

fn run_requests(a: RequestsArgs) -> Result<(), Failure> {
    let tok = openseek_tokenizer::Tokenizer::load(&a.tokenizer)?;
    let opts = a.task.options(4096)?;
    let mut out = AtomicOutputs::new();
    let mut w = std::io::BufWriter::new(out.create(&a.output)?);
    let mut n = 0;
    for task in Task::parse_list(&a.task.tasks)? {
        for item in openseek_eval::build_requests(&task, &a.task.data, &tok, &opts)? {
            let line = match &item {
                openseek_eval::Item::Choice(c) => json!({
                    "task": task.name, "doc_index": c.doc_index,
                    "context": c.requests.first().map(|r| r.context_ids.clone()).unwrap_or_default(),
                    "contexts": c.requests.iter().map(|r| &r.context_ids).collect::<Vec<_>>(),
                    "continuations": c.requests.iter().map(|r| &r.continuation_ids).collect::<Vec<_>>(),
                    "norm_chars": c.requests.iter().map(|r| r.norm_chars).collect::<Vec<_>>(),
                    "gold": c.gold,
                }),
                openseek_eval::Item::Generate(g) => json!({
                    "task": task.name, "doc_index": g.doc_index, "context": g.context_ids,
                    "max_new_tokens": g.max_new_tokens, "stop": g.stop, "golds": g.golds,
                }),
            };
            writeln!(w, "{line}").map_err(|e| Failure::io_at(&a.output, "cannot write", &e))?;
            n += 1;
        }
    }
    w.flush().map_err(|e| Failure::io_at(&a.output, "cannot write", &e))?;
    drop(w);
    out.commit()?;
    eprintln!("os-eval requests: {n} items written to {}", a.output.display());
    Ok(())
}

fn run_score(a: ScoreArgs) -> Result<(), Failure> {
    // The stop handlers before the model loads (as `run`).
    openseek_common::signals::watch();
    let device = openseek_model::parse_device(&a.device)?;
    let kind = kind_of(a.dtype.as_deref(), device)?;
    let fast_paths = FastPaths::parse_disabled(&a.disable, "--disable")?;
    let mut model = openseek_model::load(&a.model, kind, device)?;
    model.set_fast_paths(fast_paths);
    let vocab = model.config.vocab_size;
    let batch_tokens = a.batch_tokens.unwrap_or(if device == Device::Cpu { 16384 } else { 131072 });
    let signals = openseek_common::signals::watch();
    let check = || signals.check("the scored documents are kept; run again to resume");
    if !a.shards.is_empty() {
        let window = a.window.unwrap_or(model.config.max_position_embeddings as usize);
        let opts = score::ShardScoring {
            window,
            stride: a.stride.unwrap_or(window),
            batch_tokens,
            chunk_tokens: a.chunk_tokens,
            per_token: a.per_token,
            shard_index: a.shard_index,
            num_shards: a.num_shards,
            trace: a.trace,
        };
        let n = score::score_shards(&model, &a.model, &a.shards, &a.output, a.force, &opts, &check)?;
        eprintln!("os-eval score: {n} documents scored into {}", a.output.display());
        return Ok(());
    }
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
        (None, None) => unreachable!("clap requires --tokens, --text or --shards"),
    };
    let logprobs = openseek_model::score::token_logprobs(&model, &seqs, batch_tokens, &check)?;
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
    openseek_common::exit::run_main("os-eval", || match openseek_common::exit::parse_args::<Cli>().command {
        Command::Score(a) => run_score(a),
        Command::Run(a) => run_run(a),
        Command::Sweep(a) => run_sweep(a),
        Command::Requests(a) => run_requests(a),
    })
}
