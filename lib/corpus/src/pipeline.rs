//! The tokenize pipeline: a reader thread streams record batches, a rayon pool tokenizes each
//! batch in parallel, and the main thread writes documents in input order, so the output is the
//! same whatever the number of workers. Shards and manifest are committed atomically at the end.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use openseek_common::progress::Progress;
use openseek_common::provenance::Provenance;
use openseek_common::{AtomicOutputs, Failure};
use openseek_shards::docstream::DocStreamWriter;
use openseek_shards::indexed::{DType, IndexedDatasetWriter};
use openseek_tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;

use crate::inputs::Input;
use crate::options::OnError;
use crate::records::{location_name, record_text, InputStats, Problem, Record, RecordReader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write `PREFIX.bin`, `PREFIX.idx` and `PREFIX.json`.
    Shards(PathBuf),
    /// Write the token document stream to stdout.
    Stdout,
}

#[derive(Debug, Clone)]
pub struct TokenizeConfig {
    pub inputs: Vec<Input>,
    pub text_key: String,
    /// Wrap each document as BOS + text + EOS (OpenSeek's preprocessing).
    pub wrap_docs: bool,
    pub workers: usize,
    pub on_error: OnError,
    pub output: Output,
    /// Replace existing output files.
    pub force: bool,
    pub quiet: bool,
    /// (index, count) when this run is one part of a job array.
    pub shard: Option<(usize, usize)>,
}

/// One skipped record, kept as an example in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedExample {
    pub input: String,
    pub location: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenizerInfo {
    pub kind: String,
    pub files: Vec<String>,
    pub sha256: String,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

/// What a run did; written as `PREFIX.json` (shards) or printed (stream).
#[derive(Debug, Clone, Serialize)]
pub struct TokenizeReport {
    pub format: &'static str,
    pub provenance: Provenance,
    pub tokenizer: TokenizerInfo,
    pub config: ReportConfig,
    pub inputs: Vec<InputStats>,
    pub documents: u64,
    pub tokens: u64,
    pub dtype: &'static str,
    pub skipped: BTreeMap<&'static str, u64>,
    pub skipped_examples: Vec<SkippedExample>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportConfig {
    pub text_key: String,
    pub wrap_docs: bool,
    pub workers: usize,
    pub on_error: OnError,
    pub shard_index: Option<usize>,
    pub num_shards: Option<usize>,
}

const MAX_EXAMPLES: usize = 20;

enum Sink {
    Shards(IndexedDatasetWriter),
    Stream(DocStreamWriter<BufWriter<std::io::Stdout>>),
}

impl Sink {
    fn write(&mut self, tokens: &[u32]) -> Result<(), Failure> {
        match self {
            Sink::Shards(w) => w.add_document(tokens),
            Sink::Stream(w) => w.write_document(tokens).map_err(stdout_error),
        }
    }
}

fn stdout_error(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::io("stdout was closed by the reading side of the pipe (did the next tool fail?)")
    } else {
        Failure::io(format!("cannot write to stdout: {e}"))
    }
}

/// Output file names for a prefix.
pub fn output_paths(prefix: &Path) -> [PathBuf; 3] {
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    [with(".bin"), with(".idx"), with(".json")]
}

/// Tokenize every input into the configured output. On any failure nothing is left behind.
pub fn run(config: &TokenizeConfig, tokenizer: &Tokenizer) -> Result<TokenizeReport, Failure> {
    let start = Instant::now();
    let provenance = Provenance::capture("os-tokenize", env!("CARGO_PKG_VERSION"));
    let (bos, eos) = if config.wrap_docs {
        match (tokenizer.bos_id(), tokenizer.eos_id()) {
            (Some(b), Some(e)) => (Some(b), Some(e)),
            _ => {
                return Err(Failure::config(format!(
                    "--wrap-docs needs BOS and EOS tokens, but the tokenizer ({}) declares none: add bos_token and eos_token to its tokenizer_config.json",
                    tokenizer.source_files().first().map(|p| p.display().to_string()).unwrap_or_default()
                )))
            }
        }
    } else {
        (None, None)
    };
    let dtype = DType::for_vocab_size(tokenizer.vocab_size());

    let mut outputs = AtomicOutputs::new();
    let mut sink = match &config.output {
        Output::Shards(prefix) => {
            let paths = output_paths(prefix);
            openseek_common::output::refuse_existing(&paths, config.force)?;
            if let Some(dir) = prefix.parent() {
                openseek_common::output::create_dir(dir)?;
            }
            let stale: Vec<(PathBuf, u64)> = paths.iter().flat_map(|p| AtomicOutputs::remove_stale_temporaries(p)).collect();
            if !stale.is_empty() && !config.quiet {
                eprintln!(
                    "os-tokenize: removed {} temporary file(s) ({:.1} MB) left by an interrupted run of {}",
                    stale.len(),
                    stale.iter().map(|s| s.1).sum::<u64>() as f64 / 1e6,
                    prefix.display()
                );
            }
            Sink::Shards(IndexedDatasetWriter::create(prefix, dtype, &mut outputs)?)
        }
        Output::Stdout => {
            let out = BufWriter::with_capacity(1 << 20, std::io::stdout());
            Sink::Stream(DocStreamWriter::new(out, tokenizer.vocab_size() as u32).map_err(stdout_error)?)
        }
    };

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.workers.max(1))
        .build()
        .map_err(|e| Failure::software(format!("cannot start {} worker threads: {e}", config.workers)))?;

    let bytes_read = Arc::new(AtomicU64::new(0));
    let total_bytes: u64 = config.inputs.iter().map(|i| i.bytes).sum();
    let mut progress = Progress::new("os-tokenize", (total_bytes > 0).then_some(total_bytes), config.quiet);
    // About 1 MiB of text per worker per batch: big enough to keep workers busy, small enough
    // to bound memory (two batches in flight plus the one being tokenized).
    let batch_bytes = (1usize << 20) * config.workers.max(1);
    let (send, receive) = mpsc::sync_channel::<Vec<Record>>(2);

    let mut documents = 0u64;
    let mut tokens = 0u64;
    let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut examples = Vec::new();

    // The reader owns its inputs so that, when the run stops early (bad record, signal), it can be
    // left to notice the closed channel on its own instead of being joined while blocked on a read.
    let reader_inputs = config.inputs.clone();
    let reader_key = config.text_key.clone();
    let reader_bytes = bytes_read.clone();
    let reader = std::thread::spawn(move || {
        let reader = RecordReader { inputs: &reader_inputs, text_key: &reader_key, batch_bytes, bytes_read: reader_bytes };
        reader.run(&mut |batch| send.send(batch).is_ok())
    });
    let inputs = &config.inputs;
    let text_key = config.text_key.as_str();
    let stop = openseek_common::signals::watch();
    let consumed = (|| -> Result<(), Failure> {
        loop {
            stop.check("no output was written; run the same command again to redo it")?;
            let batch = match receive.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(batch) => batch,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let results: Vec<Result<Vec<u32>, Problem>> =
                pool.install(|| batch.par_iter().map(|record| tokenize_record(record, text_key, tokenizer, bos, eos)).collect());
            for (record, result) in batch.iter().zip(results) {
                match result {
                    Ok(ids) => {
                        sink.write(&ids)?;
                        documents += 1;
                        tokens += ids.len() as u64;
                    }
                    Err(problem) => {
                        let input = &inputs[record.input];
                        let location = format!("{} {}", location_name(record.layout), record.location);
                        if config.on_error == OnError::Fail {
                            return Err(Failure::data(format!(
                                "{}: {location}: {problem}; fix the input or pass --on-error skip to skip such records",
                                input.display()
                            )));
                        }
                        *skipped.entry(problem.kind()).or_default() += 1;
                        if examples.len() < MAX_EXAMPLES {
                            examples.push(SkippedExample { input: input.display(), location, problem: problem.to_string() });
                        }
                    }
                }
            }
            progress.update(bytes_read.load(Ordering::Relaxed), || format!("{documents} docs, {tokens} tokens"));
        }
    })();
    drop(receive);
    // On success the channel closed because the reader finished, so joining is immediate.
    let outcome = consumed.and_then(|()| reader.join().map_err(|_| Failure::software("the input reader thread panicked"))?);
    progress.finish();
    let input_stats = outcome?;
    if documents == 0 {
        return Err(Failure::data(format!(
            "no documents in {}: {}; nothing was written",
            if input_stats.len() == 1 { input_stats[0].path.clone() } else { format!("the {} inputs", input_stats.len()) },
            if skipped.is_empty() { "there are no records".to_string() } else { format!("all {} records were skipped", skipped.values().sum::<u64>()) }
        )));
    }

    for stats in input_stats.iter().filter(|s| s.records == 0) {
        eprintln!("os-tokenize: warning: {} holds no documents", stats.path);
    }
    let report = TokenizeReport {
        format: match config.output {
            Output::Shards(_) => "megatron-indexed-dataset",
            Output::Stdout => "openseek-token-document-stream",
        },
        provenance,
        tokenizer: TokenizerInfo {
            kind: tokenizer.kind().to_string(),
            // Absolute, so that os-train finds the tokenizer from any directory (crate openseek-train's tokenizer_source).
            files: tokenizer.source_files().iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()).collect(),
            sha256: tokenizer.content_sha256(),
            vocab_size: tokenizer.vocab_size(),
            bos_id: tokenizer.bos_id(),
            eos_id: tokenizer.eos_id(),
        },
        config: ReportConfig {
            text_key: config.text_key.clone(),
            wrap_docs: config.wrap_docs,
            workers: config.workers,
            on_error: config.on_error,
            shard_index: config.shard.map(|s| s.0),
            num_shards: config.shard.map(|s| s.1),
        },
        inputs: input_stats,
        documents,
        tokens,
        dtype: match config.output {
            Output::Shards(_) => dtype.name(),
            Output::Stdout => "uint32",
        },
        skipped,
        skipped_examples: examples,
        wall_seconds: 0.0,
    };
    match sink {
        Sink::Shards(writer) => {
            let Output::Shards(prefix) = &config.output else { unreachable!() };
            writer.finish(&mut outputs)?;
            let mut report = report;
            report.wall_seconds = start.elapsed().as_secs_f64();
            let manifest = output_paths(prefix)[2].clone();
            outputs.write_json(&manifest, &report)?;
            outputs.commit()?;
            Ok(report)
        }
        Sink::Stream(writer) => {
            writer.finish().map_err(stdout_error)?;
            let mut report = report;
            report.wall_seconds = start.elapsed().as_secs_f64();
            Ok(report)
        }
    }
}

/// Turn one record into its token ids, or say why it yields no document.
fn tokenize_record(record: &Record, key: &str, tokenizer: &Tokenizer, bos: Option<u32>, eos: Option<u32>) -> Result<Vec<u32>, Problem> {
    let text = record_text(record, key)?;
    if text.is_empty() {
        return Err(Problem::EmptyDocument);
    }
    let mut ids = Vec::with_capacity(text.len() / 3 + 2);
    ids.extend(bos);
    tokenizer.encode_into(&text, &mut ids);
    ids.extend(eos);
    Ok(ids)
}
