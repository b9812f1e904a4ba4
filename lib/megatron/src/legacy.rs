//! The legacy `torch` format: `mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]/model_optim_rng.pt` per rank
//! (Megatron's `get_checkpoint_name`: the pipeline suffix only when PP > 1, the expert suffix only
//! when EP > 1; only expert-data-parallel rank 0 writes, so with expert parallelism not every
//! (tp, ep) pair has a file). Local layer numbers are shifted by the layers of the earlier pipeline
//! stages, local experts by `ep * experts_per_rank`; pieces are grouped by tensor-parallel rank.
//! The legacy grouped-GEMM layout (`mlp.experts.weight1` [H, E_local * fc1] and `weight2`
//! [E_local * fc2_in, H], which Megatron reads as `view(E_local, H, -1)` and `view(E_local, -1, H)`)
//! becomes one strided view per expert, transposed to Linear's [out, in].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openseek_common::Failure;

use crate::checkpoint::{Checkpoint, Entry, Format, OpenFile, Src, Tensors};
use crate::mapping::{self, Merge};
use crate::pickle::{TensorRef, Value};

struct Rank {
    tp: usize,
    pp: usize,
    ep: usize,
}

fn rank_dirs(dir: &Path) -> Result<Vec<(String, Vec<usize>, PathBuf)>, Failure> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Failure::io_at(dir, "cannot list", &e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(nums) = name.strip_prefix("mp_rank_") else { continue };
        let nums: Option<Vec<usize>> = nums.split('_').map(|n| n.parse().ok()).collect();
        let nums = nums.filter(|n| (1..=3).contains(&n.len())).ok_or_else(|| {
            Failure::data(format!("{}: not a Megatron rank directory name (mp_rank_TT[_PPP][_EEE])", e.path().display()))
        })?;
        let file = ["model_optim_rng.pt", "model_rng.pt"].iter().map(|f| e.path().join(f)).find(|p| p.is_file()).ok_or_else(|| {
            Failure::no_input(format!("{}: no model_optim_rng.pt in this rank directory", e.path().display()))
        })?;
        out.push((name, nums, file));
    }
    if out.is_empty() {
        return Err(Failure::no_input(format!("{}: neither a torch_dist checkpoint (.metadata) nor mp_rank_* directories", dir.display())));
    }
    out.sort();
    Ok(out)
}

fn int_arg(args: &Value, name: &str) -> Option<usize> {
    args.get(name).and_then(|v| v.as_int()).filter(|v| *v > 0).map(|v| v as usize)
}

/// Which layer a key belongs to: a decoder layer (numbered per pipeline stage in a rank's file)
/// or the transformer layer of MTP layer k (all on the last stage, numbered from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerOf {
    Decoder(usize),
    Mtp(usize),
}

impl LayerOf {
    /// The global key prefix of the layer, decoder layers moved by `offset`.
    fn global(self, offset: usize) -> String {
        match self {
            LayerOf::Decoder(l) => format!("decoder.layers.{}", offset + l),
            LayerOf::Mtp(k) => format!("mtp.layers.{k}.transformer_layer"),
        }
    }
}

/// Split a model key into (layer, rest) when it is a decoder layer's or an MTP transformer layer's.
fn layer_of(key: &str) -> Option<(LayerOf, &str)> {
    if let Some((k, rest)) = mapping::mtp_layer(key) {
        return Some((LayerOf::Mtp(k), rest.strip_prefix("transformer_layer.")?));
    }
    let rest = key.strip_prefix("decoder.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    Some((LayerOf::Decoder(l.parse().ok()?), rest))
}

/// The local expert of a layer key and the weight name, for the three expert layouts.
fn local_expert(rest: &str) -> Option<(usize, String)> {
    let e = rest.strip_prefix("mlp.experts.")?;
    if let Some(x) = e.strip_prefix("local_experts.") {
        let (k, w) = x.split_once('.')?;
        return Some((k.parse().ok()?, w.to_string()));
    }
    // Transformer Engine grouped GEMM: linear_fc1.weight{k}
    for w in ["linear_fc1.weight", "linear_fc2.weight"] {
        if let Some(k) = e.strip_prefix(w) {
            return Some((k.parse().ok()?, w.to_string()));
        }
    }
    None
}

pub(crate) fn open(dir: &Path) -> Result<Checkpoint, Failure> {
    let found = rank_dirs(dir)?;
    let mut files = Vec::with_capacity(found.len());
    for (_, _, path) in &found {
        files.push(OpenFile::archive(path)?);
    }
    let root0 = &files[0].archive.as_ref().unwrap().root;
    let args = root0.get("args").ok_or_else(|| Failure::data(format!("{}: no `args` in the checkpoint", files[0].path.display())))?;
    let pp_size = int_arg(&args, "pipeline_model_parallel_size").unwrap_or(1);
    let ranks: Vec<Rank> = found
        .iter()
        .map(|(_, n, _)| match n.as_slice() {
            [t] => Rank { tp: *t, pp: 0, ep: 0 },
            [t, p] if pp_size > 1 => Rank { tp: *t, pp: *p, ep: 0 },
            [t, e] => Rank { tp: *t, pp: 0, ep: *e },
            [t, p, e] => Rank { tp: *t, pp: *p, ep: *e },
            _ => unreachable!(),
        })
        .collect();
    let tp_size = ranks.iter().map(|r| r.tp).max().unwrap() + 1;
    let pp_seen = ranks.iter().map(|r| r.pp).max().unwrap() + 1;
    let ep_size = ranks.iter().map(|r| r.ep).max().unwrap() + 1;
    for (name, want, seen) in [("tensor_model_parallel_size", int_arg(&args, "tensor_model_parallel_size"), tp_size), ("pipeline_model_parallel_size", Some(pp_size), pp_seen)] {
        if want.is_some_and(|w| w != seen) {
            return Err(Failure::no_input(format!(
                "{}: args.{name} is {}, but the rank directories there cover {seen}: rank files are missing",
                dir.display(),
                want.unwrap()
            )));
        }
    }
    let etp = int_arg(&args, "expert_tensor_parallel_size").unwrap_or(tp_size);

    // Models of each file; layers per pipeline stage; experts per rank.
    let mut models = Vec::with_capacity(files.len());
    let mut stage_layers: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); pp_seen];
    let mut local_experts = BTreeSet::new();
    let mut mtp_layers = BTreeSet::new();
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    for (f, r) in files.iter().zip(&ranks) {
        let root = &f.archive.as_ref().unwrap().root;
        if root.get("model0").is_some() {
            return Err(Failure::data(format!("{}: virtual pipeline stages (model0, model1, ...) are not supported", f.path.display())));
        }
        let model = root.get("model").ok_or_else(|| Failure::data(format!("{}: no `model` state dict", f.path.display())))?;
        let entries = model.entries().ok_or_else(|| Failure::data(format!("{}: `model` is not a dict", f.path.display())))?;
        for (k, _) in &entries {
            if let Some((k, _)) = k.as_str().and_then(mapping::mtp_layer) {
                mtp_layers.insert(k);
            }
            if let Some((l, rest)) = k.as_str().and_then(layer_of) {
                if let LayerOf::Decoder(l) = l {
                    stage_layers[r.pp].insert(l);
                }
                if let Some((e, _)) = local_expert(rest) {
                    local_experts.insert(e);
                }
            }
        }
        if let Some(top) = root.entries() {
            for (k, _) in top {
                if let Some(k) = k.as_str().filter(|k| *k != "model") {
                    *ignored.entry(format!("checkpoint `{k}` (not model weights)")).or_default() += 1;
                }
            }
        }
        models.push(entries);
    }
    let mut offsets = vec![0usize; pp_seen];
    for p in 1..pp_seen {
        offsets[p] = offsets[p - 1] + stage_layers[p - 1].len();
    }
    let per_rank = int_arg(&args, "num_experts").map(|n| n / ep_size).unwrap_or(local_experts.len());
    let model = mapping::Model {
        tied: crate::checkpoint::tied_embeddings(&args),
        layers: stage_layers.iter().map(|s| s.len()).sum(),
        mtp: mtp_layers.last().map_or(0, |k| k + 1),
    };

    // Global key -> pieces by tensor-parallel slot.
    let mut groups: BTreeMap<String, BTreeMap<usize, (usize, TensorRef)>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (fi, (entries, r)) in models.iter().zip(&ranks).enumerate() {
        for (k, v) in entries {
            let Some(k) = k.as_str() else { continue };
            let global = match layer_of(k) {
                Some((l, rest)) => {
                    let rest = match local_expert(rest) {
                        Some((e, w)) => format!("mlp.experts.{}.{w}", r.ep * per_rank + e),
                        None => rest.to_string(),
                    };
                    format!("{}.{rest}", l.global(offsets[r.pp]))
                }
                None => k.to_string(),
            };
            if let (Some((layer, which)), Value::Tensor(t)) = (grouped_gemm(&global), v) {
                let views = grouped_views(t, which, per_rank).map_err(|m| Failure::data(format!("{}: {k}: {m}", files[fi].path.display())))?;
                for (e, view) in views.into_iter().enumerate() {
                    let key = format!("{}.mlp.experts.{}.linear_fc{which}.weight", layer.global(0), r.ep * per_rank + e);
                    let slot = if etp == 1 { 0 } else { r.tp };
                    groups.entry(key).or_default().entry(slot).or_insert((fi, view));
                }
                continue;
            }
            match mapping::target(&global, &model) {
                mapping::Target::Ignored(why) => {
                    *ignored.entry(why.to_string()).or_default() += 1;
                    continue;
                }
                mapping::Target::Unknown => {
                    unknown.push((k.to_string(), files[fi].path.clone()));
                    continue;
                }
                mapping::Target::Hf(_) => {}
            }
            let Value::Tensor(t) = v else {
                unknown.push((k.to_string(), files[fi].path.clone()));
                continue;
            };
            let slot = if mapping::is_expert(&global) && etp == 1 { 0 } else { r.tp };
            groups.entry(global).or_default().entry(slot).or_insert((fi, t.clone()));
        }
    }

    let kv_down_rows = |a: &Value| Some(int_arg(a, "kv_lora_rank")? + int_arg(a, "qk_pos_emb_head_dim")?);
    let mut out = Vec::with_capacity(groups.len());
    for (key, pieces) in groups {
        let pieces: Vec<(usize, TensorRef)> = pieces.into_values().collect();
        let paths: Vec<PathBuf> = pieces.iter().map(|(f, _)| files[*f].path.clone()).collect();
        let want = if mapping::is_expert(&key) { etp } else { tp_size };
        let (f0, t0) = &pieces[0];
        for (f, t) in &pieces[1..] {
            if t.shape != t0.shape || t.dtype != t0.dtype {
                return Err(Failure::data(format!(
                    "shape mismatch between ranks for {key}: {} has {:?} {:?}, {} has {:?} {:?}",
                    files[*f0].path.display(),
                    t0.shape,
                    t0.dtype,
                    files[*f].path.display(),
                    t.shape,
                    t.dtype
                )));
            }
        }
        let mut merge = mapping::merge(&key);
        if let Merge::DimOrDuplicated(d) = merge {
            let full = if key.ends_with("linear_kv_down_proj.weight") { kv_down_rows(&args) } else { int_arg(&args, "q_lora_rank") };
            merge = if full == Some(t0.shape[d]) { Merge::Replicated } else { Merge::Dim(d) };
        }
        if merge != Merge::Replicated && pieces.len() != want {
            return Err(Failure::data(format!(
                "{key}: found in {} tensor-parallel rank(s) ({}), {want} expected",
                pieces.len(),
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut shape = t0.shape.clone();
        match merge {
            Merge::Dim(d) | Merge::DimOrDuplicated(d) => shape[d] *= pieces.len(),
            Merge::GateUp => shape[0] *= pieces.len(),
            Merge::Replicated => {}
        }
        out.push(Entry { key, dtype: t0.dtype, shape, files: paths, src: Src::Legacy { pieces, merge } });
    }
    Ok(Checkpoint {
        format: Format::Torch,
        dir: dir.to_path_buf(),
        iteration: None,
        args,
        entries: out,
        ignored,
        unknown,
        parallel: (tp_size, pp_seen, ep_size),
        tensors: Box::new(RankFiles(files)),
    })
}

/// The rank files, parsed; an entry's pieces are tensors in them.
struct RankFiles(Vec<OpenFile>);

impl Tensors for RankFiles {
    fn read(&self, e: &Entry) -> Result<Vec<u8>, Failure> {
        let Src::Legacy { pieces, merge } = &e.src else {
            return Err(Failure::software(format!("{}: not an entry of the torch format", e.key)));
        };
        // One piece in memory at a time beside the whole tensor.
        let piece_shape = &pieces[0].1.shape;
        let mut out = Vec::new();
        for (r, (f, t)) in pieces.iter().enumerate() {
            let file = &self.0[*f];
            let archive = file.archive.as_ref().expect("rank files are parsed");
            let what = format!("{}: {}", file.path.display(), e.key);
            let piece = archive.tensor_bytes(&file.file, t, &what)?;
            if pieces.len() == 1 || *merge == Merge::Replicated {
                return Ok(piece);
            }
            if out.is_empty() {
                out = vec![0u8; piece.len() * pieces.len()];
            }
            place(&mut out, &piece, r, pieces.len(), piece_shape, *merge, e.dtype.size());
        }
        Ok(out)
    }
}

/// Copy piece `r` of `n` tensor-parallel pieces (each of shape `piece`) into its place in the whole
/// row-major tensor `out`.
fn place(out: &mut [u8], piece: &[u8], r: usize, n: usize, shape: &[usize], merge: Merge, es: usize) {
    match merge {
        Merge::Replicated => out.copy_from_slice(piece),
        Merge::Dim(d) | Merge::DimOrDuplicated(d) => {
            let outer: usize = shape[..d].iter().product();
            let inner: usize = shape[d..].iter().product::<usize>() * es;
            for o in 0..outer {
                let at = (o * n + r) * inner;
                out[at..at + inner].copy_from_slice(&piece[o * inner..(o + 1) * inner]);
            }
        }
        Merge::GateUp => {
            // Rank r holds [gate_r; up_r]; the whole is [gate_0 .. gate_n-1; up_0 .. up_n-1].
            let half = piece.len() / 2;
            out[r * half..(r + 1) * half].copy_from_slice(&piece[..half]);
            out[(n + r) * half..(n + r + 1) * half].copy_from_slice(&piece[half..]);
        }
    }
}


/// `{layer}.mlp.experts.weight{1,2}`: the layer and which weight.
fn grouped_gemm(key: &str) -> Option<(LayerOf, u8)> {
    let (l, rest) = layer_of(key)?;
    match rest {
        "mlp.experts.weight1" => Some((l, 1)),
        "mlp.experts.weight2" => Some((l, 2)),
        _ => None,
    }
}

/// Per-expert [out, in] views of a legacy GroupedMLP weight over `n` local experts.
fn grouped_views(t: &TensorRef, which: u8, n: usize) -> Result<Vec<TensorRef>, String> {
    let [a, b] = t.shape[..] else { return Err(format!("grouped-GEMM weight of shape {:?}, 2 dimensions expected", t.shape)) };
    if n == 0 {
        return Err("the number of local experts is unknown (args.num_experts missing)".into());
    }
    if t.stride != [b, 1] {
        return Err("grouped-GEMM weight is not contiguous".into());
    }
    // weight1 [H, n * f]: expert e is memory [e*H*f, (e+1)*H*f) seen as [H, f], transposed to [f, H].
    // weight2 [n * f, H]: expert e is memory [e*f*H, ..) seen as [f, H], transposed to [H, f].
    let (h, f) = if which == 1 { (a, b / n) } else { (b, a / n) };
    if (which == 1 && b % n != 0) || (which == 2 && a % n != 0) {
        return Err(format!("shape {:?} does not divide into {n} experts", t.shape));
    }
    Ok((0..n)
        .map(|e| {
            let offset = t.offset + e * h * f;
            let (shape, stride) = if which == 1 { (vec![f, h], vec![1, f]) } else { (vec![h, f], vec![1, h]) };
            TensorRef { offset, shape, stride, ..t.clone() }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(merge: Merge) -> Vec<u8> {
        // Two ranks of a [2, 2] u8 piece each.
        let mut out = vec![0u8; 8];
        place(&mut out, &[1, 2, 3, 4], 0, 2, &[2, 2], merge, 1);
        place(&mut out, &[5, 6, 7, 8], 1, 2, &[2, 2], merge, 1);
        out
    }

    #[test]
    fn merges_rows_columns_and_gate_up() {
        assert_eq!(merged(Merge::Dim(0)), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(merged(Merge::Dim(1)), [1, 2, 5, 6, 3, 4, 7, 8]);
        // Rank r holds [gate_r; up_r]: the whole is [gate_0; gate_1; up_0; up_1].
        assert_eq!(merged(Merge::GateUp), [1, 2, 5, 6, 3, 4, 7, 8]);
        let mut one = vec![0u8; 4];
        place(&mut one, &[1, 2, 3, 4], 0, 1, &[2, 2], Merge::Replicated, 1);
        assert_eq!(one, [1, 2, 3, 4]);
    }

    #[test]
    fn grouped_gemm_views_are_transposed_experts() {
        let t = TensorRef { key: "0".into(), dtype: crate::pickle::Dtype::F32, offset: 3, shape: vec![4, 6], stride: vec![6, 1], numel: 27 };
        let v = grouped_views(&t, 1, 2).unwrap();
        assert_eq!((v[1].offset, v[1].shape.clone(), v[1].stride.clone()), (3 + 12, vec![3, 4], vec![1, 3]));
        let w2 = TensorRef { shape: vec![6, 4], stride: vec![4, 1], ..t.clone() };
        let v = grouped_views(&w2, 2, 2).unwrap();
        assert_eq!((v[1].offset, v[1].shape.clone(), v[1].stride.clone()), (3 + 12, vec![4, 3], vec![1, 4]));
        assert!(grouped_views(&t, 1, 4).is_err());
        assert_eq!(grouped_gemm("decoder.layers.3.mlp.experts.weight2"), Some((LayerOf::Decoder(3), 2)));
        assert_eq!(grouped_gemm("mtp.layers.0.transformer_layer.mlp.experts.weight1"), Some((LayerOf::Mtp(0), 1)));
    }

    #[test]
    fn expert_layouts_and_layers() {
        assert_eq!(local_expert("mlp.experts.local_experts.3.linear_fc1.weight"), Some((3, "linear_fc1.weight".into())));
        assert_eq!(local_expert("mlp.experts.linear_fc2.weight12"), Some((12, "linear_fc2.weight".into())));
        assert_eq!(local_expert("mlp.shared_experts.linear_fc1.weight"), None);
        assert_eq!(layer_of("decoder.layers.7.mlp.router.weight"), Some((LayerOf::Decoder(7), "mlp.router.weight")));
        assert_eq!(layer_of("mtp.layers.1.transformer_layer.mlp.router.weight"), Some((LayerOf::Mtp(1), "mlp.router.weight")));
        assert_eq!(layer_of("mtp.layers.1.enorm.weight"), None);
        assert_eq!(layer_of("decoder.final_layernorm.weight"), None);
        assert_eq!(LayerOf::Decoder(2).global(3), "decoder.layers.5");
        assert_eq!(LayerOf::Mtp(0).global(3), "mtp.layers.0.transformer_layer");
    }
}
