//! Exact deduplication. `documents`: a document whose normalised text (datatrove's
//! `simplify_text`) hashes (xxh3-128) like an earlier one is dropped; the first is kept.
//! `substrings`: the suffix-array method of google-research/deduplicate-text-datasets: all
//! documents' texts in one suffix array (SA-IS, the `suffix` crate) with its LCP array (Kasai);
//! suffixes sharing a prefix of at least `min_bytes` bytes inside their documents are the same
//! span; every occurrence but the earliest is cut out (spans, not documents), and a document left
//! empty is dropped. Both keep input order and write the inputs' formats.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use openseek_common::provenance::Provenance;
use openseek_common::{AtomicOutputs, Failure};
use openseek_corpus::inputs::Input;
use openseek_corpus::records::{record_text, Record};
use rayon::prelude::*;
use serde::Serialize;

use crate::documents::{bad_record_failure, check_output_names, describe, output_name, read_batches, BadRecord, DocWriter};
use openseek_corpus::options::OnError;
use crate::normalize::simplify_text;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum ExactMode {
    Documents,
    Substrings { min_bytes: usize },
}

pub struct ExactJob {
    pub inputs: Vec<Input>,
    pub output: PathBuf,
    pub mode: ExactMode,
    pub text_key: String,
    pub on_error: OnError,
    pub workers: usize,
    pub force: bool,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExactPart {
    pub input: String,
    pub output: String,
    pub sha256: String,
    pub records: u64,
    pub kept: u64,
    /// Documents dropped: duplicates (documents) or left empty (substrings).
    pub dropped: u64,
    /// Documents with spans cut out (substrings).
    pub edited: u64,
    pub removed_bytes: u64,
    pub skipped: BTreeMap<String, u64>,
    pub skipped_examples: Vec<BadRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExactReport {
    pub format: &'static str,
    pub method: &'static str,
    pub provenance: Provenance,
    pub config: ExactMode,
    pub text_key: String,
    pub on_error: OnError,
    pub documents: u64,
    pub kept: u64,
    pub dropped: u64,
    pub edited: u64,
    pub text_bytes: u64,
    pub removed_bytes: u64,
    pub parts: Vec<ExactPart>,
    pub wall_seconds: f64,
}

/// The LCP array of a suffix array over bytes (Kasai et al.): `lcp[i]` is the common prefix of
/// suffixes `sa[i - 1]` and `sa[i]` (`lcp[0] = 0`).
pub fn lcp_array(text: &[u8], sa: &[u32]) -> Vec<u32> {
    let n = text.len();
    let mut rank = vec![0u32; n];
    for (r, &p) in sa.iter().enumerate() {
        rank[p as usize] = r as u32;
    }
    let mut lcp = vec![0u32; n];
    let mut h = 0usize;
    for p in 0..n {
        let r = rank[p] as usize;
        if r > 0 {
            let q = sa[r - 1] as usize;
            while p + h < n && q + h < n && text[p + h] == text[q + h] {
                h += 1;
            }
            lcp[r] = h as u32;
            h = h.saturating_sub(1);
        } else {
            h = 0;
        }
    }
    lcp
}

/// Byte ranges (start, end) of `text` to cut: every occurrence but the earliest of each
/// `min_bytes`-long substring repeated within documents (`starts`: each document's offset).
pub fn repeated_spans(text: &str, starts: &[usize], min_bytes: usize) -> Vec<(usize, usize)> {
    if text.is_empty() || min_bytes == 0 {
        return Vec::new();
    }
    let table = suffix::SuffixTable::new(text);
    let sa = table.table();
    let lcp = lcp_array(text.as_bytes(), sa);
    let doc_end = |p: usize| -> usize {
        let doc = starts.partition_point(|&s| s <= p) - 1;
        starts.get(doc + 1).copied().unwrap_or(text.len())
    };
    let inside = |p: usize| p + min_bytes <= doc_end(p);
    let mut cut_starts: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < sa.len() {
        let mut j = i + 1;
        while j < sa.len() && lcp[j] as usize >= min_bytes {
            j += 1;
        }
        if j - i > 1 {
            let mut members: Vec<usize> = sa[i..j].iter().map(|&p| p as usize).filter(|&p| inside(p)).collect();
            if members.len() > 1 {
                members.sort_unstable();
                cut_starts.extend_from_slice(&members[1..]);
            }
        }
        i = j;
    }
    cut_starts.sort_unstable();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for s in cut_starts {
        let e = s + min_bytes;
        match spans.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => spans.push((s, e)),
        }
    }
    spans
}

/// `text` without the byte ranges (document-local), shrunk to character boundaries.
fn cut(text: &str, spans: &[(usize, usize)]) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for &(s, e) in spans {
        let mut s = s.max(at);
        while !text.is_char_boundary(s) {
            s += 1;
        }
        let mut e = e.min(text.len());
        while !text.is_char_boundary(e) {
            e -= 1;
        }
        if s >= e {
            continue;
        }
        out.push_str(&text[at..s]);
        at = e;
    }
    out.push_str(&text[at..]);
    let removed = text.len() - out.len();
    (out, removed)
}

fn manifest_path(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

impl ExactJob {
    /// Call `handle` with every record of `input` and its text (None for a bad record being skipped).
    fn for_each_text(&self, input: &Input, handle: &mut TextHandler) -> Result<openseek_corpus::records::InputStats, Failure> {
        let stop = openseek_common::signals::watch();
        read_batches(input, &self.text_key, 1 << 22, &stop, &mut |batch, _| {
            for record in &batch {
                match record_text(record, &self.text_key) {
                    Ok(text) => handle(record, Some(&text))?,
                    Err(problem) if self.on_error == OnError::Fail => return Err(bad_record_failure(input, record, &problem)),
                    Err(_) => handle(record, None)?,
                }
            }
            Ok(())
        })
    }

    pub fn run(&self) -> Result<ExactReport, Failure> {
        let start = Instant::now();
        let provenance = Provenance::capture("os-dedup", env!("CARGO_PKG_VERSION"));
        openseek_common::signals::watch();
        if let Some(stdin) = self.inputs.iter().find(|i| i.is_stdin()) {
            return Err(Failure::usage(format!("exact deduplication reads its inputs twice, so {} cannot be one; name files", stdin.display())));
        }
        let manifest = manifest_path(&self.output);
        if manifest.exists() && !self.force {
            return Err(Failure::cant_create(format!("{} already exists (a finished earlier run); pass --force to redo it", manifest.display())));
        }
        check_output_names(&self.inputs)?;
        std::fs::create_dir_all(&self.output).map_err(|e| Failure::cant_create(format!("{}: cannot create directory: {e}", self.output.display())))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers.max(1))
            .build()
            .map_err(|e| Failure::software(format!("cannot start {} worker threads: {e}", self.workers)))?;

        // Pass 1: what to drop or cut, per document in reading order.
        let mut text_bytes = 0u64;
        let decisions: Decisions = match self.mode {
            ExactMode::Documents => {
                let mut seen: HashSet<u128> = HashSet::new();
                let mut keep = Vec::new();
                for input in &self.inputs {
                    let mut texts: Vec<Option<String>> = Vec::new();
                    self.for_each_text(input, &mut |_, text| {
                        texts.push(text.map(str::to_string));
                        Ok(())
                    })?;
                    let hashes: Vec<Option<u128>> = pool.install(|| {
                        texts.par_iter().map(|t| t.as_ref().map(|t| twox_hash::XxHash3_128::oneshot(simplify_text(t).as_bytes()))).collect()
                    });
                    for (t, h) in texts.iter().zip(hashes) {
                        text_bytes += t.as_ref().map_or(0, |t| t.len() as u64);
                        keep.push(h.is_none_or(|h| seen.insert(h)));
                    }
                }
                Decisions::Keep(keep)
            }
            ExactMode::Substrings { min_bytes } => {
                let mut all = String::new();
                let mut starts = Vec::new();
                for input in &self.inputs {
                    self.for_each_text(input, &mut |_, text| {
                        starts.push(all.len());
                        all.push_str(text.unwrap_or(""));
                        Ok(())
                    })?;
                }
                if all.len() >= u32::MAX as usize {
                    return Err(Failure::usage(format!("{} bytes of text: the suffix array takes under 4 GiB at a time; split the inputs", all.len())));
                }
                text_bytes = all.len() as u64;
                let spans = repeated_spans(&all, &starts, min_bytes);
                let mut per_doc: Vec<Vec<(usize, usize)>> = vec![Vec::new(); starts.len()];
                for (s, e) in spans {
                    let doc = starts.partition_point(|&x| x <= s) - 1;
                    per_doc[doc].push((s - starts[doc], e - starts[doc]));
                }
                Decisions::Cut(per_doc)
            }
        };

        // Pass 2: write.
        let mut index = 0usize;
        let mut parts = Vec::new();
        let mut outputs = AtomicOutputs::new();
        for input in &self.inputs {
            let out_path = self.output.join(output_name(input));
            if out_path.exists() && !self.force {
                return Err(Failure::cant_create(format!("{} already exists; pass --force to replace it", out_path.display())));
            }
            let mut writer = DocWriter::create(&out_path, input.compression, &self.text_key, &mut outputs)?;
            let (mut kept, mut dropped, mut edited, mut removed_bytes) = (0u64, 0u64, 0u64, 0u64);
            let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
            let mut examples = Vec::new();
            let stats = self.for_each_text(input, &mut |record, text| {
                let i = index;
                index += 1;
                let Some(text) = text else {
                    let problem = record_text(record, &self.text_key).err().map(|p| (p.kind(), p.to_string())).unwrap_or_default();
                    *skipped.entry(problem.0.to_string()).or_default() += 1;
                    if examples.len() < 20 {
                        examples.push(BadRecord { input: input.display(), location: describe(input, record), problem: problem.1 });
                    }
                    return Ok(());
                };
                match &decisions {
                    Decisions::Keep(keep) => {
                        if keep[i] {
                            writer.write(record, text)?;
                            kept += 1;
                        } else {
                            dropped += 1;
                            removed_bytes += text.len() as u64;
                        }
                    }
                    Decisions::Cut(per_doc) => {
                        if per_doc[i].is_empty() {
                            writer.write(record, text)?;
                            kept += 1;
                        } else {
                            let (rest, removed) = cut(text, &per_doc[i]);
                            removed_bytes += removed as u64;
                            if rest.trim().is_empty() {
                                dropped += 1;
                                removed_bytes += (text.len() - removed) as u64;
                            } else {
                                writer.write_edited(record, &rest, &[])?;
                                kept += 1;
                                edited += u64::from(removed > 0);
                            }
                        }
                    }
                }
                Ok(())
            })?;
            writer.finish()?;
            parts.push(ExactPart {
                input: input.display(),
                output: out_path.display().to_string(),
                sha256: stats.sha256,
                records: stats.records,
                kept,
                dropped,
                edited,
                removed_bytes,
                skipped,
                skipped_examples: examples,
            });
        }
        let report = ExactReport {
            format: "openseek-dedup",
            method: match self.mode {
                ExactMode::Documents => "exact-documents",
                ExactMode::Substrings { .. } => "exact-substrings",
            },
            provenance,
            config: self.mode,
            text_key: self.text_key.clone(),
            on_error: self.on_error,
            documents: parts.iter().map(|p| p.records).sum(),
            kept: parts.iter().map(|p| p.kept).sum(),
            dropped: parts.iter().map(|p| p.dropped).sum(),
            edited: parts.iter().map(|p| p.edited).sum(),
            text_bytes,
            removed_bytes: parts.iter().map(|p| p.removed_bytes).sum(),
            parts,
            wall_seconds: start.elapsed().as_secs_f64(),
        };
        outputs.write_json(&manifest, &report)?;
        outputs.commit()?;
        Ok(report)
    }
}

type TextHandler<'h> = dyn FnMut(&Record, Option<&str>) -> Result<(), Failure> + 'h;

enum Decisions {
    Keep(Vec<bool>),
    Cut(Vec<Vec<(usize, usize)>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_array_is_byte_sorted_and_lcp_is_right() {
        let text = "héllo wörld héllo 熊猫 wörld 熊猫!";
        let table = suffix::SuffixTable::new(text);
        let sa = table.table();
        assert_eq!(sa.len(), text.len());
        for w in sa.windows(2) {
            assert!(text.as_bytes()[w[0] as usize..] < text.as_bytes()[w[1] as usize..]);
        }
        let lcp = lcp_array(text.as_bytes(), sa);
        for i in 1..sa.len() {
            let (a, b) = (&text.as_bytes()[sa[i - 1] as usize..], &text.as_bytes()[sa[i] as usize..]);
            assert_eq!(lcp[i] as usize, a.iter().zip(b).take_while(|(x, y)| x == y).count());
        }
    }

    #[test]
    fn later_repeats_are_cut_inside_documents_only() {
        let docs = ["alpha beta gamma delta. unique one.", "prefix alpha beta gamma delta. tail", "short", "tail-end alpha beta"];
        let mut all = String::new();
        let mut starts = Vec::new();
        for d in docs {
            starts.push(all.len());
            all.push_str(d);
        }
        let spans = repeated_spans(&all, &starts, 12);
        // "alpha beta gamma delta. " is first in document 0: cut from document 1 only.
        let cut_text: Vec<&str> = spans.iter().map(|&(s, e)| &all[s..e]).collect();
        assert_eq!(cut_text, ["alpha beta gamma delta. "]);
        assert!(spans[0].0 >= starts[1] && spans[0].1 <= starts[2]);
        // A span ending inside a character keeps that character.
        assert_eq!(cut("ab熊cd", &[(1, 3)]), ("a熊cd".to_string(), 1));
    }
}
