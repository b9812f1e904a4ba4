//! `os-eval score`: per-token log-probs of sequences from JSONL (token ids or text), or of every
//! sequence of Megatron shards for perplexity-based data selection: documents packed into
//! `--batch-tokens` forwards (openseek_model::score), long ones scored in windows, one record per
//! document appended in document order to `OUTPUT.partial` after each chunk, so that a killed
//! run resumes where it stopped (no duplicates, no gaps); renamed to OUTPUT when complete. The
//! next chunk is read and queued on the device before a chunk's values are brought back, so the
//! device goes from one chunk to the next without waiting for the host; bringing a chunk's values
//! back waits for the work queued after it too, so the records are written while the device idles
//! (≈ 40 ms per chunk of 2^20 tokens in an H100 trace, ≈ 2 %; bench/RESULTS.md).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use openseek_common::{ExitCode, Failure};
use openseek_model::score::{queue_token_logprobs, QueuedLogprobs};
use openseek_model::DeepseekV3;
use openseek_shards::indexed::{strip_extension, IndexedDataset};
use serde_json::json;

/// Text to token ids.
pub type Encoder<'a> = &'a dyn Fn(&str) -> Vec<i64>;

/// Read one sequence per line of a JSONL file: `{"tokens": [ids]}`, or `{"text": "…"}` turned into
/// ids by `encode` (None: token input expected). Ids must be below `vocab`.
pub fn read_sequences(path: &Path, encode: Option<Encoder>, vocab: i64) -> Result<Vec<Vec<i64>>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read", &e))?;
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| Failure::data(format!("{}:{}: {what}", path.display(), n + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("not a JSON object: {e}")))?;
        let ids: Vec<i64> = match encode {
            None => v["tokens"]
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_i64()).collect())
                .ok_or_else(|| at("expected {\"tokens\": [integer ids]}".into()))?,
            Some(encode) => encode(v["text"].as_str().ok_or_else(|| at("expected {\"text\": \"...\"}".into()))?),
        };
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(at(format!("token id {bad} is outside the model's vocabulary (0..{vocab})")));
        }
        out.push(ids);
    }
    Ok(out)
}

/// One output line of JSONL scoring: `{"sum_logprob": …, "token_logprobs": [...]}`.
pub fn score_line(logprobs: &[f64]) -> String {
    json!({"sum_logprob": logprobs.iter().sum::<f64>(), "token_logprobs": logprobs}).to_string()
}

/// How shards are scored.
pub struct ShardScoring {
    /// Tokens per window (at most the model's context); longer documents are scored in windows.
    pub window: usize,
    /// Tokens between window starts (≤ window): a later window scores only the tokens the
    /// earlier ones did not, seeing up to window − stride tokens before them.
    pub stride: usize,
    /// Tokens per packed forward.
    pub batch_tokens: usize,
    /// Documents scored between two appends to the output (and stop checks).
    pub chunk_tokens: usize,
    /// Write every token's log-prob too.
    pub per_token: bool,
    /// This worker scores the `shard_index`-th of `num_shards` contiguous ranges of the documents.
    pub shard_index: usize,
    pub num_shards: usize,
    /// Record the second chunk under the Kineto profiler into this Chrome trace (from queueing it
    /// to writing its records; with the pipeline that includes the end of the first chunk's and
    /// the start of the third chunk's device work).
    pub trace: Option<PathBuf>,
}

/// One document of a shard.
#[derive(Clone, Copy)]
struct DocRef {
    shard: usize,
    sequence: usize,
    len: usize,
}

/// The windows of a document of `n` tokens: (start, end, first scored target) with targets
/// `first..end` (positions within the document), each target scored once: windows start `stride`
/// apart, but never past the token before the first target still to score.
fn windows(n: usize, window: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    let (mut start, mut scored_to) = (0, 1);
    loop {
        let end = (start + window).min(n);
        out.push((start, end, scored_to.max(start + 1)));
        scored_to = end;
        if end == n {
            return out;
        }
        // The next window starts at most one token before the first target it must score (a
        // window's first token has no context inside it).
        start = (start + stride).min(end - 1).max(start + 1);
    }
}

/// Score every document of `shards` (this worker's range) into `output` (JSONL): one record per
/// document `{"shard", "sequence", "document", "tokens", "scored", "sum_logprob", "mean_logprob"}`
/// (+ `"token_logprobs"`). Refuses shards whose tokens exceed the model's vocabulary (exit 65,
/// before writing). `check` is polled between chunks.
pub fn score_shards(
    model: &DeepseekV3,
    model_dir: &Path,
    shards: &[PathBuf],
    output: &Path,
    force: bool,
    s: &ShardScoring,
    check: &dyn Fn() -> Result<(), Failure>,
) -> Result<usize, Failure> {
    let context = model.config.max_position_embeddings as usize;
    if s.window < 2 || s.window > context {
        return Err(Failure::data(format!(
            "--window {}: must be between 2 and the model's context, max_position_embeddings = {context} in {}",
            s.window,
            model_dir.join("config.json").display()
        )));
    }
    if s.stride == 0 || s.stride > s.window {
        return Err(Failure::usage(format!("--stride {}: must be between 1 and --window ({})", s.stride, s.window)));
    }
    if s.num_shards == 0 || s.shard_index >= s.num_shards {
        return Err(Failure::usage(format!("--shard-index {} --num-shards {}: the index must be below the count", s.shard_index, s.num_shards)));
    }
    if output.exists() && !force {
        return Err(Failure::cant_create(format!("{}: exists; pass --force to replace it", output.display())));
    }
    let datasets: Vec<IndexedDataset> = shards.iter().map(|p| IndexedDataset::open(&strip_extension(p))).collect::<Result<_, _>>()?;
    let docs: Vec<DocRef> = datasets
        .iter()
        .enumerate()
        .flat_map(|(k, d)| (0..d.num_sequences()).map(move |i| DocRef { shard: k, sequence: i, len: d.sequence_length(i) }))
        .collect();
    let (lo, hi) = (docs.len() * s.shard_index / s.num_shards, docs.len() * (s.shard_index + 1) / s.num_shards);
    let docs = &docs[lo..hi];
    let vocab = model.config.vocab_size;
    for (k, d) in datasets.iter().enumerate() {
        for r in docs.iter().filter(|r| r.shard == k) {
            if let Some(bad) = d.sequence(r.sequence).to_vec_i64().into_iter().find(|&t| t < 0 || t >= vocab) {
                return Err(Failure::data(format!(
                    "{}: sequence {}: token id {bad} is outside the model's vocabulary (0..{vocab}, {}): the shard was tokenized for another model",
                    d.bin_path().display(),
                    r.sequence,
                    model_dir.join("config.json").display()
                )));
            }
        }
    }
    let partial = partial_path(output);
    let done = resume(&partial)?;
    if done > docs.len() {
        return Err(Failure::data(format!("{}: holds {done} records but this worker has {} documents: another run's output", partial.display(), docs.len())));
    }
    if done > 0 {
        eprintln!("os-eval score: resuming {} after {done} of {} documents", partial.display(), docs.len());
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&partial).map_err(|e| Failure::io_at(&partial, "cannot open", &e))?;
    // Chunk k + 1 is queued before chunk k's values are brought back and its records appended.
    let mut queued: Option<QueuedChunk> = None;
    let (mut at, mut chunks) = (done, 0);
    loop {
        let next = if at < docs.len() {
            if chunks == 1 && s.trace.is_some() {
                openseek_kernels::profiler_start().map_err(|e| Failure::software(format!("starting the profiler: {e}")))?;
            }
            chunks += 1;
            let (mut end, mut tokens) = (at, 0);
            while end < docs.len() && (end == at || tokens + docs[end].len <= s.chunk_tokens) {
                tokens += docs[end].len;
                end += 1;
            }
            let chunk = queue_chunk(model, &datasets, &docs[at..end], chunks - 1, s, check);
            at = end;
            Some(chunk)
        } else {
            None
        };
        // A stop while queueing: the chunk before is still written, then the stop is reported.
        if let Some(prev) = queued.take() {
            let traced = prev.index == 1;
            let text = records(&datasets, prev, s.per_token);
            file.write_all(text.as_bytes()).and_then(|_| file.sync_data()).map_err(|e| Failure::io_at(&partial, "cannot append", &e))?;
            if let Some(path) = s.trace.as_ref().filter(|_| traced) {
                openseek_kernels::profiler_stop(path).map_err(|e| Failure::io(format!("{}: cannot write the profiler trace: {e}", path.display())))?;
                eprintln!("os-eval score: profiler trace in {}", path.display());
            }
        }
        match next {
            Some(chunk) => queued = Some(chunk?),
            None => break,
        }
    }
    drop(file);
    std::fs::rename(&partial, output).map_err(|e| Failure::io_at(output, "cannot rename into place", &e))?;
    Ok(docs.len())
}

/// A chunk of documents whose windows are being scored on the device.
struct QueuedChunk<'a> {
    /// Chunks queued before it by this run.
    index: usize,
    docs: &'a [DocRef],
    /// Per window: (its document in `docs`, targets at the window's start already scored by the
    /// window before).
    owner: Vec<(usize, usize)>,
    scores: QueuedLogprobs,
}

/// Every window of every document of `chunk`, queued for scoring packed.
fn queue_chunk<'a>(model: &DeepseekV3, datasets: &[IndexedDataset], chunk: &'a [DocRef], index: usize, s: &ShardScoring, check: &dyn Fn() -> Result<(), Failure>) -> Result<QueuedChunk<'a>, Failure> {
    check()?;
    let mut seqs: Vec<Vec<i64>> = Vec::new();
    let mut owner = Vec::new();
    for (j, d) in chunk.iter().enumerate() {
        let ids = datasets[d.shard].sequence(d.sequence).to_vec_i64();
        for (start, stop, first) in windows(ids.len(), s.window, s.stride) {
            seqs.push(ids[start..stop].to_vec());
            owner.push((j, first - start - 1));
        }
    }
    let scores = queue_token_logprobs(model, &seqs, s.batch_tokens, check)?;
    Ok(QueuedChunk { index, docs: chunk, owner, scores })
}

/// The JSONL records of a queued chunk's documents, in order (waits for the device).
fn records(datasets: &[IndexedDataset], chunk: QueuedChunk, per_token: bool) -> String {
    let mut per_doc: Vec<Vec<f64>> = vec![Vec::new(); chunk.docs.len()];
    for ((j, skip), lp) in chunk.owner.into_iter().zip(chunk.scores.wait()) {
        per_doc[j].extend_from_slice(&lp[skip..]);
    }
    let mut text = String::new();
    for (d, lp) in chunk.docs.iter().zip(&per_doc) {
        let sum: f64 = lp.iter().sum();
        let mut rec = json!({
            "shard": datasets[d.shard].prefix().display().to_string(),
            "sequence": d.sequence,
            "document": datasets[d.shard].document_of_sequence(d.sequence),
            "tokens": d.len,
            "scored": lp.len(),
            "sum_logprob": sum,
            "mean_logprob": if lp.is_empty() { serde_json::Value::Null } else { json!(sum / lp.len() as f64) },
        });
        if per_token {
            rec["token_logprobs"] = json!(lp);
        }
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    text
}

fn partial_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The number of whole records in an earlier run's partial output; a torn last line (a kill
/// during the append) is cut off.
fn resume(partial: &Path) -> Result<usize, Failure> {
    let file = match std::fs::File::open(partial) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Failure::io_at(partial, "cannot read", &e)),
    };
    let (mut whole, mut bytes) = (0usize, 0u64);
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| Failure::io_at(partial, "cannot read", &e))?;
        if serde_json::from_slice::<serde_json::Value>(&line).is_err() {
            break;
        }
        whole += 1;
        bytes += line.len() as u64 + 1;
    }
    let len = std::fs::metadata(partial).map_err(|e| Failure::io_at(partial, "cannot read", &e))?.len();
    if bytes < len {
        let f = std::fs::OpenOptions::new().write(true).open(partial).map_err(|e| Failure::io_at(partial, "cannot open", &e))?;
        f.set_len(bytes).map_err(|e| Failure::new(ExitCode::IoErr, format!("{}: cannot cut the torn last record: {e}", partial.display())))?;
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_each_target_once() {
        assert_eq!(windows(1, 4, 4), vec![]);
        assert_eq!(windows(3, 4, 4), vec![(0, 3, 1)]);
        // Back to back: each window starts on the last token of the one before (target 4 needs token 3).
        assert_eq!(windows(10, 4, 4), vec![(0, 4, 1), (3, 7, 4), (6, 10, 7)]);
        // Overlapping: each later window scores only its new tokens.
        assert_eq!(windows(10, 4, 2), vec![(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]);
        for (n, w, s) in [(10, 4, 2), (10, 4, 4), (17, 5, 3), (2, 2, 1)] {
            let targets: Vec<usize> = windows(n, w, s).iter().flat_map(|&(_, e, f)| f..e).collect();
            assert_eq!(targets, (1..n).collect::<Vec<_>>(), "{n} {w} {s}");
        }
    }
}
