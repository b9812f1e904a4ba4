//! The flat parameter vector of data parallelism: parameters laid end to end in a fixed order,
//! padded so it splits into `world` equal contiguous shards (ZeRO-1: rank r owns shard r of the
//! fp32 master weights and of both Adam moments), and how a range of it maps back to parameters.

use std::ops::Range;

/// Shards are multiples of this many elements (256 bytes of fp32), so slices stay aligned.
pub const ALIGN: usize = 64;

/// One parameter as the layout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub numel: usize,
    /// Whether AdamW's weight decay applies (not to norms and biases, by convention).
    pub decay: bool,
}

/// The part of a parameter that falls inside a range of the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index into the layout's parameters.
    pub param: usize,
    /// Elements of the (flattened) parameter.
    pub in_param: Range<usize>,
    /// The same elements, relative to the start of the range asked for.
    pub in_range: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct FlatLayout {
    params: Vec<Param>,
    offsets: Vec<usize>,
    total: usize,
    padded: usize,
    world: usize,
}

impl FlatLayout {
    pub fn new(params: Vec<Param>, world: usize) -> FlatLayout {
        assert!(world > 0, "world size 0");
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in &params {
            offsets.push(total);
            total += p.numel;
        }
        let quantum = world * ALIGN;
        let padded = total.div_ceil(quantum).max(1) * quantum;
        FlatLayout { params, offsets, total, padded, world }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Elements of all parameters together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Length of the flat buffers (total plus zero padding).
    pub fn padded(&self) -> usize {
        self.padded
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Elements each rank owns.
    pub fn shard_len(&self) -> usize {
        self.padded / self.world
    }

    /// Where parameter `i` starts in the flat vector.
    pub fn offset(&self, i: usize) -> usize {
        self.offsets[i]
    }

    /// The flat range rank `rank` owns.
    pub fn shard(&self, rank: usize) -> Range<usize> {
        let n = self.shard_len();
        rank * n..(rank + 1) * n
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

    /// The sub-ranges of `range` (relative to its start) whose parameters take weight decay.
    pub fn decay_ranges(&self, range: Range<usize>) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for piece in self.pieces(range).into_iter().filter(|p| self.params[p.param].decay) {
            match out.last_mut() {
                Some(last) if last.end == piece.in_range.start => last.end = piece.in_range.end,
                _ => out.push(piece.in_range),
            }
        }
        out
    }

    /// A short hash of the parameter names and sizes, so state saved for another model is refused.
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

/// Contiguous chunks of `len` elements, each at most `chunk` long (collectives issued per bucket).
pub fn buckets(len: usize, chunk: usize) -> Vec<Range<usize>> {
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
            let l = layout(&[(1000, true), (7, false), (4096, true)], world);
            assert_eq!(l.total(), 5103);
            assert!(l.padded() >= l.total());
            assert_eq!(l.padded() % (world * ALIGN), 0);
            assert!(l.padded() - l.total() < world * ALIGN);
            let mut covered = 0;
            for r in 0..world {
                let s = l.shard(r);
                assert_eq!(s.start, covered);
                assert_eq!(s.len() % ALIGN, 0);
                covered = s.end;
            }
            assert_eq!(covered, l.padded());
        }
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
        let l = layout(&[(100, true), (1, false), (0, true), (333, true)], 3);
        let mut seen = vec![0u8; l.total()];
        for r in 0..3 {
            let s = l.shard(r);
            for p in l.pieces(s.clone()) {
                assert_eq!(p.in_param.len(), p.in_range.len());
                for k in 0..p.in_param.len() {
                    let flat = l.offset(p.param) + p.in_param.start + k;
                    assert_eq!(flat, s.start + p.in_range.start + k);
                    seen[flat] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn decay_ranges_skip_norms_and_merge_neighbours() {
        let l = layout(&[(10, true), (4, true), (5, false), (20, true)], 1);
        assert_eq!(l.decay_ranges(0..l.padded()), vec![0..14, 19..39]);
        assert_eq!(l.decay_ranges(12..30), vec![0..2, 7..18]);
    }

    #[test]
    fn fingerprint_changes_with_names_and_sizes() {
        let a = layout(&[(10, true), (4, false)], 2).fingerprint();
        assert_eq!(a, layout(&[(10, true), (4, false)], 4).fingerprint(), "world size is not part of it");
        assert_ne!(a, layout(&[(10, true), (5, false)], 2).fingerprint());
    }

    #[test]
    fn split_evenly_and_buckets() {
        let parts: Vec<_> = (0..3).map(|r| split_evenly(10, 3, r)).collect();
        assert_eq!(parts, vec![0..4, 4..7, 7..10]);
        assert_eq!(split_evenly(2, 4, 3), 2..2);
        assert_eq!(buckets(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(buckets(8, 4), vec![0..4, 4..8]);
    }
}
