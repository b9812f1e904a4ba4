//! The MinHash deduplication pipeline in datatrove's four stages, each of which can run as a
//! Slurm array (or all in one process):
//! 1. `signatures`, per input file ("part"): the signature of every document, one file per band
//!    with its records sorted (datatrove's `.minhash.sig` layout: 8 × u64 + u32 document, little-endian);
//! 2. `buckets`, per band: merge the parts' sorted records; documents with equal band hashes are
//!    written as duplicate pairs (datatrove's `.dups`: 4 × u32);
//! 3. `clusters`, once: union-find over all pairs, in datatrove's order and with its union by
//!    size, so the same document of each cluster is kept; the rest listed per part (`.remove`);
//! 4. `filter`, per part: the input without its removed documents, in the input's format.
//!
//! Everything lives in a work directory; each part or band commits its files together with a
//! `.done` marker, so a killed array task re-runs alone and finished ones are skipped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use openseek_common::provenance::Provenance;
use openseek_common::signals::StopSignal;
use openseek_common::{AtomicOutputs, Failure};
use openseek_corpus::inputs::Input;
use openseek_corpus::records::{record_text, Problem, Record};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::documents::{bad_record_failure, check_output_names, describe, output_name, read_batches, BadRecord, DocWriter};
use openseek_corpus::options::OnError;
use crate::minhash::{MinhashConfig, Signer};

/// Which stages a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    All,
    Signatures,
    Buckets,
    Clusters,
    Filter,
}

#[derive(Debug, Clone)]
pub struct MinhashJob {
    /// Every input, in resolved order; part `p` is `inputs[p]`.
    pub inputs: Vec<Input>,
    /// (index, count): this array task's share of the parts (signatures, filter) or bands (buckets).
    pub shard: Option<(usize, usize)>,
    pub work: PathBuf,
    pub output: PathBuf,
    pub config: MinhashConfig,
    pub text_key: String,
    pub on_error: OnError,
    pub workers: usize,
    pub force: bool,
    pub quiet: bool,
}

const MAX_EXAMPLES: usize = 20;

/// What the work directory was made for; every stage checks it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WorkSpec {
    format: String,
    config: MinhashConfig,
    text_key: String,
    inputs: Vec<String>,
}

/// A finished signatures part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedPart {
    pub part: usize,
    pub input: String,
    pub bytes: u64,
    pub sha256: String,
    pub records: u64,
    /// Documents with at least n words (the others have no signature and are always kept).
    pub signed: u64,
    pub skipped: BTreeMap<String, u64>,
}

/// A finished filter part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilteredPart {
    pub part: usize,
    pub input: String,
    pub output: String,
    pub records: u64,
    pub kept: u64,
    pub removed: u64,
    pub skipped: BTreeMap<String, u64>,
    pub skipped_examples: Vec<BadRecord>,
}

/// One cluster of near-duplicates, for the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterExample {
    pub kept: String,
    pub removed: Vec<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Duplicate pairs found over all bands.
    pub pairs: u64,
    /// Documents that are in some cluster.
    pub clustered_documents: u64,
    pub clusters: u64,
    pub removed: u64,
    pub examples: Vec<ClusterExample>,
}

/// The run's manifest, `OUTPUT.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MinhashReport {
    pub format: &'static str,
    pub method: &'static str,
    pub provenance: Provenance,
    pub reference: String,
    pub config: MinhashConfig,
    pub text_key: String,
    pub on_error: OnError,
    pub signatures: Vec<SignedPart>,
    pub parts: Vec<FilteredPart>,
    pub clusters: ClusterStats,
    pub documents: u64,
    pub kept: u64,
    pub removed: u64,
    pub wall_seconds: f64,
}

fn sig_dir(work: &Path, band: usize) -> PathBuf {
    work.join("signatures").join(format!("bucket_{band:03}"))
}
fn sig_file(work: &Path, band: usize, part: usize) -> PathBuf {
    sig_dir(work, band).join(format!("{part:05}.minhash.sig"))
}
fn sig_done(work: &Path, part: usize) -> PathBuf {
    work.join("signatures").join(format!("{part:05}.done"))
}
fn dups_file(work: &Path, band: usize) -> PathBuf {
    work.join("buckets").join(format!("{band:05}_00.dups"))
}
fn dups_done(work: &Path, band: usize) -> PathBuf {
    work.join("buckets").join(format!("{band:05}.done"))
}
fn remove_file(work: &Path, part: usize) -> PathBuf {
    work.join("clusters").join(format!("{part:06}.remove"))
}
fn clusters_done(work: &Path) -> PathBuf {
    work.join("clusters").join("clusters.json")
}
fn filter_done(work: &Path, part: usize) -> PathBuf {
    work.join("filter").join(format!("{part:05}.done"))
}

/// The manifest path for an output directory: `DIR.json` beside it.
pub fn manifest_path(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

fn create_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::cant_create(format!("{}: cannot create directory: {e}", dir.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::io_at(path, "cannot read", &e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::data(format!("{}: unreadable ({e}); delete it and re-run that stage", path.display())))
}

fn io_err<'a>(path: &'a Path, what: &str) -> impl Fn(std::io::Error) -> Failure + 'a {
    let what = what.to_string();
    move |e| Failure::io_at(path, &what, &e)
}

impl MinhashJob {
    fn say(&self, message: impl FnOnce() -> String) {
        if !self.quiet {
            eprintln!("os-dedup: {}", message());
        }
    }

    /// Indices this task handles out of `count` (all without a shard).
    fn my_share(&self, count: usize) -> Vec<usize> {
        match self.shard {
            Some((index, of)) => (0..count).filter(|i| i % of == index).collect(),
            None => (0..count).collect(),
        }
    }

    fn spec(&self) -> WorkSpec {
        WorkSpec {
            format: "openseek-minhash-work-1".into(),
            config: self.config,
            text_key: self.text_key.clone(),
            inputs: self.inputs.iter().map(|i| i.display()).collect(),
        }
    }

    /// Create the work directory, or check that an existing one was made for the same job.
    fn prepare_work(&self) -> Result<(), Failure> {
        create_dir(&self.work)?;
        let spec_path = self.work.join("job.json");
        let spec = self.spec();
        if spec_path.exists() {
            let existing: WorkSpec = read_json(&spec_path)?;
            if existing == spec {
                return Ok(());
            }
            if !self.force || self.shard.is_some() {
                return Err(Failure::config(format!(
                    "{} was made for other inputs or parameters; use another --work directory (or --force without a shard to start over)",
                    self.work.display()
                )));
            }
        }
        if self.force && self.shard.is_none() {
            for sub in ["signatures", "buckets", "clusters", "filter"] {
                let dir = self.work.join(sub);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| Failure::io_at(&dir, "cannot clear", &e))?;
                }
            }
        }
        for sub in ["signatures", "buckets", "clusters", "filter"] {
            create_dir(&self.work.join(sub))?;
        }
        for band in 0..self.config.num_buckets {
            create_dir(&sig_dir(&self.work, band))?;
        }
        let mut outputs = AtomicOutputs::new();
        outputs.write_json(&spec_path, &spec)?;
        outputs.commit()
    }

    /// Run the stage(s) asked for. Returns the manifest when this run completed the job.
    pub fn run(&self, stage: Stage) -> Result<Option<MinhashReport>, Failure> {
        let start = Instant::now();
        let provenance = Provenance::capture("os-dedup", env!("CARGO_PKG_VERSION"));
        let stop = openseek_common::signals::watch();
        if let Some(stdin) = self.inputs.iter().find(|i| i.is_stdin()) {
            return Err(Failure::usage(format!("minhash reads its inputs twice, so {} cannot be one; name files", stdin.display())));
        }
        check_output_names(&self.inputs)?;
        let manifest = manifest_path(&self.output);
        if matches!(stage, Stage::All) && manifest.exists() && !self.force {
            return Err(Failure::cant_create(format!("{} already exists (a finished earlier run); pass --force to redo it", manifest.display())));
        }
        if self.shard.is_some() && matches!(stage, Stage::All | Stage::Clusters) {
            return Err(Failure::usage("--shard-index/--num-shards split the signatures, buckets and filter stages; run clusters (or all) as one task"));
        }
        self.prepare_work()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers.max(1))
            .build()
            .map_err(|e| Failure::software(format!("cannot start {} worker threads: {e}", self.workers)))?;
        if matches!(stage, Stage::All | Stage::Signatures) {
            let signer = Signer::new(self.config);
            for part in self.my_share(self.inputs.len()) {
                self.sign_part(part, &signer, &pool, &stop)?;
            }
        }
        if matches!(stage, Stage::All | Stage::Buckets) {
            let bands = self.my_share(self.config.num_buckets);
            pool.install(|| bands.par_iter().map(|&band| self.bucket_band(band, &stop)).collect::<Result<Vec<()>, Failure>>())?;
        }
        if matches!(stage, Stage::All | Stage::Clusters) {
            self.cluster(&stop)?;
        }
        if matches!(stage, Stage::All | Stage::Filter) {
            create_dir(&self.output)?;
            let parts = self.my_share(self.inputs.len());
            pool.install(|| parts.par_iter().map(|&part| self.filter_part(part, &stop)).collect::<Result<Vec<()>, Failure>>())?;
            return self.finish(provenance, start);
        }
        Ok(None)
    }

    fn sign_part(&self, part: usize, signer: &Signer, pool: &rayon::ThreadPool, stop: &StopSignal) -> Result<(), Failure> {
        let done = sig_done(&self.work, part);
        if done.exists() && !self.force {
            self.say(|| format!("signatures of part {part} already done ({})", done.display()));
            return Ok(());
        }
        let input = &self.inputs[part];
        let bands = self.config.num_buckets;
        let per_band = self.config.hashes_per_bucket;
        // Unsorted records go to scratch files first (memory stays bounded), then each band is
        // sorted on its own, as datatrove does.
        let mut scratch = Scratch::new();
        let mut writers = Vec::with_capacity(bands);
        for band in 0..bands {
            let path = sig_dir(&self.work, band).join(format!(".{part:05}.unsorted-{}", std::process::id()));
            let file = File::create(&path).map_err(|e| Failure::io_at(&path, "cannot create", &e))?;
            scratch.0.push(path);
            writers.push(BufWriter::with_capacity(1 << 16, file));
        }
        let mut signed = 0u64;
        let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
        let key = self.text_key.as_str();
        let stats = read_batches(input, key, (1 << 20) * self.workers.max(1), stop, &mut |batch: Vec<Record>, first: u32| {
            let sigs: Vec<Result<Option<Vec<u64>>, Problem>> =
                pool.install(|| batch.par_iter().map(|r| record_text(r, key).map(|t| signer.signature(&t))).collect());
            for (offset, (record, sig)) in batch.iter().zip(sigs).enumerate() {
                match sig {
                    Ok(Some(sig)) => {
                        signed += 1;
                        let doc = first + offset as u32;
                        for (band, writer) in writers.iter_mut().enumerate() {
                            let mut rec = Vec::with_capacity(per_band * 8 + 4);
                            for h in &sig[band * per_band..(band + 1) * per_band] {
                                rec.extend_from_slice(&h.to_le_bytes());
                            }
                            rec.extend_from_slice(&doc.to_le_bytes());
                            writer.write_all(&rec).map_err(|e| Failure::io(format!("cannot write scratch signatures: {e}")))?;
                        }
                    }
                    Ok(None) => {}
                    Err(problem) => {
                        if self.on_error == OnError::Fail {
                            return Err(bad_record_failure(input, record, &problem));
                        }
                        *skipped.entry(problem.kind().to_string()).or_default() += 1;
                    }
                }
            }
            Ok(())
        })?;
        for writer in writers {
            writer.into_inner().map_err(|e| Failure::io(format!("cannot write scratch signatures: {}", e.error())))?;
        }
        let mut outputs = AtomicOutputs::new();
        let record_size = per_band * 8 + 4;
        for band in 0..bands {
            stop.check("nothing of this part was written; run the same command again to redo it")?;
            let unsorted = std::fs::read(&scratch.0[band]).map_err(io_err(&scratch.0[band], "cannot read scratch"))?;
            let count = unsorted.len() / record_size;
            let fields = |i: usize| -> Vec<u64> {
                let rec = &unsorted[i * record_size..(i + 1) * record_size];
                let mut f: Vec<u64> = rec[..per_band * 8].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
                f.push(u32::from_le_bytes(rec[per_band * 8..].try_into().unwrap()) as u64);
                f
            };
            let mut keyed: Vec<(Vec<u64>, usize)> = (0..count).map(|i| (fields(i), i)).collect();
            keyed.sort_unstable();
            let path = sig_file(&self.work, band, part);
            let mut out = BufWriter::with_capacity(1 << 20, outputs.create(&path)?);
            for (_, i) in keyed {
                out.write_all(&unsorted[i * record_size..(i + 1) * record_size]).map_err(io_err(&path, "cannot write"))?;
            }
            out.into_inner().map_err(|e| Failure::io(format!("{}: cannot write: {}", path.display(), e.error())))?;
        }
        let record = SignedPart {
            part,
            input: input.display(),
            bytes: stats.bytes,
            sha256: stats.sha256,
            records: stats.records,
            signed,
            skipped,
        };
        outputs.write_json(&done, &record)?;
        outputs.commit()?;
        self.say(|| format!("signatures of part {part} ({}): {} documents, {} signed", input.display(), record.records, signed));
        Ok(())
    }

    fn require_all_signatures(&self) -> Result<(), Failure> {
        let missing: Vec<String> =
            (0..self.inputs.len()).filter(|&p| !sig_done(&self.work, p).exists()).map(|p| p.to_string()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Failure::no_input(format!(
            "the signatures of part(s) {} are not done in {}; run --stage signatures for them first",
            missing.join(", "),
            self.work.display()
        )))
    }

    fn bucket_band(&self, band: usize, stop: &StopSignal) -> Result<(), Failure> {
        let done = dups_done(&self.work, band);
        if done.exists() && !self.force {
            return Ok(());
        }
        self.require_all_signatures()?;
        let per_band = self.config.hashes_per_bucket;
        let mut readers = Vec::new();
        for part in 0..self.inputs.len() {
            let path = sig_file(&self.work, band, part);
            let file = File::open(&path).map_err(io_err(&path, "cannot open signatures"))?;
            readers.push(SigReader { reader: BufReader::with_capacity(1 << 16, file), path, per_band, last: None });
        }
        let mut heap = BinaryHeap::new();
        for (part, reader) in readers.iter_mut().enumerate() {
            if let Some((sig, doc)) = reader.next()? {
                heap.push(Reverse((sig, part as u32, doc)));
            }
        }
        let mut outputs = AtomicOutputs::new();
        let path = dups_file(&self.work, band);
        let mut out = BufWriter::with_capacity(1 << 20, outputs.create(&path)?);
        let mut last: Option<(Vec<u64>, u32, u32)> = None;
        let mut pairs = 0u64;
        let mut popped = 0u64;
        while let Some(Reverse((sig, part, doc))) = heap.pop() {
            popped += 1;
            if popped.is_multiple_of(65536) {
                stop.check("nothing of this band was written; run the same command again to redo it")?;
            }
            if let Some((last_sig, last_part, last_doc)) = &last {
                if *last_sig == sig {
                    for v in [*last_part, *last_doc, part, doc] {
                        out.write_all(&v.to_le_bytes()).map_err(io_err(&path, "cannot write"))?;
                    }
                    pairs += 1;
                }
            }
            if let Some((next_sig, next_doc)) = readers[part as usize].next()? {
                heap.push(Reverse((next_sig, part, next_doc)));
            }
            last = Some((sig, part, doc));
        }
        out.into_inner().map_err(|e| Failure::io(format!("{}: cannot write: {}", path.display(), e.error())))?;
        outputs.write_json(&done, &serde_json::json!({ "band": band, "pairs": pairs }))?;
        outputs.commit()
    }

    fn cluster(&self, stop: &StopSignal) -> Result<(), Failure> {
        let done = clusters_done(&self.work);
        if done.exists() && !self.force {
            return Ok(());
        }
        let missing: Vec<String> =
            (0..self.config.num_buckets).filter(|&b| !dups_done(&self.work, b).exists()).map(|b| b.to_string()).collect();
        if !missing.is_empty() {
            return Err(Failure::no_input(format!(
                "the buckets stage of band(s) {} is not done in {}; run --stage buckets first",
                missing.join(", "),
                self.work.display()
            )));
        }
        let mut sets = UnionFind::default();
        let mut pairs = 0u64;
        for band in 0..self.config.num_buckets {
            stop.check("no clusters were written; run the same command again to redo it")?;
            let path = dups_file(&self.work, band);
            let bytes = std::fs::read(&path).map_err(io_err(&path, "cannot read"))?;
            if bytes.len() % 16 != 0 {
                return Err(Failure::data(format!("{}: truncated (size not a multiple of 16); delete {} and re-run the buckets stage", path.display(), dups_done(&self.work, band).display())));
            }
            for pair in bytes.chunks_exact(16) {
                let v: Vec<u64> = pair.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64).collect();
                sets.union((v[0] << 32) | v[1], (v[2] << 32) | v[3]);
                pairs += 1;
            }
        }
        let mut nodes: Vec<u64> = sets.parent.keys().copied().collect();
        nodes.sort_unstable();
        let mut removed_by_part: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        let mut members: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut removed = 0u64;
        for &node in &nodes {
            let root = sets.find(node);
            if root != node {
                removed_by_part.entry((node >> 32) as usize).or_default().push(node as u32);
                removed += 1;
                let list = members.entry(root).or_default();
                if list.len() < 10 {
                    list.push(node);
                }
            } else {
                members.entry(root).or_default();
            }
        }
        let name = |node: u64| format!("{} document {}", self.inputs.get((node >> 32) as usize).map(|i| i.display()).unwrap_or_default(), node as u32);
        let examples = members
            .iter()
            .take(MAX_EXAMPLES)
            .map(|(&root, list)| ClusterExample {
                kept: name(root),
                removed: list.iter().map(|&n| name(n)).collect(),
                size: sets.size.get(&root).copied().unwrap_or(1),
            })
            .collect();
        let stats = ClusterStats { pairs, clustered_documents: nodes.len() as u64, clusters: members.len() as u64, removed, examples };
        let mut outputs = AtomicOutputs::new();
        for (part, docs) in &removed_by_part {
            let path = remove_file(&self.work, *part);
            let mut out = BufWriter::new(outputs.create(&path)?);
            for doc in docs {
                out.write_all(&doc.to_le_bytes()).map_err(io_err(&path, "cannot write"))?;
            }
            out.into_inner().map_err(|e| Failure::io(format!("{}: cannot write: {}", path.display(), e.error())))?;
        }
        // A stale list from an earlier (forced) run must not survive.
        for part in 0..self.inputs.len() {
            let path = remove_file(&self.work, part);
            if !removed_by_part.contains_key(&part) && path.exists() {
                std::fs::remove_file(&path).map_err(io_err(&path, "cannot remove stale list"))?;
            }
        }
        outputs.write_json(&done, &stats)?;
        outputs.commit()?;
        self.say(|| format!("clusters: {pairs} duplicate pairs, {} clusters, {removed} documents to remove", stats.clusters));
        Ok(())
    }

    fn filter_part(&self, part: usize, stop: &StopSignal) -> Result<(), Failure> {
        let done = filter_done(&self.work, part);
        if done.exists() && !self.force {
            return Ok(());
        }
        if !clusters_done(&self.work).exists() {
            return Err(Failure::no_input(format!("the clusters stage is not done in {}; run --stage clusters first", self.work.display())));
        }
        let input = &self.inputs[part];
        let signed: SignedPart = read_json(&sig_done(&self.work, part))?;
        let list_path = remove_file(&self.work, part);
        let remove: Vec<u32> = if list_path.exists() {
            let bytes = std::fs::read(&list_path).map_err(io_err(&list_path, "cannot read"))?;
            bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
        } else {
            Vec::new()
        };
        let out_path = self.output.join(output_name(input));
        if out_path.exists() && !self.force {
            return Err(Failure::cant_create(format!("{} already exists; pass --force to replace it", out_path.display())));
        }
        let mut outputs = AtomicOutputs::new();
        let mut writer = DocWriter::create(&out_path, input.compression, &self.text_key, &mut outputs)?;
        let mut next_removal = 0usize;
        let (mut kept, mut removed) = (0u64, 0u64);
        let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
        let mut examples = Vec::new();
        let key = self.text_key.as_str();
        let stats = read_batches(input, key, 1 << 22, stop, &mut |batch, first| {
            for (offset, record) in batch.iter().enumerate() {
                let doc = first + offset as u32;
                while next_removal < remove.len() && remove[next_removal] < doc {
                    next_removal += 1;
                }
                if next_removal < remove.len() && remove[next_removal] == doc {
                    removed += 1;
                    continue;
                }
                match record_text(record, key) {
                    Ok(text) => {
                        writer.write(record, &text)?;
                        kept += 1;
                    }
                    Err(problem) => {
                        if self.on_error == OnError::Fail {
                            return Err(bad_record_failure(input, record, &problem));
                        }
                        *skipped.entry(problem.kind().to_string()).or_default() += 1;
                        if examples.len() < MAX_EXAMPLES {
                            examples.push(BadRecord { input: input.display(), location: describe(input, record), problem: problem.to_string() });
                        }
                    }
                }
            }
            Ok(())
        })?;
        if stats.sha256 != signed.sha256 {
            return Err(Failure::data(format!(
                "{} changed since its signatures were computed (sha256 {} then, {} now); start over with --force",
                input.display(),
                signed.sha256,
                stats.sha256
            )));
        }
        writer.finish()?;
        let record = FilteredPart {
            part,
            input: input.display(),
            output: out_path.display().to_string(),
            records: stats.records,
            kept,
            removed,
            skipped,
            skipped_examples: examples,
        };
        outputs.write_json(&done, &record)?;
        outputs.commit()
    }

    /// Write the manifest once every part is filtered (whichever task finishes last does it).
    fn finish(&self, provenance: Provenance, start: Instant) -> Result<Option<MinhashReport>, Failure> {
        if (0..self.inputs.len()).any(|p| !filter_done(&self.work, p).exists()) {
            return Ok(None);
        }
        let signatures: Vec<SignedPart> = (0..self.inputs.len()).map(|p| read_json(&sig_done(&self.work, p))).collect::<Result<_, _>>()?;
        let parts: Vec<FilteredPart> = (0..self.inputs.len()).map(|p| read_json(&filter_done(&self.work, p))).collect::<Result<_, _>>()?;
        let clusters: ClusterStats = read_json(&clusters_done(&self.work))?;
        let report = MinhashReport {
            format: "openseek-dedup",
            method: "minhash",
            provenance,
            reference: format!("datatrove 0.10.1 minhash_deduplication (language en: spaCy {} English words)", crate::words::EnglishWords::get().spacy_version),
            config: self.config,
            text_key: self.text_key.clone(),
            on_error: self.on_error,
            documents: parts.iter().map(|p| p.records).sum(),
            kept: parts.iter().map(|p| p.kept).sum(),
            removed: parts.iter().map(|p| p.removed).sum(),
            signatures,
            parts,
            clusters,
            wall_seconds: start.elapsed().as_secs_f64(),
        };
        let mut outputs = AtomicOutputs::new();
        outputs.write_json(&manifest_path(&self.output), &report)?;
        outputs.commit()?;
        Ok(Some(report))
    }
}

/// Scratch files removed when dropped.
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn new() -> Self {
        Scratch(Vec::new())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads one sorted `.minhash.sig` file, checking the order.
struct SigReader {
    reader: BufReader<File>,
    path: PathBuf,
    per_band: usize,
    last: Option<(Vec<u64>, u32)>,
}

impl SigReader {
    fn next(&mut self) -> Result<Option<(Vec<u64>, u32)>, Failure> {
        let mut rec = vec![0u8; self.per_band * 8 + 4];
        let mut filled = 0;
        while filled < rec.len() {
            let n = self.reader.read(&mut rec[filled..]).map_err(io_err(&self.path, "cannot read"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(None);
        }
        if filled < rec.len() {
            return Err(Failure::data(format!("{}: truncated signature file; re-run the signatures stage of that part with --force", self.path.display())));
        }
        let sig: Vec<u64> = rec[..self.per_band * 8].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let doc = u32::from_le_bytes(rec[self.per_band * 8..].try_into().unwrap());
        let current = (sig, doc);
        if let Some(last) = &self.last {
            if current < *last {
                return Err(Failure::data(format!("{}: records out of order; re-run the signatures stage of that part with --force", self.path.display())));
            }
        }
        self.last = Some(current.clone());
        Ok(Some(current))
    }
}

/// datatrove's union-find: union by size, the first document's root winning ties.
#[derive(Default)]
struct UnionFind {
    parent: HashMap<u64, u64>,
    size: HashMap<u64, u64>,
}

impl UnionFind {
    fn find(&mut self, x: u64) -> u64 {
        let mut root = *self.parent.entry(x).or_insert(x);
        while let Some(&up) = self.parent.get(&root) {
            if up == root {
                break;
            }
            root = up;
        }
        let mut node = x;
        while node != root {
            let up = self.parent[&node];
            self.parent.insert(node, root);
            node = up;
        }
        root
    }

    fn union(&mut self, a: u64, b: u64) {
        let (mut root_a, mut root_b) = (self.find(a), self.find(b));
        if root_a == root_b {
            return;
        }
        let (mut size_a, mut size_b) = (self.size.get(&root_a).copied().unwrap_or(1), self.size.get(&root_b).copied().unwrap_or(1));
        if size_a < size_b {
            std::mem::swap(&mut root_a, &mut root_b);
            std::mem::swap(&mut size_a, &mut size_b);
        }
        self.parent.insert(root_b, root_a);
        self.size.insert(root_a, size_a + size_b);
        self.size.remove(&root_b);
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_by_size_keeps_the_first_root_on_ties() {
        let mut sets = UnionFind::default();
        sets.union(1, 2);
        assert_eq!(sets.find(2), 1);
        sets.union(3, 4);
        sets.union(4, 2); // equal sizes: 4's root (3) wins
        assert_eq!(sets.find(1), 3);
        sets.union(5, 1); // 5 alone is smaller: joins 3
        assert_eq!(sets.find(5), 3);
        assert_eq!(sets.size[&3], 5);
    }
}
