//! fastText supervised classifiers (such as the `lid.176` language identifier) read from
//! fastText's own model files — `.bin` and the quantized `.ftz` — and evaluated as fastText 0.9.2
//! evaluates them: the line is cut into words at its whitespace bytes with `</s>` appended, each
//! word becomes its vocabulary row and its character n-grams' buckets (FNV-1a over the bytes of
//! `<word>`, signed as fastText hashes them), word n-grams add theirs, the rows are averaged, and
//! the model's loss (softmax, hierarchical softmax, one-vs-all, negative sampling) gives the
//! labels' probabilities, reported as `exp(log(p + 1e-5))` in single precision as fastText does.

use std::collections::HashMap;
use std::path::Path;

use openseek_common::Failure;

const MAGIC: i32 = 793_712_314;
const NEWEST_VERSION: i32 = 12;
const EOS: &str = "</s>";
const LABEL_PREFIX: &str = "__label__";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    HierarchicalSoftmax,
    NegativeSampling,
    Softmax,
    OneVsAll,
}

/// A product quantizer: `nsubq` sub-vectors of `dsub` values (the last of `lastdsub`), 256 centroids each.
struct ProductQuantizer {
    nsubq: usize,
    dsub: usize,
    lastdsub: usize,
    centroids: Vec<f32>,
}

impl ProductQuantizer {
    fn centroid(&self, m: usize, code: u8) -> &[f32] {
        let code = code as usize;
        if m == self.nsubq - 1 {
            let at = m * 256 * self.dsub + code * self.lastdsub;
            &self.centroids[at..at + self.lastdsub]
        } else {
            let at = (m * 256 + code) * self.dsub;
            &self.centroids[at..at + self.dsub]
        }
    }
}

enum Matrix {
    Dense { cols: usize, data: Vec<f32> },
    Quantized { codes: Vec<u8>, pq: ProductQuantizer, norms: Option<(Vec<u8>, ProductQuantizer)> },
}

impl Matrix {
    fn norm(&self, row: usize) -> f32 {
        match self {
            Matrix::Quantized { norms: Some((codes, npq)), .. } => npq.centroid(0, codes[row])[0],
            _ => 1.0,
        }
    }

    fn add_row(&self, x: &mut [f32], row: usize) {
        match self {
            Matrix::Dense { cols, data } => x.iter_mut().zip(&data[row * cols..(row + 1) * cols]).for_each(|(x, v)| *x += v),
            Matrix::Quantized { codes, pq, .. } => {
                let alpha = self.norm(row);
                for (m, &code) in codes[row * pq.nsubq..(row + 1) * pq.nsubq].iter().enumerate() {
                    let start = m * pq.dsub;
                    x[start..].iter_mut().zip(pq.centroid(m, code)).for_each(|(x, c)| *x += alpha * c);
                }
            }
        }
    }

    fn dot_row(&self, x: &[f32], row: usize) -> f32 {
        match self {
            Matrix::Dense { cols, data } => data[row * cols..(row + 1) * cols].iter().zip(x).fold(0.0f32, |d, (w, x)| d + w * x),
            Matrix::Quantized { codes, pq, .. } => {
                let mut sum = 0.0f32;
                for (m, &code) in codes[row * pq.nsubq..(row + 1) * pq.nsubq].iter().enumerate() {
                    sum = x[m * pq.dsub..].iter().zip(pq.centroid(m, code)).fold(sum, |d, (x, c)| d + x * c);
                }
                sum * self.norm(row)
            }
        }
    }
}

/// One label and fastText's probability for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction<'m> {
    pub label: &'m str,
    pub probability: f32,
}

/// A fastText supervised model.
pub struct FastTextModel {
    pub dim: usize,
    pub loss: Loss,
    pub quantized: bool,
    word_ngrams: usize,
    bucket: u32,
    minn: usize,
    maxn: usize,
    nwords: usize,
    words: HashMap<Box<[u8]>, u32>,
    /// Every vocabulary word's input rows (itself and its character n-grams).
    word_rows: Vec<Vec<u32>>,
    pub labels: Vec<String>,
    /// Pruned (quantized) models: n-gram bucket -> its row after the words; None when unpruned.
    pruned: Option<HashMap<i32, i32>>,
    input: Matrix,
    output: Matrix,
    /// Hierarchical softmax: (left, right) children of each node; leaves are the labels.
    tree: Vec<(i32, i32)>,
    sigmoid_table: Vec<f32>,
}

/// The file's bytes with a cursor; running past the end is a truncated model.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() - self.at < n {
            return Err(format!("truncated: {what} needs {n} bytes at offset {}, the file has {}", self.at, self.bytes.len()));
        }
        self.at += n;
        Ok(&self.bytes[self.at - n..self.at])
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self, what: &str) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, String> {
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| format!("{what}: {n} values is too many"))?, what)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
    fn size(&mut self, what: &str) -> Result<usize, String> {
        let n = self.i64(what)?;
        usize::try_from(n).map_err(|_| format!("{what} is {n}"))
    }
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| format!("{what} is {n}"))
    }

    fn quantizer(&mut self, what: &str) -> Result<ProductQuantizer, String> {
        let dim = self.count(&format!("{what} dimension"))?;
        let nsubq = self.count(&format!("{what} sub-quantizers"))?;
        let dsub = self.count(&format!("{what} sub-vector size"))?;
        let lastdsub = self.count(&format!("{what} last sub-vector size"))?;
        if nsubq == 0 || dsub == 0 || lastdsub == 0 || lastdsub > dsub || (nsubq - 1) * dsub + lastdsub != dim {
            return Err(format!("{what}: {nsubq} sub-vectors of {dsub} (last {lastdsub}) do not make dimension {dim}"));
        }
        let centroids = self.f32s(dim * 256, &format!("{what} centroids"))?;
        Ok(ProductQuantizer { nsubq, dsub, lastdsub, centroids })
    }

    /// A dense or quantized matrix; returns it with its (rows, columns).
    fn matrix(&mut self, quantized: bool, what: &str) -> Result<(Matrix, usize, usize), String> {
        if !quantized {
            let rows = self.size(&format!("{what} rows"))?;
            let cols = self.size(&format!("{what} columns"))?;
            let n = rows.checked_mul(cols).ok_or_else(|| format!("{what}: {rows} x {cols} is too large"))?;
            return Ok((Matrix::Dense { cols, data: self.f32s(n, what)? }, rows, cols));
        }
        let qnorm = self.u8(&format!("{what} norm flag"))? != 0;
        let rows = self.size(&format!("{what} rows"))?;
        let cols = self.size(&format!("{what} columns"))?;
        let codesize = self.count(&format!("{what} code size"))?;
        let codes = self.take(codesize, &format!("{what} codes"))?.to_vec();
        let pq = self.quantizer(&format!("{what} quantizer"))?;
        if pq.nsubq * pq.dsub - pq.dsub + pq.lastdsub != cols || codesize != rows * pq.nsubq {
            return Err(format!("{what}: the quantizer does not fit a {rows} x {cols} matrix ({codesize} codes)"));
        }
        let norms = if qnorm {
            let codes = self.take(rows, &format!("{what} norm codes"))?.to_vec();
            let npq = self.quantizer(&format!("{what} norm quantizer"))?;
            if npq.nsubq != 1 || npq.dsub != 1 {
                return Err(format!("{what}: the norm quantizer is not one-dimensional"));
            }
            Some((codes, npq))
        } else {
            None
        };
        Ok((Matrix::Quantized { codes, pq, norms }, rows, cols))
    }
}

/// fastText's word hash: 32-bit FNV-1a over the bytes taken as signed chars.
pub fn hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261u32, |h, &b| (h ^ (b as i8 as i32 as u32)).wrapping_mul(16_777_619))
}

/// `std_log` of fastText's losses: the log of `x + 1e-5`, in double precision, rounded to float.
fn std_log(x: f32) -> f32 {
    (x as f64 + 1e-5).ln() as f32
}

impl FastTextModel {
    /// Read a `.bin` or `.ftz` model; errors name the file.
    pub fn load(path: &Path) -> Result<Self, Failure> {
        let bytes = std::fs::read(path).map_err(|e| Failure::io_at(path, "cannot read fastText model", &e))?;
        Self::parse(&bytes).map_err(|why| Failure::data(format!("{}: not a usable fastText model: {why}", path.display())))
    }

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        let magic = r.i32("magic number")?;
        if magic != MAGIC {
            return Err(format!("wrong magic number {magic:#x} (fastText's is {MAGIC:#x})"));
        }
        let version = r.i32("version")?;
        if !(11..=NEWEST_VERSION).contains(&version) {
            return Err(format!("file format version {version} (fastText 0.9.2 reads 11 and 12)"));
        }
        let dim = r.count("dim")?;
        for what in ["ws", "epoch", "minCount", "neg"] {
            r.i32(what)?;
        }
        let word_ngrams = r.count("wordNgrams")?;
        let loss = match r.i32("loss")? {
            1 => Loss::HierarchicalSoftmax,
            2 => Loss::NegativeSampling,
            3 => Loss::Softmax,
            4 => Loss::OneVsAll,
            other => return Err(format!("unknown loss {other}")),
        };
        let model = r.i32("model")?;
        if model != 3 {
            return Err(format!("a word-vector model ({}), not a supervised classifier", if model == 1 { "cbow" } else { "skipgram" }));
        }
        let bucket = r.count("bucket")?;
        let minn = r.count("minn")?;
        let mut maxn = r.count("maxn")?;
        r.i32("lrUpdateRate")?;
        r.f64("t")?;
        if version == 11 {
            // fastText: old supervised models do not use character n-grams.
            maxn = 0;
        }

        let size = r.count("dictionary size")?;
        let nwords = r.count("dictionary words")?;
        let nlabels = r.count("dictionary labels")?;
        r.i64("dictionary tokens")?;
        let prune_size = r.i64("dictionary pruned n-grams")?;
        if nwords + nlabels != size || nlabels == 0 {
            return Err(format!("dictionary of {size} entries holds {nwords} words and {nlabels} labels"));
        }
        let mut entries: Vec<(&[u8], i64, u8)> = Vec::with_capacity(size);
        for i in 0..size {
            let rest = &r.bytes[r.at..];
            let len = rest.iter().position(|&b| b == 0).ok_or_else(|| format!("truncated: dictionary entry {i} has no end"))?;
            let word = r.take(len + 1, "dictionary entry")?;
            let count = r.i64("dictionary count")?;
            let kind = r.u8("dictionary entry type")?;
            entries.push((&word[..len], count, kind));
        }
        if entries[..nwords].iter().any(|e| e.2 != 0) || entries[nwords..].iter().any(|e| e.2 != 1) {
            return Err("dictionary entries are not words followed by labels".into());
        }
        let pruned = if prune_size >= 0 {
            let mut map = HashMap::new();
            for _ in 0..prune_size {
                let from = r.i32("pruned n-gram")?;
                let to = r.i32("pruned n-gram row")?;
                map.insert(from, to);
            }
            Some(map)
        } else {
            None
        };

        let quantized = r.u8("input quantization flag")? != 0;
        let (input, input_rows, input_cols) = r.matrix(quantized, "input matrix")?;
        if !quantized && pruned.is_some() {
            return Err("a pruned dictionary with an unquantized input matrix (fastText refuses it too)".into());
        }
        let quantized_output = r.u8("output quantization flag")? != 0;
        let (output, output_rows, output_cols) = r.matrix(quantized && quantized_output, "output matrix")?;
        if r.at != bytes.len() {
            return Err(format!("{} bytes after the output matrix", bytes.len() - r.at));
        }
        let ngram_rows = match &pruned {
            None => bucket,
            Some(map) => map.values().map(|&v| v as i64 + 1).max().unwrap_or(0).max(0) as usize,
        };
        if input_cols != dim || output_cols != dim || input_rows < nwords + ngram_rows || output_rows != nlabels {
            return Err(format!(
                "matrix shapes: input {input_rows} x {input_cols}, output {output_rows} x {output_cols}; the dictionary needs at least {} x {dim} and {nlabels} x {dim}",
                nwords + ngram_rows
            ));
        }
        if pruned.as_ref().is_some_and(|m| m.values().any(|&v| v < 0)) {
            return Err("a pruned n-gram maps to a negative row".into());
        }

        let mut model = FastTextModel {
            dim,
            loss,
            quantized,
            word_ngrams,
            bucket: bucket as u32,
            minn,
            maxn,
            nwords,
            words: HashMap::with_capacity(size),
            word_rows: Vec::with_capacity(nwords),
            labels: entries[nwords..].iter().map(|e| String::from_utf8_lossy(e.0).into_owned()).collect(),
            pruned,
            input,
            output,
            tree: Vec::new(),
            sigmoid_table: (0..=512)
                .map(|i| {
                    let x = (i * 16) as f32 / 512.0 - 8.0;
                    (1.0 / (1.0 + (-x).exp() as f64)) as f32
                })
                .collect(),
        };
        for (id, entry) in entries.iter().enumerate() {
            // fastText's table keeps the last entry of a repeated word.
            model.words.insert(entry.0.into(), id as u32);
        }
        for (id, entry) in entries[..nwords].iter().enumerate() {
            let mut rows = vec![id as u32];
            if entry.0 != EOS.as_bytes() {
                model.char_ngram_rows(entry.0, &mut rows);
            }
            model.word_rows.push(rows);
        }
        if loss == Loss::HierarchicalSoftmax {
            model.tree = huffman_tree(&entries[nwords..].iter().map(|e| e.1).collect::<Vec<_>>());
        }
        Ok(model)
    }

    /// The input row of n-gram bucket `id`, if the (pruned) model kept it.
    fn push_ngram(&self, rows: &mut Vec<u32>, id: i32) {
        let row = match &self.pruned {
            _ if id < 0 => return,
            None => id,
            Some(map) => match map.get(&id) {
                Some(&row) => row,
                None => return,
            },
        };
        rows.push((self.nwords as i64 + row as i64) as u32);
    }

    /// fastText's `computeSubwords` over `<word>`: character n-grams of minn..=maxn UTF-8
    /// characters, without the lone `<` and `>`.
    fn char_ngram_rows(&self, word: &[u8], rows: &mut Vec<u32>) {
        if self.maxn == 0 || self.bucket == 0 {
            return;
        }
        let mut wrapped = Vec::with_capacity(word.len() + 2);
        wrapped.push(b'<');
        wrapped.extend_from_slice(word);
        wrapped.push(b'>');
        let continuation = |b: u8| b & 0xC0 == 0x80;
        for i in 0..wrapped.len() {
            if continuation(wrapped[i]) {
                continue;
            }
            let (mut j, mut n) = (i, 1);
            let mut h = 2_166_136_261u32;
            while j < wrapped.len() && n <= self.maxn {
                let start = j;
                j += 1;
                while j < wrapped.len() && continuation(wrapped[j]) {
                    j += 1;
                }
                h = wrapped[start..j].iter().fold(h, |h, &b| (h ^ (b as i8 as i32 as u32)).wrapping_mul(16_777_619));
                if n >= self.minn && !(n == 1 && (i == 0 || j == wrapped.len())) {
                    self.push_ngram(rows, (h % self.bucket) as i32);
                }
                n += 1;
            }
        }
    }

    /// The input rows of one line (fastText's `getLine` on `text` + "\n").
    fn line_rows(&self, text: &str) -> Vec<u32> {
        let mut rows = Vec::new();
        let mut word_hashes: Vec<i32> = Vec::new();
        let separators = |b: &u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c | 0);
        let tokens = text.as_bytes().split(separators).filter(|t| !t.is_empty()).chain(std::iter::once(EOS.as_bytes()));
        for token in tokens {
            let h = hash(token);
            match self.words.get(token) {
                Some(&id) if (id as usize) < self.nwords => {
                    rows.extend_from_slice(&self.word_rows[id as usize]);
                    word_hashes.push(h as i32);
                }
                Some(_) => {}
                None if token.starts_with(LABEL_PREFIX.as_bytes()) => {}
                None => {
                    if token != EOS.as_bytes() {
                        self.char_ngram_rows(token, &mut rows);
                    }
                    word_hashes.push(h as i32);
                }
            }
            if token == EOS.as_bytes() {
                break;
            }
        }
        if self.bucket > 0 {
            for i in 0..word_hashes.len() {
                let mut h = word_hashes[i] as i64 as u64;
                for &next in word_hashes.iter().take(i + self.word_ngrams).skip(i + 1) {
                    h = h.wrapping_mul(116_049_371).wrapping_add(next as i64 as u64);
                    self.push_ngram(&mut rows, (h % self.bucket as u64) as i32);
                }
            }
        }
        rows
    }

    /// The averaged input rows of a line (fastText's hidden layer), None for a line without any.
    pub fn sentence_vector(&self, text: &str) -> Option<Vec<f32>> {
        let rows = self.line_rows(text);
        if rows.is_empty() {
            return None;
        }
        let mut hidden = vec![0.0f32; self.dim];
        for &row in &rows {
            self.input.add_row(&mut hidden, row as usize);
        }
        let scale = (1.0 / rows.len() as f64) as f32;
        hidden.iter_mut().for_each(|x| *x *= scale);
        Some(hidden)
    }

    fn sigmoid(&self, x: f32) -> f32 {
        if x < -8.0 {
            0.0
        } else if x > 8.0 {
            1.0
        } else {
            self.sigmoid_table[((x + 8.0) * 512.0 / 8.0 / 2.0) as usize]
        }
    }

    /// The `k` most probable labels of one line (`k` None: all), most probable first, as
    /// fastText's `predict(text, k)` gives them (threshold 0). `text` is one line: newlines are
    /// word separators here, as in datatrove's language filter, which replaces them by spaces.
    pub fn predict(&self, text: &str, k: Option<usize>) -> Vec<Prediction<'_>> {
        let Some(hidden) = self.sentence_vector(text) else { return Vec::new() };
        let k = k.unwrap_or(self.labels.len()).max(1);
        let mut best = TopK { k, items: Vec::with_capacity(k + 1) };
        match self.loss {
            Loss::HierarchicalSoftmax => self.tree_search(&hidden, self.tree.len() - 1, 0.0, &mut best),
            Loss::Softmax => {
                let mut output: Vec<f32> = (0..self.labels.len()).map(|i| self.output.dot_row(&hidden, i)).collect();
                let max = output.iter().copied().fold(output[0], f32::max);
                let mut z = 0.0f32;
                for o in output.iter_mut() {
                    *o = ((*o - max) as f64).exp() as f32;
                    z += *o;
                }
                output.iter_mut().for_each(|o| *o /= z);
                best.consider_all(&output);
            }
            Loss::OneVsAll | Loss::NegativeSampling => {
                let output: Vec<f32> = (0..self.labels.len()).map(|i| self.sigmoid(self.output.dot_row(&hidden, i))).collect();
                best.consider_all(&output);
            }
        }
        best.items.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.items.into_iter().map(|(score, label)| Prediction { label: &self.labels[label], probability: score.exp() }).collect()
    }

    /// fastText's `HierarchicalSoftmaxLoss::dfs`.
    fn tree_search(&self, hidden: &[f32], node: usize, score: f32, best: &mut TopK) {
        if score < std_log(0.0) || best.is_full_above(score) {
            return;
        }
        let (left, right) = self.tree[node];
        if left < 0 && right < 0 {
            best.push(score, node);
            return;
        }
        let osz = self.labels.len();
        let f = self.output.dot_row(hidden, node - osz);
        let f = (1.0 / (1.0f32 + (-f).exp()) as f64) as f32;
        self.tree_search(hidden, left as usize, score + std_log((1.0 - f as f64) as f32), best);
        self.tree_search(hidden, right as usize, score + std_log(f), best);
    }
}

/// The k best (log score, label) pairs, as fastText's heap keeps them.
struct TopK {
    k: usize,
    items: Vec<(f32, usize)>,
}

impl TopK {
    fn min(&self) -> f32 {
        self.items.iter().map(|i| i.0).fold(f32::INFINITY, f32::min)
    }

    /// Full, and `score` below the worst kept: fastText skips it.
    fn is_full_above(&self, score: f32) -> bool {
        self.items.len() == self.k && score < self.min()
    }

    fn push(&mut self, score: f32, label: usize) {
        self.items.push((score, label));
        if self.items.len() > self.k {
            let worst = self.items.iter().enumerate().min_by(|a, b| a.1 .0.total_cmp(&b.1 .0)).map(|(i, _)| i).expect("not empty");
            self.items.swap_remove(worst);
        }
    }

    /// fastText's `findKBest` over per-label probabilities (threshold 0).
    fn consider_all(&mut self, output: &[f32]) {
        for (label, &p) in output.iter().enumerate() {
            if p < 0.0 || self.is_full_above(std_log(p)) {
                continue;
            }
            self.push(std_log(p), label);
        }
    }
}

/// fastText's Huffman tree over the label counts (labels sorted by count, most frequent first):
/// (left, right) children of every node, the labels being nodes 0..n, the root the last.
fn huffman_tree(counts: &[i64]) -> Vec<(i32, i32)> {
    let n = counts.len();
    let mut count: Vec<i64> = counts.iter().copied().chain(std::iter::repeat_n(1_000_000_000_000_000, n.saturating_sub(1))).collect();
    let mut children = vec![(-1i32, -1i32); 2 * n - 1];
    let (mut leaf, mut node) = (n as i64 - 1, n);
    for i in n..2 * n - 1 {
        let mut pick = [0usize; 2];
        for p in pick.iter_mut() {
            if leaf >= 0 && count[leaf as usize] < count[node] {
                *p = leaf as usize;
                leaf -= 1;
            } else {
                *p = node;
                node += 1;
            }
        }
        children[i] = (pick[0] as i32, pick[1] as i32);
        count[i] = count[pick[0]] + count[pick[1]];
    }
    children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_hash_sign_extends_bytes_as_fasttext() {
        // FNV-1a of "a": (2166136261 ^ 0x61) * 16777619 mod 2^32.
        assert_eq!(hash(b"a"), 0xe40c292c);
        // A byte >= 0x80 is xored in as a negative signed char (0xffffffe4 for 0xe4).
        let expected = (2_166_136_261u32 ^ 0xffff_ffe4).wrapping_mul(16_777_619);
        assert_eq!(hash(&[0xe4]), expected);
    }

    #[test]
    fn huffman_tree_pairs_the_rarest_first() {
        // Counts 5, 3, 1: the two rarest (labels 2 and 1) join first (node 3, count 4), then node 3,
        // the smaller, joins label 0 at the root.
        assert_eq!(huffman_tree(&[5, 3, 1]), vec![(-1, -1), (-1, -1), (-1, -1), (2, 1), (3, 0)]);
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let err = |bytes: &[u8]| FastTextModel::parse(bytes).err().unwrap();
        assert!(err(b"").contains("truncated"));
        assert!(err(&[1, 2, 3, 4, 5, 6, 7, 8]).contains("magic"));
        let mut header = MAGIC.to_le_bytes().to_vec();
        header.extend(13i32.to_le_bytes());
        assert!(err(&header).contains("version 13"));
    }
}
