//! Quality buckets from per-document scores, the way OpenSeek split its corpora into `-high`,
//! `-mid` and `-low` parts: the records `os-eval score --shards` writes (one per sequence:
//! `shard`, `sequence`, `scored`, `sum_logprob`) are read back, each document gets its mean
//! log-probability (its sequences' log-probability sums over their scored tokens), documents are
//! ranked best first (highest mean log-probability = lowest perplexity) and cut into named buckets
//! by fractions of the documents or of their tokens, and each bucket is written as a Megatron
//! shard holding its documents in their original order.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, Failure};
use serde::Serialize;

use crate::indexed::{IndexedDataset, IndexedDatasetWriter};

/// One output bucket: its name (the output prefix's suffix) and its share of the ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub name: String,
    pub fraction: f64,
}

/// `high=0.2,mid=0.5,low=0.3`: names of letters, digits, `_`, `.`, `-`, each once; fractions
/// positive and summing to 1. Best-ranked documents go to the first bucket.
pub fn parse_buckets(spec: &str) -> Result<Vec<Bucket>, Failure> {
    let usage = |what: String| Failure::usage(format!("--buckets {spec:?}: {what} (write NAME=FRACTION,…, e.g. high=0.2,mid=0.5,low=0.3)"));
    let mut buckets: Vec<Bucket> = vec![];
    for part in spec.split(',') {
        let (name, fraction) = part.split_once('=').ok_or_else(|| usage(format!("{part:?} has no '='")))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(usage(format!("{name:?} is not a bucket name (letters, digits, '_', '.', '-')")));
        }
        if buckets.iter().any(|b| b.name == name) {
            return Err(usage(format!("{name:?} is named twice")));
        }
        let fraction: f64 = fraction.trim().parse().map_err(|_| usage(format!("{fraction:?} is not a number")))?;
        if !(fraction.is_finite() && fraction > 0.0) {
            return Err(usage(format!("{name}'s fraction {fraction} is not positive")));
        }
        buckets.push(Bucket { name: name.to_string(), fraction });
    }
    let total: f64 = buckets.iter().map(|b| b.fraction).sum();
    if (total - 1.0).abs() > 1e-6 {
        return Err(usage(format!("the fractions sum to {total}, not 1")));
    }
    Ok(buckets)
}

/// What the bucket fractions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    Documents,
    Tokens,
}

/// A document some of whose sequences have no score record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Stop (exit 65) naming the first such document.
    Error,
    /// Leave it out of every bucket (counted in the manifest).
    Drop,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectOptions {
    pub buckets: Vec<Bucket>,
    pub weight: Weight,
    pub missing: Missing,
}

/// What one bucket received.
#[derive(Debug, Clone, Serialize)]
pub struct BucketReport {
    pub name: String,
    pub prefix: PathBuf,
    pub fraction: f64,
    pub documents: u64,
    pub tokens: u64,
    /// The best and worst mean log-probability in the bucket (None when it is empty).
    pub mean_logprob_max: Option<f64>,
    pub mean_logprob_min: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectReport {
    pub buckets: Vec<BucketReport>,
    /// Documents ranked into the buckets.
    pub ranked_documents: u64,
    /// Documents whose records score no token (a single token): in no bucket.
    pub unscorable_documents: u64,
    /// Documents left out for lack of records (`Missing::Drop`).
    pub missing_documents: u64,
    /// Records of shards not given (ignored).
    pub other_shard_records: u64,
}

/// Per given shard, per sequence: (sum of log-probs, scored tokens) once its record is read.
type SequenceScores = Vec<Vec<Option<(f64, u64)>>>;

/// Which given shard a record's `shard` names: the same file (paths resolved from the current
/// directory), else the only given shard with that file name; None for another shard.
struct ShardMatcher {
    canonical: HashMap<PathBuf, usize>,
    by_name: HashMap<String, Option<usize>>,
}

impl ShardMatcher {
    fn new(shards: &[IndexedDataset]) -> ShardMatcher {
        let mut canonical = HashMap::new();
        let mut by_name: HashMap<String, Option<usize>> = HashMap::new();
        for (k, ds) in shards.iter().enumerate() {
            if let Ok(p) = ds.bin_path().canonicalize() {
                canonical.insert(p, k);
            }
            let name = ds.prefix().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            by_name.entry(name).and_modify(|e| *e = None).or_insert(Some(k));
        }
        ShardMatcher { canonical, by_name }
    }

    fn find(&self, shard: &str) -> Option<usize> {
        let prefix = crate::indexed::strip_extension(Path::new(shard));
        if let Some(&k) = crate::indexed::bin_path(&prefix).canonicalize().ok().and_then(|p| self.canonical.get(&p)) {
            return Some(k);
        }
        let name = prefix.file_name()?.to_string_lossy().into_owned();
        self.by_name.get(&name).copied().flatten()
    }
}

/// Read `os-eval score --shards` records from `paths` into per-sequence scores of `shards`;
/// returns them and the count of records naming other shards.
fn read_scores(paths: &[PathBuf], shards: &[IndexedDataset]) -> Result<(SequenceScores, u64), Failure> {
    let matcher = ShardMatcher::new(shards);
    let mut scores: SequenceScores = shards.iter().map(|ds| vec![None; ds.num_sequences()]).collect();
    let mut other = 0u64;
    for path in paths {
        let file = std::fs::File::open(path).map_err(|e| Failure::io_at(path, "cannot read the scores", &e))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let at = || format!("{}:{}", path.display(), n + 1);
            let line = line.map_err(|e| Failure::io_at(path, "cannot read the scores", &e))?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |what: &str| Failure::data(format!("{}: {what} (expected os-eval score --shards records: {{\"shard\", \"sequence\", \"scored\", \"sum_logprob\", …}})", at()));
            let record: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(&format!("not JSON: {e}")))?;
            let shard = record["shard"].as_str().ok_or_else(|| bad("no \"shard\" string"))?;
            let sequence = record["sequence"].as_u64().ok_or_else(|| bad("no \"sequence\" number"))? as usize;
            let scored = record["scored"].as_u64().ok_or_else(|| bad("no \"scored\" number"))?;
            let sum = record["sum_logprob"].as_f64().ok_or_else(|| bad("no \"sum_logprob\" number"))?;
            if !sum.is_finite() {
                return Err(bad(&format!("sum_logprob {sum} is not finite")));
            }
            let Some(k) = matcher.find(shard) else {
                other += 1;
                continue;
            };
            let ds = &shards[k];
            let slot = scores[k].get_mut(sequence).ok_or_else(|| {
                Failure::data(format!("{}: sequence {sequence} of {shard}, but {} has {} sequences: scores of another version of the shard?", at(), ds.prefix().display(), ds.num_sequences()))
            })?;
            if slot.is_some() {
                return Err(Failure::data(format!("{}: sequence {sequence} of {} is scored twice (the same scores file given twice?)", at(), ds.prefix().display())));
            }
            *slot = Some((sum, scored));
        }
    }
    Ok((scores, other))
}

/// Rank the documents of `shards` by the scores in `score_files` and write one shard per bucket
/// at `OUTPUT-NAME` (registered with `outputs`; the caller commits them with its manifest).
pub fn select(shards: &[IndexedDataset], score_files: &[PathBuf], output: &Path, options: &SelectOptions, outputs: &mut AtomicOutputs) -> Result<SelectReport, Failure> {
    let dtype = shards[0].dtype();
    if let Some(other) = shards.iter().find(|s| s.dtype() != dtype) {
        return Err(Failure::data(format!(
            "{} holds {} tokens, {} holds {}: the buckets are shards of one dtype; select shards of one tokenizer together",
            shards[0].prefix().display(),
            dtype.name(),
            other.prefix().display(),
            other.dtype().name()
        )));
    }
    let (scores, other_shard_records) = read_scores(score_files, shards)?;

    // (mean log-prob, shard, document, tokens) of every rankable document.
    let mut ranked: Vec<(f64, usize, usize, u64)> = vec![];
    let (mut unscorable, mut missing) = (0u64, 0u64);
    for (k, ds) in shards.iter().enumerate() {
        for d in 0..ds.num_documents() {
            let sequences = ds.document_sequences(d);
            let (mut sum, mut scored, mut tokens) = (0f64, 0u64, 0u64);
            let mut absent = None;
            for i in sequences {
                tokens += ds.sequence_length(i) as u64;
                match scores[k][i] {
                    Some((s, n)) => (sum, scored) = (sum + s, scored + n),
                    None => absent = absent.or(Some(i)),
                }
            }
            if let Some(i) = absent {
                if options.missing == Missing::Error {
                    return Err(Failure::data(format!(
                        "no score for sequence {i} (document {d}) of {} in {}: score every document (all array tasks' parts), or pass --missing drop",
                        ds.prefix().display(),
                        score_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
                missing += 1;
            } else if scored == 0 {
                unscorable += 1;
            } else {
                ranked.push((sum / scored as f64, k, d, tokens));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    // Bucket of each ranked document: the first whose cumulative share its start lies before.
    let weight = |r: &(f64, usize, usize, u64)| match options.weight {
        Weight::Documents => 1.0,
        Weight::Tokens => r.3 as f64,
    };
    let total: f64 = ranked.iter().map(weight).sum();
    let mut bounds = vec![];
    let mut acc = 0.0;
    for b in &options.buckets {
        acc += b.fraction;
        bounds.push(acc * total);
    }
    let mut assigned: Vec<HashMap<usize, usize>> = vec![HashMap::new(); shards.len()];
    let mut reports: Vec<BucketReport> = options
        .buckets
        .iter()
        .map(|b| BucketReport {
            name: b.name.clone(),
            prefix: bucket_prefix(output, &b.name),
            fraction: b.fraction,
            documents: 0,
            tokens: 0,
            mean_logprob_max: None,
            mean_logprob_min: None,
        })
        .collect();
    let mut before = 0.0;
    for r in &ranked {
        let b = bounds.iter().position(|&end| before < end).unwrap_or(bounds.len() - 1);
        before += weight(r);
        assigned[r.1].insert(r.2, b);
        let rep = &mut reports[b];
        rep.documents += 1;
        rep.tokens += r.3;
        rep.mean_logprob_max = Some(rep.mean_logprob_max.map_or(r.0, |m| m.max(r.0)));
        rep.mean_logprob_min = Some(rep.mean_logprob_min.map_or(r.0, |m| m.min(r.0)));
    }

    let mut writers = reports.iter().map(|r| IndexedDatasetWriter::create(&r.prefix, dtype, outputs)).collect::<Result<Vec<_>, _>>()?;
    for (k, ds) in shards.iter().enumerate() {
        for d in 0..ds.num_documents() {
            if let Some(&b) = assigned[k].get(&d) {
                for i in ds.document_sequences(d) {
                    writers[b].add_sequence_tokens(ds.sequence(i))?;
                }
                writers[b].end_document();
            }
        }
    }
    for w in writers {
        w.finish(outputs)?;
    }
    Ok(SelectReport { buckets: reports, ranked_documents: ranked.len() as u64, unscorable_documents: unscorable, missing_documents: missing, other_shard_records })
}

/// `OUTPUT-NAME`: where bucket `name` goes.
pub fn bucket_prefix(output: &Path, name: &str) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push("-");
    s.push(name);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indexed::DType;

    fn write_shard(prefix: &Path, docs: &[Vec<Vec<u32>>]) -> IndexedDataset {
        let mut out = AtomicOutputs::new();
        let mut w = IndexedDatasetWriter::create(prefix, DType::U16, &mut out).unwrap();
        for doc in docs {
            for s in doc {
                w.add_sequence(s).unwrap();
            }
            w.end_document();
        }
        w.finish(&mut out).unwrap();
        out.commit().unwrap();
        IndexedDataset::open(prefix).unwrap()
    }

    fn documents(prefix: &Path) -> Vec<Vec<u32>> {
        let ds = IndexedDataset::open(prefix).unwrap();
        (0..ds.num_documents()).map(|d| ds.document_sequences(d).flat_map(|i| ds.sequence(i).to_vec_i64()).map(|t| t as u32).collect()).collect()
    }

    #[test]
    fn buckets_parse_and_bad_specs_are_refused() {
        let b = parse_buckets("high=0.2, mid=0.5,low=0.3").unwrap();
        assert_eq!(b.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["high", "mid", "low"]);
        for bad in ["high=0.5,low=0.4", "high", "a=1,a=0", "x/y=1", "a=-0.5,b=1.5", "a=nan"] {
            assert_eq!(parse_buckets(bad).unwrap_err().code, openseek_common::ExitCode::Usage, "{bad}");
        }
    }

    /// Documents of two sequences count both; ranking by mean log-prob, ties in shard and document
    /// order; fractions of documents and of tokens; order kept inside buckets; missing and
    /// unscorable documents; records of another shard ignored; a duplicate is refused.
    #[test]
    fn documents_go_to_buckets_by_mean_logprob() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Shard a: 3 documents, the second of two sequences; shard b: 2 documents.
        let a = write_shard(&d.join("a"), &[vec![vec![1, 2, 3]], vec![vec![4, 5], vec![6, 7, 8]], vec![vec![9, 10]]]);
        let b = write_shard(&d.join("b"), &[vec![vec![11, 12, 13, 14]], vec![vec![15]]]);
        let rec = |shard: &str, seq: usize, scored: u64, sum: f64| format!("{{\"shard\":\"{shard}\",\"sequence\":{seq},\"scored\":{scored},\"sum_logprob\":{sum}}}\n");
        let a_path = d.join("a").display().to_string();
        // Means: a0 -1.0, a1 (-1-4)/(1+2) = -5/3, a2 -0.5, b0 -2.0, b1 unscorable.
        let scores = d.join("scores.jsonl");
        std::fs::write(
            &scores,
            [rec(&a_path, 0, 2, -2.0), rec(&a_path, 1, 1, -1.0), rec(&a_path, 2, 2, -4.0), rec(&a_path, 3, 1, -0.5), rec("elsewhere/b.bin", 0, 3, -6.0), rec("b", 1, 0, 0.0), rec("zzz", 0, 1, -1.0)].concat(),
        )
        .unwrap();
        let shards = [a, b];
        let options = |weight| SelectOptions { buckets: parse_buckets("high=0.5,low=0.5").unwrap(), weight, missing: Missing::Error };
        let mut out = AtomicOutputs::new();
        let report = select(&shards, std::slice::from_ref(&scores), &d.join("docs"), &options(Weight::Documents), &mut out).unwrap();
        out.commit().unwrap();
        assert_eq!((report.ranked_documents, report.unscorable_documents, report.other_shard_records), (4, 1, 1));
        // Ranked: a2 (-0.5), a0 (-1), a1 (-5/3), b0 (-2); halves by count.
        assert_eq!(documents(&d.join("docs-high")), [vec![1, 2, 3], vec![9, 10]]);
        assert_eq!(documents(&d.join("docs-low")), [vec![4, 5, 6, 7, 8], vec![11, 12, 13, 14]]);
        assert_eq!((report.buckets[0].mean_logprob_max, report.buckets[0].mean_logprob_min), (Some(-0.5), Some(-1.0)));
        // By tokens (2, 3, 5, 4 = 14 in rank order): a2 starts at 0, a0 at 2, a1 at 5 (< 7): high; b0 at 10.
        let mut out = AtomicOutputs::new();
        let report = select(&shards, std::slice::from_ref(&scores), &d.join("tok"), &options(Weight::Tokens), &mut out).unwrap();
        out.commit().unwrap();
        assert_eq!(documents(&d.join("tok-high")), [vec![1, 2, 3], vec![4, 5, 6, 7, 8], vec![9, 10]]);
        assert_eq!((report.buckets[0].tokens, report.buckets[1].tokens), (10, 4));
        // A sequence without a record: an error naming it, or dropped.
        let partial = d.join("partial.jsonl");
        std::fs::write(&partial, [rec(&a_path, 0, 2, -2.0), rec(&a_path, 2, 2, -4.0), rec(&a_path, 3, 1, -0.5), rec("b", 0, 3, -6.0), rec("b", 1, 0, 0.0)].concat()).unwrap();
        let err = select(&shards, std::slice::from_ref(&partial), &d.join("x"), &options(Weight::Documents), &mut AtomicOutputs::new()).unwrap_err();
        assert!(err.message.contains("no score for sequence 1 (document 1)"), "{}", err.message);
        let drop = SelectOptions { missing: Missing::Drop, ..options(Weight::Documents) };
        let report = select(&shards, &[partial], &d.join("y"), &drop, &mut AtomicOutputs::new()).unwrap();
        assert_eq!((report.ranked_documents, report.missing_documents), (3, 1));
        // The same file twice: refused.
        let err = select(&shards, &[scores.clone(), scores], &d.join("z"), &options(Weight::Documents), &mut AtomicOutputs::new()).unwrap_err();
        assert!(err.message.contains("scored twice"), "{}", err.message);
    }
}
