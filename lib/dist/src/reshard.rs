//! Sharded optimizer state on disk, loadable on any world size: each rank writes what it owns
//! (`optim-RRRRR-of-WWWWW.safetensors`: fp32 1-D tensors such as `master`, `exp_avg`,
//! `exp_avg_sq`, holding the rank's flat ranges end to end, with the ranges, the flat length and
//! the layout fingerprint in the metadata); a rank of another world size (or bucketing) reads the
//! overlap of the ranges it owns with every file.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, Failure};
use openseek_safetensors::{Dtype, SafetensorsFile};

/// What a shard file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardInfo {
    pub rank: usize,
    pub world: usize,
    /// The ranges of the flat vector (no padding) the file holds, in the order stored.
    pub ranges: Vec<Range<usize>>,
    /// Elements of the flat vector without padding.
    pub total: usize,
    pub fingerprint: String,
    /// Optimizer steps taken (Adam's bias correction needs it).
    pub step: u64,
}

pub fn shard_file_name(rank: usize, world: usize) -> String {
    format!("optim-{rank:05}-of-{world:05}.safetensors")
}

fn format_ranges(ranges: &[Range<usize>]) -> String {
    ranges.iter().map(|r| format!("{}-{}", r.start, r.end)).collect::<Vec<_>>().join(",")
}

fn parse_ranges(text: &str) -> Option<Vec<Range<usize>>> {
    if text.is_empty() {
        return Some(vec![]);
    }
    text.split(',')
        .map(|part| {
            let (a, b) = part.split_once('-')?;
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some(a..b)
        })
        .collect()
}

/// Write this rank's state. `tensors` hold `info.ranges` end to end (equal lengths). Written
/// atomically.
pub fn save_shard(dir: &Path, info: &ShardInfo, tensors: &[(&str, &[f32])]) -> Result<PathBuf, Failure> {
    let path = dir.join(shard_file_name(info.rank, info.world));
    let len: usize = info.ranges.iter().map(|r| r.len()).sum();
    assert!(info.ranges.iter().all(|r| r.end <= info.total), "optimizer ranges past the flat vector");
    for (_, data) in tensors {
        assert_eq!(data.len(), len, "optimizer state of another length than its ranges");
    }
    let shape = [len];
    let tensors: Vec<(&str, Dtype, &[usize], &[u8])> = tensors.iter().map(|&(name, data)| (name, Dtype::F32, &shape[..], f32_bytes(data))).collect();
    let meta: BTreeMap<String, String> = [
        ("rank", info.rank.to_string()),
        ("world", info.world.to_string()),
        ("ranges", format_ranges(&info.ranges)),
        ("total", info.total.to_string()),
        ("fingerprint", info.fingerprint.clone()),
        ("step", info.step.to_string()),
        ("format", "openseek-dist optimizer shard 2".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = openseek_safetensors::serialize(&tensors, &meta)
        .map_err(|e| Failure::software(format!("{}: cannot serialise the optimizer shard: {e}", path.display())))?;
    let mut outputs = AtomicOutputs::new();
    std::io::Write::write_all(&mut outputs.create(&path)?, &bytes)
        .map_err(|e| Failure::io(format!("{}: cannot write the optimizer shard: {e}", path.display())))?;
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

/// Read `names` for the flat ranges `want` (what this rank owns in the new world size) from the
/// set of shards in `dir`: each tensor comes back as the ranges end to end. Checks the fingerprint
/// and that the files cover every element asked for exactly once.
pub fn load_ranges(dir: &Path, want: &[Range<usize>], names: &[&str], fingerprint: &str) -> Result<(HashMap<String, Vec<f32>>, u64), Failure> {
    let len: usize = want.iter().map(|r| r.len()).sum();
    let mut out: HashMap<String, Vec<f32>> = names.iter().map(|n| (n.to_string(), vec![0f32; len])).collect();
    let mut step = None;
    let mut covered = 0usize;
    let mut total_seen = None;
    for path in find_shards(dir)? {
        // Shards are written under a temporary name, so a mapped one does not change.
        let file = SafetensorsFile::open(&path)?;
        let bad = |why: String| Failure::data(format!("{}: {why}", path.display()));
        let meta = &file.metadata;
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("metadata has no '{k}' (not an optimizer shard)")));
        let number = |k: &str| field(k)?.parse::<u64>().map_err(|_| bad(format!("metadata '{k}' is not a number")));
        let (fingerprint_here, step_here, total) = (field("fingerprint")?, number("step")?, number("total")? as usize);
        if fingerprint_here != fingerprint {
            return Err(bad(format!(
                "saved for another parameter layout (fingerprint {fingerprint_here} here, {fingerprint} expected): a different model or parameter order"
            )));
        }
        if *step.get_or_insert(step_here) != step_here || *total_seen.get_or_insert(total) != total {
            return Err(bad("shards of different steps or sizes in one set".into()));
        }
        let mut stored = None;
        for name in names {
            let t = file.tensors.get(*name).ok_or_else(|| bad(format!("has no tensor '{name}'")))?;
            if t.dtype != Dtype::F32 || t.shape.len() != 1 {
                return Err(bad(format!("tensor '{name}' is not a 1-D F32 slice")));
            }
            if *stored.get_or_insert(t.shape[0]) != t.shape[0] {
                return Err(bad("slices of different lengths".into()));
            }
        }
        let stored = stored.unwrap_or(0);
        // Format 1 (one contiguous slice per rank) gave its start as `offset`.
        let ranges = match meta.get("ranges") {
            Some(text) => parse_ranges(text).ok_or_else(|| bad(format!("metadata 'ranges' is not a list of START-END: {text}")))?,
            None => {
                let start = number("offset")? as usize;
                let whole = start..start + stored;
                vec![whole]
            }
        };
        if ranges.iter().map(|r| r.len()).sum::<usize>() != stored || ranges.iter().any(|r| r.end > total) {
            return Err(bad(format!("ranges {} do not match the {stored} stored elements of a vector of {total}", format_ranges(&ranges))));
        }
        // Every overlap of a stored range with a wanted one: (position in the file, in the output, length).
        let mut copies = vec![];
        let mut at_file = 0;
        for have in &ranges {
            let mut at_out = 0;
            for w in want {
                let (a, b) = (have.start.max(w.start), have.end.min(w.end));
                if a < b {
                    copies.push((at_file + a - have.start, at_out + a - w.start, b - a));
                }
                at_out += w.len();
            }
            at_file += have.len();
        }
        covered += copies.iter().map(|c| c.2).sum::<usize>();
        for name in names {
            let data = file.bytes(file.tensors[*name].range());
            let dst = out.get_mut(*name).unwrap();
            for &(src, to, n) in &copies {
                for (d, s) in dst[to..to + n].iter_mut().zip(data[src * 4..(src + n) * 4].chunks_exact(4)) {
                    *d = f32::from_le_bytes(s.try_into().unwrap());
                }
            }
        }
    }
    if want.iter().any(|r| r.end > total_seen.unwrap_or(0)) || covered != len {
        return Err(Failure::data(format!(
            "{}: the optimizer shards cover {covered} of the {len} elements asked for ({}, of a vector of {}): files missing or overlapping",
            dir.display(),
            format_ranges(want),
            total_seen.unwrap_or(0)
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

    /// Save `full` as `world` ranks of the layout `keys` buckets it into.
    fn save_world(dir: &Path, world: usize, keys: &[usize], full: &[Vec<f32>; 2], step: u64) {
        let l = FlatLayout::with_buckets(layout(1).params().to_vec(), keys, world);
        for r in 0..world {
            let ranges = l.owned(r);
            let part = |v: &Vec<f32>| ranges.iter().flat_map(|s| v[s.clone()].to_vec()).collect::<Vec<f32>>();
            let (a, b) = (part(&full[0]), part(&full[1]));
            let info = ShardInfo { rank: r, world, ranges: ranges.clone(), total: l.total(), fingerprint: l.fingerprint(), step };
            save_shard(dir, &info, &[("master", &a), ("exp_avg", &b)]).unwrap();
        }
    }

    #[test]
    fn saved_on_three_ranks_loads_on_two_five_and_one_whatever_the_buckets() {
        let total = layout(1).total();
        let full = [(0..total).map(|i| i as f32 * 0.5).collect::<Vec<_>>(), (0..total).map(|i| -(i as f32)).collect()];
        for (saved_keys, loaded_keys) in [([0, 0, 0], [0, 0, 0]), ([0, 1, 2], [0, 0, 0]), ([0, 0, 0], [5, 6, 6]), ([1, 2, 1], [3, 3, 4])] {
            let dir = tempfile::tempdir().unwrap();
            save_world(dir.path(), 3, &saved_keys, &full, 42);
            for world in [1, 2, 5] {
                let l = FlatLayout::with_buckets(layout(1).params().to_vec(), &loaded_keys, world);
                let mut joined = [vec![f32::NAN; total], vec![f32::NAN; total]];
                for r in 0..world {
                    let ranges = l.owned(r);
                    let (got, step) = load_ranges(dir.path(), &ranges, &["master", "exp_avg"], &l.fingerprint()).unwrap();
                    assert_eq!(step, 42);
                    for (k, name) in ["master", "exp_avg"].iter().enumerate() {
                        let mut at = 0;
                        for s in &ranges {
                            joined[k][s.clone()].copy_from_slice(&got[*name][at..at + s.len()]);
                            at += s.len();
                        }
                        assert_eq!(at, got[*name].len());
                    }
                }
                for k in 0..2 {
                    assert_eq!(&joined[k], &full[k], "world {world}, saved {saved_keys:?}, loaded {loaded_keys:?}");
                }
            }
        }
    }

    /// A file of format 1 (one contiguous slice per rank, `offset` in the metadata) still loads.
    #[test]
    fn format_one_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let meta: BTreeMap<String, String> =
            [("rank", "0"), ("world", "1"), ("offset", "0"), ("total", "10"), ("fingerprint", "f"), ("step", "3"), ("format", "openseek-dist optimizer shard 1")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let bytes = openseek_safetensors::serialize(&[("master", Dtype::F32, &[10], f32_bytes(&data))], &meta).unwrap();
        std::fs::write(dir.path().join(shard_file_name(0, 1)), bytes).unwrap();
        let (got, step) = load_ranges(dir.path(), &[7..10, 1..3], &["master"], "f").unwrap();
        assert_eq!((got["master"].clone(), step), (vec![7.0, 8.0, 9.0, 1.0, 2.0], 3));
    }

    #[test]
    fn identical_state_makes_byte_identical_files() {
        let total = layout(1).total();
        let full = [(0..total).map(|i| i as f32).collect::<Vec<_>>(), vec![0.5; total]];
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        save_world(a.path(), 2, &[0, 0, 0], &full, 7);
        save_world(b.path(), 2, &[0, 0, 0], &full, 7);
        for r in 0..2 {
            let name = shard_file_name(r, 2);
            let (x, y) = (std::fs::read(a.path().join(&name)).unwrap(), std::fs::read(b.path().join(&name)).unwrap());
            assert!(x == y, "{name} differs between two saves of the same state");
            let n = u64::from_le_bytes(x[..8].try_into().unwrap()) as usize;
            let header = std::str::from_utf8(&x[8..8 + n]).unwrap();
            assert!(header.starts_with(r#"{"__metadata__":{"fingerprint":"#), "metadata first, keys sorted: {header}");
            // The header validated by safetensors (the crate, as Python's safetensors uses it).
            let file = SafetensorsFile::open(&a.path().join(&name)).unwrap();
            assert_eq!(file.metadata["step"], "7");
        }
    }

    #[test]
    fn incomplete_or_foreign_sets_are_refused() {
        let total = layout(1).total();
        let full = [vec![1.0; total], vec![2.0; total]];
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 2, &[0, 1, 2], &full, 1);
        let l = layout(2);
        let e = load_ranges(dir.path(), &l.owned(0), &["master"], "0000").unwrap_err();
        assert!(e.message.contains("another parameter layout"), "{}", e.message);
        let e = load_ranges(dir.path(), &l.owned(0), &["exp_avg_sq"], &l.fingerprint()).unwrap_err();
        assert!(e.message.contains("no tensor 'exp_avg_sq'"), "{}", e.message);
        let past_the_end = 0..total + 1;
        let e = load_ranges(dir.path(), std::slice::from_ref(&past_the_end), &["master"], &l.fingerprint()).unwrap_err();
        assert!(e.message.contains("cover"), "{}", e.message);
        std::fs::remove_file(dir.path().join(shard_file_name(1, 2))).unwrap();
        let e = load_ranges(dir.path(), &l.owned(0), &["master"], &l.fingerprint()).unwrap_err();
        assert!(e.message.contains("no complete set"), "{}", e.message);
        // No temporaries left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
