//! Rank BPE on the bytes of one piece, with tiktoken's `byte_pair_merge` semantics: a piece found
//! whole in the ranks is one token; otherwise start from single bytes and repeatedly merge the
//! adjacent pair whose concatenation has the lowest rank (the leftmost such pair on a tie) until no
//! adjacent concatenation is a token. Short pieces use tiktoken's linear scan; long ones a heap
//! with the same (rank, position) order, so the result is identical and long pieces stay O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// Pieces up to this many bytes use the linear scan.
const LINEAR_MAX: usize = 96;
const NONE: u32 = u32::MAX;

/// Keys of at most this many bytes are packed into a u128 (bytes, then the length in the top byte).
const SHORT_MAX: usize = 15;

/// Keys of at most this many bytes are packed into a u64 (bytes, then the length in the top byte).
const TINY_MAX: usize = 7;

#[inline(always)]
fn pack_tiny(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() <= TINY_MAX);
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[7] = bytes.len() as u8;
    u64::from_le_bytes(buf)
}

#[inline(always)]
fn pack(bytes: &[u8]) -> u128 {
    debug_assert!(bytes.len() <= SHORT_MAX);
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[15] = bytes.len() as u8;
    u128::from_le_bytes(buf)
}

/// Token bytes → rank (= token id). Short tokens (most of them, and every pair looked up early in
/// a merge) live in maps keyed by one packed integer, so a lookup hashes one or two words and
/// compares one integer instead of hashing and comparing a byte slice; the smallest map, of
/// tokens up to 7 bytes, is the one hit most and stays the most cache-friendly.
pub struct Ranks {
    /// Tokens of 3..=7 bytes, one map per length (index = length), keyed by the bytes as a u64:
    /// each map is small enough to stay mostly in cache for the lengths a text hits most.
    tiny: [FxHashMap<u64, u32>; TINY_MAX + 1],
    short: FxHashMap<u128, u32>,
    long: FxHashMap<Box<[u8]>, u32>,
    /// The id of each single byte (a rank file without one is rejected before this).
    byte_ids: [u32; 256],
    /// The rank of every two-byte token, indexed by `b0 << 8 | b1` (NONE where it is no token):
    /// the first lookups of every merge, 256 KiB, answered without hashing.
    pairs: Box<[u32]>,
    /// The rank of every three-byte token of the form `[E0-EF][80-BF][80-BF]` (one BMP character
    /// in UTF-8: CJK and most scripts), indexed by the 16 payload bits, NONE where no token.
    triples: Box<[u32]>,
}

/// Index into `Ranks::triples` when `b` has the shape of a three-byte UTF-8 sequence. The map
/// from such triples to their payload bits is one-to-one, so the table is exact for any bytes.
#[inline(always)]
fn triple_index(b: &[u8]) -> Option<usize> {
    if b[0] & 0xF0 == 0xE0 && b[1] & 0xC0 == 0x80 && b[2] & 0xC0 == 0x80 {
        Some(
            ((b[0] as usize & 0x0F) << 12) | ((b[1] as usize & 0x3F) << 6) | (b[2] as usize & 0x3F),
        )
    } else {
        None
    }
}

impl Ranks {
    pub fn new(map: FxHashMap<Box<[u8]>, u32>) -> Ranks {
        let mut tiny: [FxHashMap<u64, u32>; TINY_MAX + 1] = Default::default();
        let mut short = FxHashMap::default();
        let mut long = FxHashMap::default();
        for (k, v) in map {
            if k.len() <= TINY_MAX {
                tiny[k.len()].insert(pack_tiny(&k), v);
            } else if k.len() <= SHORT_MAX {
                short.insert(pack(&k), v);
            } else {
                long.insert(k, v);
            }
        }
        let mut byte_ids = [NONE; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = tiny[1].get(&pack_tiny(&[b as u8])).copied().unwrap_or(NONE);
        }
        let mut pairs = vec![NONE; 1 << 16].into_boxed_slice();
        for (i, rank) in pairs.iter_mut().enumerate() {
            *rank = tiny[2]
                .get(&pack_tiny(&[(i >> 8) as u8, i as u8]))
                .copied()
                .unwrap_or(NONE);
        }
        let mut triples = vec![NONE; 1 << 16].into_boxed_slice();
        for (&key, &rank) in &tiny[3] {
            let bytes = key.to_le_bytes();
            if let Some(i) = triple_index(&bytes[..3]) {
                triples[i] = rank;
            }
        }
        Ranks {
            tiny,
            short,
            long,
            byte_ids,
            pairs,
            triples,
        }
    }

    #[inline(always)]
    pub fn get(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() == 2 {
            let r = self.pairs[((bytes[0] as usize) << 8) | bytes[1] as usize];
            return (r != NONE).then_some(r);
        }
        if bytes.len() == 3 {
            if let Some(i) = triple_index(bytes) {
                let r = self.triples[i];
                return (r != NONE).then_some(r);
            }
        }
        if bytes.len() <= TINY_MAX {
            self.tiny[bytes.len()].get(&pack_tiny(bytes)).copied()
        } else if bytes.len() <= SHORT_MAX {
            self.short.get(&pack(bytes)).copied()
        } else {
            self.long.get(bytes).copied()
        }
    }

    #[inline(always)]
    fn rank(&self, bytes: &[u8]) -> u32 {
        self.get(bytes).unwrap_or(NONE)
    }

    pub fn len(&self) -> usize {
        self.tiny.iter().map(|m| m.len()).sum::<usize>() + self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append the ids of `piece` to `out`.
    #[inline]
    pub fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(id) = self.get(piece) {
            out.push(id);
        } else if piece.len() <= LINEAR_MAX {
            self.merge_linear(piece, out);
        } else {
            self.merge_heap(piece, out);
        }
    }

    /// tiktoken's algorithm: `parts[k] = (start, rank of merging part k with part k+1)`, plus
    /// a sentinel at the end; `ids[k]` is the id of part k (a merge's id is the pair's rank), so
    /// no lookup is needed at the end. Fixed arrays on the stack: no allocation per piece.
    fn merge_linear(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        debug_assert!((2..=LINEAR_MAX).contains(&n));
        let mut parts = [(0u32, NONE); LINEAR_MAX + 1];
        let mut ids = [0u32; LINEAR_MAX];
        let mut min = (NONE, usize::MAX);
        for i in 0..n - 1 {
            let r = self.rank(&piece[i..i + 2]);
            if r < min.0 {
                min = (r, i);
            }
            parts[i] = (i as u32, r);
            ids[i] = self.byte_ids[piece[i] as usize];
        }
        parts[n - 1] = ((n - 1) as u32, NONE);
        ids[n - 1] = self.byte_ids[piece[n - 1] as usize];
        parts[n] = (n as u32, NONE);
        let mut len = n + 1;
        while min.0 != NONE {
            let i = min.1;
            ids[i] = min.0;
            // Ranks of parts[i-1] and parts[i] with their successors once parts[i+1] is gone:
            // their bytes end at parts[i+2] and parts[i+3].
            if i > 0 {
                parts[i - 1].1 =
                    self.rank(&piece[parts[i - 1].0 as usize..parts[i + 2].0 as usize]);
            }
            parts[i].1 = if i + 3 < len {
                self.rank(&piece[parts[i].0 as usize..parts[i + 3].0 as usize])
            } else {
                NONE
            };
            parts.copy_within(i + 2..len, i + 1);
            ids.copy_within(i + 2..len - 1, i + 1);
            len -= 1;
            min = (NONE, usize::MAX);
            for (k, &(_, r)) in parts[..len - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, k);
                }
            }
        }
        out.extend_from_slice(&ids[..len - 1]);
    }

    /// The same merges, chosen from a heap of (pair rank, start) with stale entries skipped.
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        // Parts as a linked list over byte positions: next[s] is the start of the part after the
        // one starting at s (n at the end); prev[s] the start of the one before; pair[s] the rank
        // of merging part s with its successor.
        let mut next: Vec<u32> = (1..=n as u32).collect();
        let mut prev: Vec<u32> = (0..n as u32).map(|s| s.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut pair: Vec<u32> = vec![NONE; n];
        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::with_capacity(n);
        for s in 0..n - 1 {
            let r = self.rank(&piece[s..s + 2]);
            pair[s] = r;
            if r != NONE {
                heap.push(Reverse((r, s as u32)));
            }
        }
        let pair_rank = |next: &Vec<u32>, s: usize| -> u32 {
            let mid = next[s] as usize;
            if mid >= n {
                return NONE;
            }
            let end = next[mid] as usize;
            self.rank(&piece[s..end])
        };
        while let Some(Reverse((r, s))) = heap.pop() {
            let s = s as usize;
            if !alive[s] || pair[s] != r {
                continue;
            }
            // Merge part s with its successor.
            let gone = next[s] as usize;
            alive[gone] = false;
            next[s] = next[gone];
            if (next[s] as usize) < n {
                prev[next[s] as usize] = s as u32;
            }
            pair[s] = pair_rank(&next, s);
            if pair[s] != NONE {
                heap.push(Reverse((pair[s], s as u32)));
            }
            let p = prev[s];
            if p != u32::MAX {
                let p = p as usize;
                pair[p] = pair_rank(&next, p);
                if pair[p] != NONE {
                    heap.push(Reverse((pair[p], p as u32)));
                }
            }
        }
        let mut s = 0usize;
        while s < n {
            let e = next[s] as usize;
            out.push(
                self.get(&piece[s..e])
                    .expect("every part left by BPE is a token"),
            );
            s = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All 256 bytes plus the given merges, ranked in order after them.
    fn ranks(merges: &[&str]) -> Ranks {
        let mut map = FxHashMap::default();
        for b in 0..=255u8 {
            map.insert(vec![b].into_boxed_slice(), b as u32);
        }
        for (i, m) in merges.iter().enumerate() {
            map.insert(m.as_bytes().to_vec().into_boxed_slice(), 256 + i as u32);
        }
        Ranks::new(map)
    }

    /// The definition, slowly: merge the leftmost adjacent pair of lowest rank until none is a token.
    fn naive(r: &Ranks, piece: &[u8]) -> Vec<u32> {
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        loop {
            let best = (0..bounds.len().saturating_sub(2))
                .filter_map(|k| {
                    r.get(&piece[bounds[k]..bounds[k + 2]])
                        .map(|rank| (rank, k))
                })
                .min();
            match best {
                Some((_, k)) => {
                    bounds.remove(k + 1);
                }
                None => break,
            }
        }
        bounds
            .windows(2)
            .map(|w| r.get(&piece[w[0]..w[1]]).unwrap())
            .collect()
    }

    fn both(r: &Ranks, piece: &[u8]) -> Vec<u32> {
        let want = naive(r, piece);
        if piece.len() >= 2 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            if piece.len() <= LINEAR_MAX {
                r.merge_linear(piece, &mut a);
                assert_eq!(
                    a,
                    want,
                    "linear merge on {:?}",
                    String::from_utf8_lossy(piece)
                );
            }
            r.merge_heap(piece, &mut b);
            assert_eq!(
                b,
                want,
                "heap merge on {:?}",
                String::from_utf8_lossy(piece)
            );
        }
        let mut c = Vec::new();
        r.encode_piece(piece, &mut c);
        c
    }

    #[test]
    fn lowest_rank_first_and_leftmost_on_ties() {
        let r = ranks(&["aa", "ab", "aaa"]);
        // "aaaa": "aa" at 0, 1, 2 tie: leftmost merges first → [aa][a][a] → then aa+a = "aaa"? pairs:
        // (aa,a)="aaa" rank 258, (a,a)="aa" 256 → merge the later "aa" → [aa][aa]; "aaaa" is no token.
        assert_eq!(both(&r, b"aaaa"), vec![256, 256]);
        assert_eq!(both(&r, b"aaa"), vec![258], "whole piece is a token");
        assert_eq!(
            both(&r, b"aab"),
            vec![256, b'b' as u32],
            "aa (256) ranks below ab (257)"
        );
    }

    #[test]
    fn every_lookup_table_answers_exactly() {
        // Lengths 2 (pair table), 3 UTF-8-shaped (triple table) and not, 4..7, 8..15 and 16+.
        let words = [
            "ab",
            "中",
            "\u{fffd}",
            "abc",
            "é",
            "中文",
            "abcdefg",
            "abcdefghijklmno",
            "abcdefghijklmnopq",
        ];
        let r = ranks(&words);
        for (i, w) in words.iter().enumerate() {
            assert_eq!(r.get(w.as_bytes()), Some(256 + i as u32), "{w:?}");
        }
        for absent in [
            "ba",
            "文",
            "abd",
            "abcdefh",
            "abcdefghijklmnp",
            "abcdefghijklmnopr",
        ] {
            assert_eq!(r.get(absent.as_bytes()), None, "{absent:?}");
        }
        // Raw three-byte sequences of UTF-8 shape that are not valid UTF-8 (overlong, surrogate).
        let mut map = FxHashMap::default();
        for b in 0..=255u8 {
            map.insert(vec![b].into_boxed_slice(), b as u32);
        }
        map.insert(vec![0xE0, 0x80, 0x80].into_boxed_slice(), 300);
        map.insert(vec![0xED, 0xA0, 0x80].into_boxed_slice(), 301);
        let r = Ranks::new(map);
        assert_eq!(r.get(&[0xE0, 0x80, 0x80]), Some(300));
        assert_eq!(r.get(&[0xED, 0xA0, 0x80]), Some(301));
        assert_eq!(r.get(&[0xE0, 0x80, 0x81]), None);
        assert_eq!(r.len(), 258);
    }

    #[test]
    fn unknown_pairs_stay_bytes() {
        let r = ranks(&[]);
        assert_eq!(
            both(&r, b"xyz"),
            vec![b'x' as u32, b'y' as u32, b'z' as u32]
        );
        assert_eq!(both(&r, b"q"), vec![b'q' as u32]);
        assert_eq!(both(&r, "é".as_bytes()), vec![0xC3, 0xA9]);
    }

    #[test]
    fn linear_and_heap_agree_on_long_random_pieces() {
        let r = ranks(&[
            "ab", "ba", "abab", "aab", "bb", "abb", "bab", "aa", "bbb", "aaaa", "abba", "baab",
            "ababab",
        ]);
        let mut state = 12345u64;
        for len in [2usize, 3, 5, 17, 95, 96, 97, 200, 1000] {
            for _ in 0..50 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if (state >> 33) & 1 == 0 {
                            b'a'
                        } else {
                            b'b'
                        }
                    })
                    .collect();
                both(&r, &piece);
            }
        }
    }
}
