//! `torch_dist`: PyTorch Distributed Checkpoint as megatron-core writes it. `.metadata` is a
//! pickled `Metadata` dataclass: `state_dict_metadata` gives each tensor's global size, dtype and
//! chunks (offsets, sizes); `storage_data` maps (fqn, chunk offsets) to a `_StorageInfo`
//! (relative_path, offset, length) in a `__R_I.distcp` file, where those bytes are a complete
//! `torch.save` archive of the chunk. `common.pt` holds the non-tensor state, `args` among it.
//! Megatron stacks homogeneous layers into one tensor with a leading layer axis
//! (`decoder.layers.<name>`) and routed experts with a leading expert axis
//! (`mlp.experts.experts.<name>`); both are cut back into single tensors here.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use openseek_common::Failure;

use crate::archive::{Archive, ReadAt};
use crate::checkpoint::{Checkpoint, Entry, Format, OpenFile, Src, Tensors};
use crate::mapping;
use crate::pickle::{self, Dtype, Value};

#[derive(Debug, Clone)]
struct Chunk {
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    file: String,
    offset: usize,
    length: usize,
}

#[derive(Debug, Clone)]
struct TensorMeta {
    size: Vec<usize>,
    dtype: Dtype,
    chunks: Vec<Chunk>,
}

/// The tensors of a DCP checkpoint and the files their chunks are in.
struct DcpIndex {
    dir: PathBuf,
    tensors: HashMap<String, TensorMeta>,
    /// relative_path -> the file, opened on first use.
    opened: RefCell<HashMap<String, Rc<OpenFile>>>,
    /// The last chunks decoded, newest last: a chunk holding several experts (or layers) is read
    /// once, not once per expert. Two, as the HF order alternates an expert's fc1 and fc2.
    recent: RefCell<Vec<(ChunkId, Rc<Vec<u8>>)>>,
}

/// A chunk's file and byte offset.
type ChunkId = (String, usize);

const RECENT_CHUNKS: usize = 2;

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    v.items()
        .ok_or_else(|| format!("{what} is not a tuple"))?
        .iter()
        .map(|x| x.as_int().filter(|i| *i >= 0).map(|i| i as usize).ok_or_else(|| format!("{what} holds {x:?}")))
        .collect()
}

fn dtype_of(props: &Value) -> Result<Dtype, String> {
    // TensorProperties pickles its state as a tuple (dtype, layout, requires_grad, memory_format, pin_memory)
    // in current torch, as a dict in older ones.
    let d = match props {
        Value::Object(o) => match &o.borrow().state {
            Some(Value::Tuple(t)) => t.first().cloned(),
            Some(s) => s.get("dtype"),
            None => None,
        },
        _ => None,
    };
    match d {
        Some(Value::Global(_, n)) => Dtype::from_torch_name(&n).ok_or_else(|| format!("unsupported dtype torch.{n}")),
        other => Err(format!("tensor properties without a dtype: {other:?}")),
    }
}

fn parse_metadata(bytes: &[u8]) -> Result<HashMap<String, TensorMeta>, String> {
    let md = pickle::loads(bytes)?;
    let sdm = md.get("state_dict_metadata").and_then(|v| v.entries()).ok_or("no state_dict_metadata")?;
    let storage = md.get("storage_data").and_then(|v| v.entries()).ok_or("no storage_data")?;
    // (fqn, offsets) -> (file, offset, length)
    let mut where_: HashMap<(String, Vec<usize>), (String, usize, usize)> = HashMap::new();
    for (k, v) in storage {
        let fqn = k.get("fqn").and_then(|f| f.as_str().map(String::from)).ok_or("storage_data key without fqn")?;
        let off = match k.get("offset") {
            Some(Value::None) | None => Vec::new(),
            Some(o) => usizes(&o, "storage offset")?,
        };
        if let Some(t) = v.get("transform_descriptors").and_then(|t| t.items()) {
            if !t.is_empty() {
                return Err(format!("{fqn}: stored with transforms {t:?} (compression?), which are not supported"));
            }
        }
        let path = v.get("relative_path").and_then(|p| p.as_str().map(String::from)).ok_or("storage info without relative_path")?;
        let o = v.get("offset").and_then(|o| o.as_int()).ok_or("storage info without offset")? as usize;
        let l = v.get("length").and_then(|o| o.as_int()).ok_or("storage info without length")? as usize;
        where_.insert((fqn, off), (path, o, l));
    }
    let mut out = HashMap::new();
    for (k, v) in sdm {
        let fqn = k.as_str().ok_or("state_dict_metadata key is not a string")?.to_string();
        if !v.class_name().is_some_and(|c| c.ends_with("TensorStorageMetadata")) {
            continue; // BytesStorageMetadata: extra state, optimizer bytes
        }
        let props = v.get("properties").ok_or_else(|| format!("{fqn}: no properties"))?;
        let dtype = dtype_of(&props).map_err(|e| format!("{fqn}: {e}"))?;
        let size = usizes(&v.get("size").ok_or_else(|| format!("{fqn}: no size"))?, "size")?;
        let mut chunks = Vec::new();
        for c in v.get("chunks").and_then(|c| c.items()).ok_or_else(|| format!("{fqn}: no chunks"))? {
            let offsets = usizes(&c.get("offsets").ok_or("chunk without offsets")?, "chunk offsets")?;
            let sizes = usizes(&c.get("sizes").ok_or("chunk without sizes")?, "chunk sizes")?;
            let (file, offset, length) = where_
                .get(&(fqn.clone(), offsets.clone()))
                .cloned()
                .ok_or_else(|| format!("{fqn}: chunk at {offsets:?} has no storage entry"))?;
            chunks.push(Chunk { offsets, sizes, file, offset, length });
        }
        out.insert(fqn, TensorMeta { size, dtype, chunks });
    }
    Ok(out)
}

/// Leading-axis expansions of a DCP key: (global key, fixed leading indices).
fn expand(fqn: &str, size: &[usize]) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    // Layers (their key prefix, fixed indices, the rest): `decoder.layers.N.rest`, stacked
    // `decoder.layers.rest` [L, ...], or an MTP layer's `mtp.layers.K.transformer_layer.rest`.
    let layers: Vec<(String, Vec<usize>, String)> = match (fqn.strip_prefix("decoder.layers."), crate::mapping::mtp_layer(fqn)) {
        (Some(rest), _) => match rest.split_once('.') {
            Some((l, r)) if l.parse::<usize>().is_ok() => vec![(format!("decoder.layers.{l}"), vec![], r.to_string())],
            _ => (0..size.first().copied().unwrap_or(0)).map(|l| (format!("decoder.layers.{l}"), vec![l], rest.to_string())).collect(),
        },
        (None, Some((k, rest))) if rest.starts_with("transformer_layer.") => {
            vec![(format!("mtp.layers.{k}.transformer_layer"), vec![], rest["transformer_layer.".len()..].to_string())]
        }
        _ => return vec![(fqn.to_string(), vec![])],
    };
    for (l, fixed, rest) in layers {
        let dims_left = size.len() - fixed.len();
        let expert = rest.strip_prefix("mlp.experts.experts.").or_else(|| rest.strip_prefix("mlp.experts.").filter(|w| w.starts_with("linear_fc") && dims_left == 3));
        match expert {
            Some(w) => match w.split_once('.') {
                Some((e, w2)) if e.parse::<usize>().is_ok() => out.push((format!("{l}.mlp.experts.{e}.{w2}"), fixed.clone())),
                _ => {
                    for e in 0..size[fixed.len()] {
                        let mut f = fixed.clone();
                        f.push(e);
                        out.push((format!("{l}.mlp.experts.{e}.{w}"), f));
                    }
                }
            },
            None => out.push((format!("{l}.{rest}"), fixed)),
        }
    }
    out
}

pub(crate) fn open(dir: &Path) -> Result<Checkpoint, Failure> {
    let md_path = dir.join(".metadata");
    let bytes = std::fs::read(&md_path).map_err(|e| Failure::io_at(&md_path, "cannot read", &e))?;
    let tensors = parse_metadata(&bytes).map_err(|e| Failure::data(format!("{}: {e}", md_path.display())))?;
    let common_path = dir.join("common.pt");
    let root = OpenFile::archive(&common_path)?.archive.unwrap().root;
    let args = root.get("args").ok_or_else(|| Failure::data(format!("{}: no `args` in the common state", common_path.display())))?;
    let int_arg = |n: &str| args.get(n).and_then(|v| v.as_int()).filter(|v| *v > 0).map(|v| v as usize);
    let model = mapping::Model {
        tied: crate::checkpoint::tied_embeddings(&args),
        layers: int_arg("num_layers").unwrap_or(0),
        mtp: tensors.keys().filter_map(|k| mapping::mtp_layer(k)).map(|(k, _)| k + 1).max().unwrap_or(0),
    };

    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(top) = root.entries() {
        for (k, _) in top {
            if let Some(k) = k.as_str() {
                *ignored.entry(format!("checkpoint `{k}` (not model weights)")).or_default() += 1;
            }
        }
    }
    let mut entries = Vec::new();
    let mut unknown = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for fqn in names {
        let meta = &tensors[fqn];
        if fqn.starts_with("optimizer.") || fqn.starts_with("rng_state") {
            *ignored.entry("optimizer and rng state".into()).or_default() += 1;
            continue;
        }
        for (key, fixed) in expand(fqn, &meta.size) {
            match mapping::target(&key, &model) {
                mapping::Target::Ignored(why) => *ignored.entry(why.to_string()).or_default() += 1,
                mapping::Target::Unknown => unknown.push((fqn.clone(), dir.join(".metadata"))),
                mapping::Target::Hf(_) => {
                    let shape = meta.size[fixed.len()..].to_vec();
                    let mut files: Vec<PathBuf> = meta.chunks.iter().map(|c| dir.join(&c.file)).collect();
                    files.dedup();
                    entries.push(Entry { key, dtype: meta.dtype, shape, files, src: Src::Dcp { fqn: fqn.clone(), fixed } });
                }
            }
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let int = |n: &str| args.get(n).and_then(|v| v.as_int()).filter(|v| *v > 0).unwrap_or(1) as usize;
    let parallel = (int("tensor_model_parallel_size"), int("pipeline_model_parallel_size"), int("expert_model_parallel_size"));
    Ok(Checkpoint {
        format: Format::TorchDist,
        dir: dir.to_path_buf(),
        iteration: None,
        args,
        entries,
        ignored,
        unknown,
        parallel,
        tensors: Box::new(DcpIndex { dir: dir.to_path_buf(), tensors, opened: Default::default(), recent: Default::default() }),
    })
}

impl Tensors for DcpIndex {
    fn read(&self, e: &Entry) -> Result<Vec<u8>, Failure> {
        match &e.src {
            Src::Dcp { fqn, fixed } => self.region(fqn, fixed, e),
            Src::Legacy { .. } => Err(Failure::software(format!("{}: not an entry of the torch_dist format", e.key))),
        }
    }
}

impl DcpIndex {
    /// The sub-tensor of `fqn` at the `fixed` leading indices, assembled from the chunks that
    /// overlap it, each chunk's archive parsed from its byte range of the `.distcp` file.
    fn region(&self, fqn: &str, fixed: &[usize], e: &Entry) -> Result<Vec<u8>, Failure> {
        let meta = &self.tensors[fqn];
        let es = meta.dtype.size();
        let nd = meta.size.len();
        // Region wanted, in global coordinates.
        let lo: Vec<usize> = (0..nd).map(|d| if d < fixed.len() { fixed[d] } else { 0 }).collect();
        let hi: Vec<usize> = (0..nd).map(|d| if d < fixed.len() { fixed[d] + 1 } else { meta.size[d] }).collect();
        let numel: usize = lo.iter().zip(&hi).map(|(l, h)| h - l).product();
        let mut out = vec![0u8; numel * es];
        let mut covered = 0usize;
        for c in &meta.chunks {
            let clo: Vec<usize> = (0..nd).map(|d| lo[d].max(c.offsets[d])).collect();
            let chi: Vec<usize> = (0..nd).map(|d| hi[d].min(c.offsets[d] + c.sizes[d])).collect();
            if (0..nd).any(|d| clo[d] >= chi[d]) {
                continue;
            }
            let data = self.chunk_bytes(c, fqn)?;
            if data.len() != c.sizes.iter().product::<usize>() * es {
                return Err(Failure::data(format!("{}: chunk of {fqn} at {:?} holds {} bytes, sizes {:?} expected", self.dir.join(&c.file).display(), c.offsets, data.len(), c.sizes)));
            }
            covered += copy_block(&data, &c.offsets, &c.sizes, &mut out, &lo, &hi, &clo, &chi, es);
        }
        if covered != numel {
            return Err(Failure::data(format!("{}: {} ({}) is only partly stored: {covered} of {numel} elements", self.dir.display(), e.key, fqn)));
        }
        Ok(out)
    }

    fn chunk_bytes(&self, c: &Chunk, fqn: &str) -> Result<Rc<Vec<u8>>, Failure> {
        let id = (c.file.clone(), c.offset);
        if let Some((_, b)) = self.recent.borrow().iter().find(|(k, _)| *k == id) {
            return Ok(b.clone());
        }
        let bytes = Rc::new(self.decode_chunk(c, fqn)?);
        let mut recent = self.recent.borrow_mut();
        if recent.len() == RECENT_CHUNKS {
            recent.remove(0);
        }
        recent.push((id, bytes.clone()));
        Ok(bytes)
    }

    fn decode_chunk(&self, c: &Chunk, fqn: &str) -> Result<Vec<u8>, Failure> {
        let f = match self.opened.borrow().get(&c.file) {
            Some(f) => f.clone(),
            None => Rc::new(OpenFile::open(&self.dir.join(&c.file))?),
        };
        self.opened.borrow_mut().insert(c.file.clone(), f.clone());
        let what = format!("{} (bytes {}..{}, {fqn})", f.path.display(), c.offset, c.offset + c.length);
        let bytes = f.file.read_at_exact(c.offset, c.length).map_err(|e| Failure::data(format!("{what}: cannot read: {e}")))?;
        let a = Archive::parse(Cursor::new(&bytes), &what)?;
        match &a.root {
            Value::Tensor(t) => a.tensor_bytes(&bytes[..], t, &what),
            other => Err(Failure::data(format!("{what}: holds {other:?}, not a tensor"))),
        }
    }
}

/// Copy the overlap [clo, chi) of a chunk (at `coff`, `csz`) into the output region [lo, hi);
/// returns the number of elements copied.
#[allow(clippy::too_many_arguments)]
fn copy_block(src: &[u8], coff: &[usize], csz: &[usize], out: &mut [u8], lo: &[usize], hi: &[usize], clo: &[usize], chi: &[usize], es: usize) -> usize {
    let nd = lo.len();
    let osz: Vec<usize> = (0..nd).map(|d| hi[d] - lo[d]).collect();
    let strides = |sz: &[usize]| {
        let mut s = vec![1usize; nd];
        for d in (0..nd.saturating_sub(1)).rev() {
            s[d] = s[d + 1] * sz[d + 1];
        }
        s
    };
    let (ss, os) = (strides(csz), strides(&osz));
    let run = chi[nd - 1] - clo[nd - 1];
    let mut idx = clo.to_vec();
    let mut copied = 0;
    loop {
        let s: usize = (0..nd).map(|d| (idx[d] - coff[d]) * ss[d]).sum();
        let o: usize = (0..nd).map(|d| (idx[d] - lo[d]) * os[d]).sum();
        out[o * es..(o + run) * es].copy_from_slice(&src[s * es..(s + run) * es]);
        copied += run;
        // Next index over all but the last dimension.
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return copied;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < chi[d] {
                break;
            }
            idx[d] = clo[d];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacked_layers_and_experts_expand() {
        let e = expand("decoder.layers.mlp.experts.experts.linear_fc1.weight", &[2, 3, 8, 4]);
        assert_eq!(e.len(), 6);
        assert_eq!(e[4], ("decoder.layers.1.mlp.experts.1.linear_fc1.weight".to_string(), vec![1, 1]));
        let e = expand("decoder.layers.3.mlp.experts.experts.linear_fc2.weight", &[4, 4, 2]);
        assert_eq!(e[2], ("decoder.layers.3.mlp.experts.2.linear_fc2.weight".to_string(), vec![2]));
        assert_eq!(expand("decoder.layers.3.mlp.experts.experts.5.linear_fc2.weight", &[4, 2]), [("decoder.layers.3.mlp.experts.5.linear_fc2.weight".to_string(), vec![])]);
        assert_eq!(expand("decoder.layers.self_attention.linear_proj.weight", &[2, 4, 4])[1], ("decoder.layers.1.self_attention.linear_proj.weight".to_string(), vec![1]));
        let e = expand("mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc2.weight", &[4, 4, 2]);
        assert_eq!(e[3], ("mtp.layers.0.transformer_layer.mlp.experts.3.linear_fc2.weight".to_string(), vec![3]));
        assert_eq!(expand("mtp.layers.0.eh_proj.weight", &[4, 8]), [("mtp.layers.0.eh_proj.weight".to_string(), vec![])]);
        assert_eq!(expand("embedding.word_embeddings.weight", &[8, 4]), [("embedding.word_embeddings.weight".to_string(), vec![])]);
    }

    #[test]
    fn blocks_copy_into_a_region() {
        // A 4x4 global tensor of u8 0..16 stored as four 2x2 chunks; read row 1 of layer-like index.
        let global: Vec<u8> = (0..16).collect();
        let global = &global;
        let chunk = |r: usize, c: usize| -> Vec<u8> { (0..2).flat_map(|i| (0..2).map(move |j| global[(r + i) * 4 + c + j])).collect() };
        let mut out = vec![0u8; 4];
        let (lo, hi) = (vec![1, 0], vec![2, 4]);
        let mut n = 0;
        for (r, c) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
            let clo = vec![lo[0].max(r), lo[1].max(c)];
            let chi = vec![hi[0].min(r + 2), hi[1].min(c + 2)];
            if clo[0] < chi[0] && clo[1] < chi[1] {
                n += copy_block(&chunk(r, c), &[r, c], &[2, 2], &mut out, &lo, &hi, &clo, &chi, 1);
            }
        }
        assert_eq!((out, n), (vec![4, 5, 6, 7], 4));
    }
}
