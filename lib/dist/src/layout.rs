//! The flat parameter vector of data parallelism: parameters laid end to end in a fixed order,
//! grouped into buckets (runs of neighbours whose gradients are complete at the same point of the
//! backward pass), each bucket padded so it splits into `world` equal contiguous slices. Rank r
//! owns slice r of every bucket (as Megatron's distributed optimizer shards each bucket), so a
//! bucket's gradients can be reduce-scattered as soon as they are complete; its shard is the
//! concatenation of its slices (ZeRO-1: fp32 master weights and both Adam moments). The element
//! order without padding does not depend on the world size or the bucketing, so state saved in
//! flat coordinates reloads on any world size.

use std::ops::Range;

/// Bucket slices are multiples of this many elements (256 bytes of fp32), so slices stay aligned.
pub const ALIGN: usize = 64;

/// One parameter as the layout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub numel: usize,
    /// Whether AdamW's weight decay applies (not to norms and biases, by convention).
    pub decay: bool,
}

/// The part of a parameter that falls inside a range (of the flat vector or of a rank's shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index into the layout's parameters.
    pub param: usize,
    /// Elements of the (flattened) parameter.
    pub in_param: Range<usize>,
    /// The same elements, relative to the start of the range asked for.
    pub in_range: Range<usize>,
}

/// Neighbouring parameters reduced together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The caller's key: the point of the backward pass after which its gradients are complete.
    pub key: usize,
    /// Its elements in the flat vector (no padding).
    pub flat: Range<usize>,
    /// Its place in the padded buffers (a multiple of `world * ALIGN` long).
    pub padded: Range<usize>,
}

impl Bucket {
    /// Elements of each rank's slice.
    pub fn slice_len(&self, world: usize) -> usize {
        self.padded.len() / world
    }

    /// Where its slices lie in every rank's shard buffers.
    pub fn in_shard(&self, world: usize) -> Range<usize> {
        self.padded.start / world..self.padded.end / world
    }

    /// The flat elements (no padding) of rank `rank`'s slice.
    pub fn owned(&self, world: usize, rank: usize) -> Range<usize> {
        let n = self.slice_len(world);
        let start = (self.flat.start + rank * n).min(self.flat.end);
        start..(start + n).min(self.flat.end)
    }
}

#[derive(Debug, Clone)]
pub struct FlatLayout {
    params: Vec<Param>,
    offsets: Vec<usize>,
    buckets: Vec<Bucket>,
    total: usize,
    padded: usize,
    world: usize,
}

impl FlatLayout {
    /// All parameters in one bucket.
    pub fn new(params: Vec<Param>, world: usize) -> FlatLayout {
        let keys = vec![0; params.len()];
        FlatLayout::with_buckets(params, &keys, world)
    }

    /// One bucket per run of neighbouring parameters with the same key (`keys[i]` for parameter i).
    pub fn with_buckets(params: Vec<Param>, keys: &[usize], world: usize) -> FlatLayout {
        assert!(world > 0, "world size 0");
        assert_eq!(keys.len(), params.len(), "one bucket key per parameter");
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in &params {
            offsets.push(total);
            total += p.numel;
        }
        let quantum = world * ALIGN;
        let mut buckets: Vec<Bucket> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            match buckets.last_mut() {
                Some(b) if b.key == keys[i] => b.flat.end += p.numel,
                _ => buckets.push(Bucket { key: keys[i], flat: offsets[i]..offsets[i] + p.numel, padded: 0..0 }),
            }
        }
        if buckets.is_empty() {
            buckets.push(Bucket { key: 0, flat: 0..0, padded: 0..0 });
        }
        let mut padded = 0;
        for b in &mut buckets {
            let len = b.flat.len().div_ceil(quantum).max(1) * quantum;
            b.padded = padded..padded + len;
            padded += len;
        }
        FlatLayout { params, offsets, buckets, total, padded, world }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Elements of all parameters together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Length of the padded buffers (every bucket padded).
    pub fn padded(&self) -> usize {
        self.padded
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Elements of each rank's shard (its slices of all buckets, padding included).
    pub fn shard_len(&self) -> usize {
        self.padded / self.world
    }

    /// Where parameter `i` starts in the flat vector.
    pub fn offset(&self, i: usize) -> usize {
        self.offsets[i]
    }

    /// What rank `rank` owns: (place in its shard, flat elements) per bucket, empty parts left out.
    pub fn shard_ranges(&self, rank: usize) -> Vec<(Range<usize>, Range<usize>)> {
        self.buckets
            .iter()
            .filter_map(|b| {
                let flat = b.owned(self.world, rank);
                let at = b.in_shard(self.world).start;
                (!flat.is_empty()).then(|| (at..at + flat.len(), flat))
            })
            .collect()
    }

    /// The flat ranges rank `rank` owns, in shard order.
    pub fn owned(&self, rank: usize) -> Vec<Range<usize>> {
        self.shard_ranges(rank).into_iter().map(|(_, flat)| flat).collect()
    }

    /// The parameters (parts of them) in rank `rank`'s shard, `in_range` relative to the shard.
    pub fn shard_pieces(&self, rank: usize) -> Vec<Piece> {
        let mut out = Vec::new();
        for (local, flat) in self.shard_ranges(rank) {
            for mut p in self.pieces(flat) {
                p.in_range = local.start + p.in_range.start..local.start + p.in_range.end;
                out.push(p);
            }
        }
        out
    }

    /// The parameters (parts of them) inside `range` of the flat vector, in order.
    pub fn pieces(&self, range: Range<usize>) -> Vec<Piece> {
        let first = self.offsets.partition_point(|&o| o <= range.start).saturating_sub(1);
        let mut out = Vec::new();
        for i in first..self.params.len() {
            let (start, end) = (self.offsets[i], self.offsets[i] + self.params[i].numel);
            if start >= range.end {
                break;
            }
            let (a, b) = (start.max(range.start), end.min(range.end));
            if a < b {
                out.push(Piece { param: i, in_param: a - start..b - start, in_range: a - range.start..b - range.start });
            }
        }
        out
    }

    /// The ranges of rank `rank`'s shard whose parameters take weight decay.
    pub fn decay_ranges(&self, rank: usize) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for piece in self.shard_pieces(rank).into_iter().filter(|p| self.params[p.param].decay) {
            match out.last_mut() {
                Some(last) if last.end == piece.in_range.start => last.end = piece.in_range.end,
                _ => out.push(piece.in_range),
            }
        }
        out
    }

    /// A short hash of the parameter names and sizes, so state saved for another model is refused
    /// (the world size and the bucketing are not part of it).
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for p in &self.params {
            text.push_str(&format!("{}:{}:{};", p.name, p.numel, p.decay));
        }
        openseek_common::hash::sha256_bytes(text.as_bytes())[..16].to_string()
    }
}

/// Rank `rank`'s part of `n` items split as evenly as possible into `parts` contiguous ranges
/// (the first `n % parts` ranges have one more item), e.g. the sequences of a global batch.
pub fn split_evenly(n: usize, parts: usize, rank: usize) -> Range<usize> {
    let (base, extra) = (n / parts, n % parts);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Contiguous chunks of `len` elements, each at most `chunk` long (collectives issued per chunk).
pub fn chunks(len: usize, chunk: usize) -> Vec<Range<usize>> {
    assert!(chunk > 0);
    (0..len.div_ceil(chunk)).map(|k| k * chunk..((k + 1) * chunk).min(len)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(sizes: &[(usize, bool)], world: usize) -> FlatLayout {
        FlatLayout::new(
            sizes.iter().enumerate().map(|(i, &(numel, decay))| Param { name: format!("p{i}"), numel, decay }).collect(),
            world,
        )
    }

    #[test]
    fn shards_are_equal_aligned_and_cover_everything() {
        for world in [1, 2, 3, 8] {
            for keys in [[0, 0, 0], [1, 2, 2], [3, 4, 5]] {
                let l = FlatLayout::with_buckets(layout(&[(1000, true), (7, false), (4096, true)], 1).params().to_vec(), &keys, world);
                assert_eq!(l.total(), 5103);
                assert_eq!(l.padded() % (world * ALIGN), 0);
                assert_eq!(l.shard_len() * world, l.padded());
                let buckets = l.buckets();
                assert!(buckets.len() == if keys[0] == 0 { 1 } else { keys[2] - keys[0] + 1 });
                let (mut flat, mut padded) = (0, 0);
                for b in buckets {
                    assert_eq!((b.flat.start, b.padded.start), (flat, padded));
                    assert!(b.padded.len() >= b.flat.len() && b.padded.len() - b.flat.len() < world * ALIGN);
                    assert_eq!(b.slice_len(world) % ALIGN, 0);
                    (flat, padded) = (b.flat.end, b.padded.end);
                }
                assert_eq!((flat, padded), (l.total(), l.padded()));
                // Each rank owns slice r of every bucket; together they own each element once.
                let mut seen = vec![0u8; l.total()];
                for r in 0..world {
                    let ranges = l.shard_ranges(r);
                    for (local, flat) in &ranges {
                        assert_eq!(local.len(), flat.len());
                        assert!(local.end <= l.shard_len());
                        flat.clone().for_each(|i| seen[i] += 1);
                    }
                    assert_eq!(l.owned(r), ranges.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>());
                }
                assert!(seen.iter().all(|&c| c == 1), "world {world}, keys {keys:?}");
            }
        }
    }

    #[test]
    fn buckets_follow_the_keys_and_split_into_rank_slices() {
        let l = FlatLayout::with_buckets(layout(&[(100, true), (30, false), (200, true), (5, false)], 1).params().to_vec(), &[7, 3, 3, 7], 2);
        let b: Vec<_> = l.buckets().iter().map(|b| (b.key, b.flat.clone(), b.padded.clone())).collect();
        assert_eq!(b, vec![(7, 0..100, 0..128), (3, 100..330, 128..384), (7, 330..335, 384..512)]);
        assert_eq!(l.buckets()[1].in_shard(2), 64..192);
        assert_eq!(l.shard_ranges(0), vec![(0..64, 0..64), (64..192, 100..228), (192..197, 330..335)]);
        assert_eq!(l.shard_ranges(1), vec![(0..36, 64..100), (64..166, 228..330)]);
        // Rank 1: parameter 0's tail, parameter 2's tail; nothing of the last bucket (5 elements).
        assert_eq!(
            l.shard_pieces(1),
            vec![Piece { param: 0, in_param: 64..100, in_range: 0..36 }, Piece { param: 2, in_param: 98..200, in_range: 64..166 }]
        );
        assert_eq!(l.decay_ranges(1), vec![0..36, 64..166]);
        // Rank 0: parameter 0's head, parameter 1 (no decay) then parameter 2's head, parameter 3.
        assert_eq!(l.decay_ranges(0), vec![0..64, 94..192]);
    }

    #[test]
    fn pieces_map_a_range_back_to_parameters() {
        let l = layout(&[(10, true), (5, false), (20, true)], 1);
        assert_eq!(
            l.pieces(8..17),
            vec![
                Piece { param: 0, in_param: 8..10, in_range: 0..2 },
                Piece { param: 1, in_param: 0..5, in_range: 2..7 },
                Piece { param: 2, in_param: 0..2, in_range: 7..9 },
            ]
        );
        // Past the end (padding) maps to nothing.
        assert_eq!(l.pieces(35..64), vec![]);
        // Every element of every shard maps to exactly one parameter element.
        let l = FlatLayout::with_buckets(layout(&[(100, true), (1, false), (0, true), (333, true)], 1).params().to_vec(), &[0, 1, 1, 2], 3);
        let mut seen = vec![0u8; l.total()];
        for r in 0..3 {
            let ranges = l.shard_ranges(r);
            for p in l.shard_pieces(r) {
                assert_eq!(p.in_param.len(), p.in_range.len());
                for k in 0..p.in_param.len() {
                    let flat = l.offset(p.param) + p.in_param.start + k;
                    let local = p.in_range.start + k;
                    let (l0, f0) = ranges.iter().find(|(l, _)| l.contains(&local)).unwrap();
                    assert_eq!(flat, f0.start + (local - l0.start));
                    seen[flat] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn decay_ranges_skip_norms_and_merge_neighbours() {
        let l = layout(&[(10, true), (4, true), (5, false), (20, true)], 1);
        assert_eq!(l.decay_ranges(0), vec![0..14, 19..39]);
    }

    #[test]
    fn fingerprint_changes_with_names_and_sizes() {
        let a = layout(&[(10, true), (4, false)], 2).fingerprint();
        assert_eq!(a, layout(&[(10, true), (4, false)], 4).fingerprint(), "world size is not part of it");
        let bucketed = FlatLayout::with_buckets(layout(&[(10, true), (4, false)], 1).params().to_vec(), &[1, 2], 2);
        assert_eq!(a, bucketed.fingerprint(), "nor the bucketing");
        assert_ne!(a, layout(&[(10, true), (5, false)], 2).fingerprint());
    }

    #[test]
    fn split_evenly_and_chunks() {
        let parts: Vec<_> = (0..3).map(|r| split_evenly(10, 3, r)).collect();
        assert_eq!(parts, vec![0..4, 4..7, 7..10]);
        assert_eq!(split_evenly(2, 4, 3), 2..2);
        assert_eq!(chunks(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(chunks(8, 4), vec![0..4, 4..8]);
    }
}
