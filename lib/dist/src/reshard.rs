//! Sharded optimizer state on disk, loadable on any world size: each rank writes its own slice
//! (`optim-RRRRR-of-WWWWW.safetensors`: fp32 1-D tensors such as `master`, `exp_avg`,
//! `exp_avg_sq`, with the slice's global offset, the flat length and the layout fingerprint in the
//! metadata); a rank of a different world size reads the overlap of its new slice with every file.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, Failure};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// What a shard file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardInfo {
    pub rank: usize,
    pub world: usize,
    /// Global offset of the slice in the flat vector.
    pub offset: usize,
    /// Elements of the flat vector without padding (the slice never extends past it).
    pub total: usize,
    pub fingerprint: String,
    /// Optimizer steps taken (Adam's bias correction needs it).
    pub step: u64,
}

pub fn shard_file_name(rank: usize, world: usize) -> String {
    format!("optim-{rank:05}-of-{world:05}.safetensors")
}

/// Write this rank's slice. `tensors` are equal-length fp32 slices starting at `info.offset`; the
/// part past `info.total` (padding) is not stored. Written atomically.
pub fn save_shard(dir: &Path, info: &ShardInfo, tensors: &[(&str, &[f32])]) -> Result<PathBuf, Failure> {
    let path = dir.join(shard_file_name(info.rank, info.world));
    let len = tensors.first().map_or(0, |(_, t)| t.len());
    let keep = len.min(info.total.saturating_sub(info.offset));
    let views = tensors
        .iter()
        .map(|(name, data)| {
            assert_eq!(data.len(), len, "optimizer slices of different lengths");
            let bytes = f32_bytes(&data[..keep]);
            (name.to_string(), TensorView::new(Dtype::F32, vec![keep], bytes).expect("shape matches the data"))
        })
        .collect::<Vec<_>>();
    let meta: HashMap<String, String> = [
        ("rank", info.rank.to_string()),
        ("world", info.world.to_string()),
        ("offset", info.offset.to_string()),
        ("total", info.total.to_string()),
        ("fingerprint", info.fingerprint.clone()),
        ("step", info.step.to_string()),
        ("format", "openseek-dist optimizer shard 1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut outputs = AtomicOutputs::new();
    drop(outputs.create(&path)?);
    let temp = AtomicOutputs::temp_path_for(&path);
    safetensors::serialize_to_file(views, Some(meta), &temp)
        .map_err(|e| Failure::io(format!("{}: cannot write the optimizer shard: {e}", temp.display())))?;
    outputs.commit()?;
    Ok(path)
}

/// The shard files of the newest complete set in `dir` (all ranks of one world size), by rank.
pub fn find_shards(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries = std::fs::read_dir(dir).map_err(|e| Failure::io_at(dir, "cannot list the optimizer state directory", &e))?;
    let mut by_world: HashMap<usize, Vec<(usize, PathBuf)>> = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_prefix("optim-").and_then(|s| s.strip_suffix(".safetensors")) else { continue };
        let Some((r, w)) = stem.split_once("-of-") else { continue };
        if let (Ok(r), Ok(w)) = (r.parse::<usize>(), w.parse::<usize>()) {
            by_world.entry(w).or_default().push((r, entry.path()));
        }
    }
    let complete: Vec<_> = by_world.into_iter().filter(|(w, files)| files.len() == *w).collect();
    match complete.len() {
        0 => Err(Failure::no_input(format!("{}: no complete set of optimizer shards (optim-R-of-W.safetensors for every R < W)", dir.display()))),
        1 => {
            let mut files = complete.into_iter().next().unwrap().1;
            files.sort();
            Ok(files.into_iter().map(|(_, p)| p).collect())
        }
        _ => Err(Failure::data(format!("{}: optimizer shards of several world sizes; keep one set", dir.display()))),
    }
}

/// Read `names` for the flat range `range` (this rank's slice in the new world size) from the set of
/// shards in `dir`. Elements past the stored total (padding) are zero. Checks the fingerprint.
pub fn load_range(dir: &Path, range: Range<usize>, names: &[&str], fingerprint: &str) -> Result<(HashMap<String, Vec<f32>>, u64), Failure> {
    let mut out: HashMap<String, Vec<f32>> = names.iter().map(|n| (n.to_string(), vec![0f32; range.len()])).collect();
    let mut step = None;
    let mut covered = 0usize;
    let mut total_seen = None;
    for path in find_shards(dir)? {
        let file = std::fs::File::open(&path).map_err(|e| Failure::io_at(&path, "cannot open", &e))?;
        // Safety: the file is not modified while mapped (shards are written under a temporary name).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Failure::io_at(&path, "cannot map", &e))?;
        let bad = |why: String| Failure::data(format!("{}: {why}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&map).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("metadata has no '{k}' (not an optimizer shard)")));
        let number = |k: &str| field(k)?.parse::<u64>().map_err(|_| bad(format!("metadata '{k}' is not a number")));
        let info = ShardInfo {
            rank: number("rank")? as usize,
            world: number("world")? as usize,
            offset: number("offset")? as usize,
            total: number("total")? as usize,
            fingerprint: field("fingerprint")?,
            step: number("step")?,
        };
        if info.fingerprint != fingerprint {
            return Err(bad(format!(
                "saved for another parameter layout (fingerprint {} here, {} expected): a different model or parameter order",
                info.fingerprint, fingerprint
            )));
        }
        if *step.get_or_insert(info.step) != info.step || *total_seen.get_or_insert(info.total) != info.total {
            return Err(bad("shards of different steps or sizes in one set".into()));
        }
        let tensors = SafeTensors::deserialize(&map).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut stored = None;
        for name in names {
            let t = tensors.tensor(name).map_err(|_| bad(format!("has no tensor '{name}'")))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
                return Err(bad(format!("tensor '{name}' is not a 1-D F32 slice")));
            }
            let len = t.shape()[0];
            if *stored.get_or_insert(len) != len {
                return Err(bad("slices of different lengths".into()));
            }
            let (a, b) = (info.offset.max(range.start), (info.offset + len).min(range.end));
            if a < b {
                let src = &t.data()[(a - info.offset) * 4..(b - info.offset) * 4];
                let dst = &mut out.get_mut(*name).unwrap()[a - range.start..b - range.start];
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes(s.try_into().unwrap());
                }
            }
        }
        let len = stored.unwrap_or(0);
        covered += (info.offset + len).min(range.end).saturating_sub(info.offset.max(range.start));
    }
    let total = total_seen.unwrap_or(0);
    let want = range.end.min(total).saturating_sub(range.start);
    if covered != want {
        return Err(Failure::data(format!(
            "{}: the optimizer shards cover {covered} of the {want} elements of range {range:?}: files missing or overlapping",
            dir.display()
        )));
    }
    Ok((out, step.unwrap_or(0)))
}

fn f32_bytes(data: &[f32]) -> &[u8] {
    // Safety: any f32 is valid as bytes; the layout is little endian on every supported target.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{FlatLayout, Param};

    fn layout(world: usize) -> FlatLayout {
        let params = [(1000, true), (37, false), (2500, true)]
            .iter()
            .enumerate()
            .map(|(i, &(numel, decay))| Param { name: format!("p{i}"), numel, decay })
            .collect();
        FlatLayout::new(params, world)
    }

    fn save_world(dir: &Path, world: usize, full: &[Vec<f32>; 2], step: u64) {
        let l = layout(world);
        for r in 0..world {
            let s = l.shard(r);
            let slice = |v: &Vec<f32>| (s.clone()).map(|i| v.get(i).copied().unwrap_or(0.0)).collect::<Vec<f32>>();
            let (a, b) = (slice(&full[0]), slice(&full[1]));
            let info = ShardInfo { rank: r, world, offset: s.start, total: l.total(), fingerprint: l.fingerprint(), step };
            save_shard(dir, &info, &[("master", &a), ("exp_avg", &b)]).unwrap();
        }
    }

    #[test]
    fn saved_on_three_ranks_loads_on_two_five_and_one() {
        let total = layout(1).total();
        let full = [(0..total).map(|i| i as f32 * 0.5).collect::<Vec<_>>(), (0..total).map(|i| -(i as f32)).collect()];
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 3, &full, 42);
        for world in [1, 2, 5] {
            let l = layout(world);
            let mut joined = [Vec::new(), Vec::new()];
            for r in 0..world {
                let (got, step) = load_range(dir.path(), l.shard(r), &["master", "exp_avg"], &l.fingerprint()).unwrap();
                assert_eq!(step, 42);
                assert_eq!(got["master"].len(), l.shard_len());
                joined[0].extend_from_slice(&got["master"]);
                joined[1].extend_from_slice(&got["exp_avg"]);
            }
            for k in 0..2 {
                assert_eq!(&joined[k][..total], &full[k][..], "world {world}");
                assert!(joined[k][total..].iter().all(|&x| x == 0.0), "padding is zero");
            }
        }
    }

    #[test]
    fn incomplete_or_foreign_sets_are_refused() {
        let total = layout(1).total();
        let full = [vec![1.0; total], vec![2.0; total]];
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 2, &full, 1);
        let l = layout(2);
        let e = load_range(dir.path(), l.shard(0), &["master"], "0000").unwrap_err();
        assert!(e.message.contains("another parameter layout"), "{}", e.message);
        let e = load_range(dir.path(), l.shard(0), &["exp_avg_sq"], &l.fingerprint()).unwrap_err();
        assert!(e.message.contains("no tensor 'exp_avg_sq'"), "{}", e.message);
        std::fs::remove_file(dir.path().join(shard_file_name(1, 2))).unwrap();
        let e = load_range(dir.path(), l.shard(0), &["master"], &l.fingerprint()).unwrap_err();
        assert!(e.message.contains("no complete set"), "{}", e.message);
        // No temporaries left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
