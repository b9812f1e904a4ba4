//! numpy's legacy `RandomState`: the MT19937 generator seeded as `numpy.random.RandomState(seed)`
//! seeds it, and `RandomState.shuffle` on a 1-D array (Fisher–Yates from the end, each index drawn
//! by `random_interval`: masked rejection sampling on 32-bit draws for bounds below 2^32, on 64-bit
//! draws above). Megatron builds every index with this generator, so bit-identical indices need
//! exactly this draw sequence.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The Mersenne Twister in numpy's legacy state layout.
#[derive(Clone)]
pub struct RandomState {
    key: [u32; N],
    pos: usize,
}

impl RandomState {
    /// `numpy.random.RandomState(seed)` for an integer seed in `0..2^32` (numpy's `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        let mut s = seed;
        for (i, slot) in key.iter_mut().enumerate() {
            *slot = s;
            s = 1_812_433_253u32.wrapping_mul(s ^ (s >> 30)).wrapping_add(i as u32 + 1);
        }
        RandomState { key, pos: N }
    }

    /// `numpy.random.RandomState(array)`: numpy's `init_by_array` for an array seed.
    pub fn from_array(init: &[u32]) -> Self {
        let mut st = RandomState::new(19_650_218);
        let key = &mut st.key;
        let len = init.len().max(1);
        let mut i = 1usize;
        let mut j = 0usize;
        let mut k = N.max(init.len());
        while k > 0 {
            let prev = key[i - 1];
            let v = init.get(j).copied().unwrap_or(0);
            key[i] = (key[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525)).wrapping_add(v).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                key[0] = key[N - 1];
                i = 1;
            }
            if j >= len {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            let prev = key[i - 1];
            key[i] = (key[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                key[0] = key[N - 1];
                i = 1;
            }
            k -= 1;
        }
        key[0] = 0x8000_0000;
        st.pos = N;
        st
    }

    fn generate(&mut self) {
        let key = &mut self.key;
        for i in 0..N {
            let y = (key[i] & UPPER_MASK) | (key[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            key[i] = key[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// The next 64-bit output: two 32-bit draws, the first in the high half.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// A uniform integer in `0..=max` (numpy's `random_interval`).
    #[inline]
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= 0xffff_ffff {
            let mask32 = mask as u32;
            loop {
                let v = (self.next_u32() & mask32) as u64;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `RandomState.shuffle(x)` for a 1-D array.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.interval(i as u64) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_mt19937_outputs() {
        // The reference implementation's published first outputs for init_by_array({0x123, 0x234, 0x345, 0x456}).
        let mut r = RandomState::from_array(&[0x123, 0x234, 0x345, 0x456]);
        let first: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(first, vec![1067595299, 955945823, 477289528, 4107218783, 4228976476]);
        // init_genrand(5489), the C++ std::mt19937 default: its 10000th output is 4123659995.
        let mut r = RandomState::new(5489);
        let mut last = 0;
        for _ in 0..10000 {
            last = r.next_u32();
        }
        assert_eq!(last, 4123659995);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut r = RandomState::new(1234);
        let mut v: Vec<u32> = (0..1000).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
