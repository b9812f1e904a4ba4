//! MinHash signatures exactly as datatrove 0.10.1's `MinhashDedupSignature` computes them:
//! word 5-grams of the simplified text (spaCy English words), each joined by spaces and hashed
//! with xxhash64 (seed 0); 112 universal-hash permutations `(h * a + b) mod 2^64 mod (2^61 - 1)`
//! whose `a`, `b` come from numpy's `RandomState(seed).randint` (MT19937, masked rejection);
//! the per-permutation minimum, cut into 14 bands of 8.

use serde::{Deserialize, Serialize};

use crate::normalize::simplify_text;
use crate::words::EnglishWords;

/// 2^61 - 1, datatrove's `_mersenne_prime`.
pub const MERSENNE_PRIME: u64 = (1 << 61) - 1;

/// datatrove's `MinhashConfig` (64-bit xxhash precision, its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinhashConfig {
    pub n_grams: usize,
    pub num_buckets: usize,
    pub hashes_per_bucket: usize,
    pub seed: u32,
}

impl Default for MinhashConfig {
    fn default() -> Self {
        MinhashConfig { n_grams: 5, num_buckets: 14, hashes_per_bucket: 8, seed: 1 }
    }
}

impl MinhashConfig {
    pub fn num_hashes(&self) -> usize {
        self.num_buckets * self.hashes_per_bucket
    }
}

/// numpy's legacy MT19937 (`RandomState(seed)` with an integer seed).
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_b0df;
                }
                self.state[i] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_u64(&mut self) -> u64 {
        let high = self.next_u32() as u64;
        (high << 32) | self.next_u32() as u64
    }

    /// `randint(low, high, dtype=uint64)` for one value, ranges wider than 32 bits: a masked
    /// draw below `high - 1 - low`, rejected until it fits (numpy's `bounded_masked_uint64`).
    fn randint_u64(&mut self, low: u64, high: u64) -> u64 {
        let range = high - 1 - low;
        let mask = u64::MAX >> range.leading_zeros();
        loop {
            let value = self.next_u64() & mask;
            if value <= range {
                return low + value;
            }
        }
    }
}

/// The permutation parameters `(a, b)` datatrove draws for `config.seed`.
pub fn permutations(config: &MinhashConfig) -> (Vec<u64>, Vec<u64>) {
    assert!(config.num_hashes() > 0);
    let mut rng = Mt19937::new(config.seed);
    let a = (0..config.num_hashes()).map(|_| rng.randint_u64(1, MERSENNE_PRIME)).collect();
    let b = (0..config.num_hashes()).map(|_| rng.randint_u64(0, MERSENNE_PRIME)).collect();
    (a, b)
}

/// `x mod (2^61 - 1)` for any u64.
#[inline(always)]
fn mod_mersenne(x: u64) -> u64 {
    let r = (x & MERSENNE_PRIME) + (x >> 61);
    if r >= MERSENNE_PRIME {
        r - MERSENNE_PRIME
    } else {
        r
    }
}

/// Computes signatures; one per process, shared by the worker threads.
pub struct Signer {
    pub config: MinhashConfig,
    a: Vec<u64>,
    b: Vec<u64>,
    words: &'static EnglishWords,
}

impl Signer {
    pub fn new(config: MinhashConfig) -> Self {
        let (a, b) = permutations(&config);
        Signer { config, a, b, words: EnglishWords::get() }
    }

    /// xxhash64 of each word n-gram joined by spaces; empty when the text has fewer than n words.
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let words = self.words.split(&simplify_text(text));
        let n = self.config.n_grams;
        if words.len() < n {
            return Vec::new();
        }
        let mut joined = String::new();
        words
            .windows(n)
            .map(|gram| {
                joined.clear();
                for (i, w) in gram.iter().enumerate() {
                    if i > 0 {
                        joined.push(' ');
                    }
                    joined.push_str(w);
                }
                twox_hash::XxHash64::oneshot(0, joined.as_bytes())
            })
            .collect()
    }

    /// The signature (num_hashes minima, band after band), or None for a text without shingles.
    pub fn signature(&self, text: &str) -> Option<Vec<u64>> {
        let shingles = self.shingles(text);
        if shingles.is_empty() {
            return None;
        }
        let mut minima = vec![u64::MAX; self.config.num_hashes()];
        for &h in &shingles {
            for ((m, &a), &b) in minima.iter_mut().zip(&self.a).zip(&self.b) {
                let v = mod_mersenne(h.wrapping_mul(a).wrapping_add(b));
                if v < *m {
                    *m = v;
                }
            }
        }
        Some(minima)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mersenne_reduction_matches_remainder() {
        for x in [0, 1, MERSENNE_PRIME - 1, MERSENNE_PRIME, MERSENNE_PRIME + 1, u64::MAX, u64::MAX - 5, 1 << 63, 12345678901234567890] {
            assert_eq!(mod_mersenne(x), x % MERSENNE_PRIME, "{x}");
        }
    }

    #[test]
    fn mt19937_reference_output() {
        // The first outputs of MT19937 seeded with init_genrand(5489), from the reference C code.
        let mut rng = Mt19937::new(5489);
        assert_eq!(rng.next_u32(), 3_499_211_612);
        assert_eq!(rng.next_u32(), 581_869_302);
        assert_eq!(rng.next_u32(), 3_890_346_734);
    }

    #[test]
    fn near_duplicates_share_most_minima() {
        let signer = Signer::new(MinhashConfig::default());
        let base = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat near the door of the old house";
        let edited = base.replace("warm", "cold");
        let other = "an entirely different sentence about rivers mountains forests and the animals that live in them every day";
        let (s1, s2, s3) = (signer.signature(base).unwrap(), signer.signature(&edited).unwrap(), signer.signature(other).unwrap());
        let same = |x: &[u64], y: &[u64]| x.iter().zip(y).filter(|(a, b)| a == b).count();
        assert!(same(&s1, &s2) > 60, "{}", same(&s1, &s2));
        assert!(same(&s1, &s3) < 5);
        assert_eq!(signer.signature("too few words here"), None);
    }
}
