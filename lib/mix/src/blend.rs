//! Megatron BlendedDataset's order for weighted datasets (`blended_dataset.py`,
//! `blended_megatron_dataset_builder.py`, `helpers.cpp build_blending_indices`), to the last bit:
//! weights normalised with numpy's float64 sum (pairwise summation), each dataset asked for
//! `ceil(ceil(N * w) * (1 + surplus))` samples, the blend `sum ceil(N * w)` long, and blended sample
//! `s` taken from the first dataset maximising `w_d * max(s, 1) - count_d`.
//! Also Megatron's split string ("998,1,1") and the document ranges it gives.

/// Megatron's default `mid_level_dataset_surplus`.
pub const DEFAULT_SURPLUS: f64 = 0.005;

/// numpy's `add.reduce` over a contiguous float64 array: pairwise summation (a plain loop below 8
/// elements, 8 partial sums up to 128, recursive halves above).
pub fn numpy_sum(values: &[f64]) -> f64 {
    pairwise(values)
}

fn pairwise(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise(&a[..n2]) + pairwise(&a[n2..])
    }
}

/// `megatron.core.datasets.utils.normalize`.
pub fn normalize(weights: &[f64]) -> Vec<f64> {
    let sum = numpy_sum(weights);
    weights.iter().map(|w| w / sum).collect()
}

/// Per dataset, `ceil(ceil(target * w) * (1 + surplus))` (`_get_size_per_split_per_dataset`).
pub fn sizes_per_dataset(normalized: &[f64], target: u64, surplus: f64) -> Vec<u64> {
    let factor = 1.0 + surplus;
    normalized
        .iter()
        .map(|w| {
            let base = (target as f64 * w).ceil();
            (base * factor).ceil() as u64
        })
        .collect()
}

/// The blend Megatron builds for `weights` (any positive scale) and `target` samples:
/// (normalised weights as used for blending, per-dataset targets, per-dataset requests with surplus).
pub struct BlendPlan {
    pub weights: Vec<f64>,
    pub targets: Vec<u64>,
    pub requests: Vec<u64>,
    pub size: u64,
}

pub fn plan(weights: &[f64], target: u64, surplus: f64) -> BlendPlan {
    let normalized = normalize(weights);
    let targets = sizes_per_dataset(&normalized, target, 0.0);
    let requests = sizes_per_dataset(&normalized, target, surplus);
    let size = targets.iter().sum();
    // BlendedDataset normalises the (already normalised) weights once more.
    BlendPlan { weights: normalize(&normalized), targets, requests, size }
}

/// `build_blending_indices`: for each blended sample, (dataset, sample within that dataset).
pub fn blending_indices(weights: &[f64], size: u64) -> (Vec<i16>, Vec<i64>) {
    assert!(weights.len() < 32767 && !weights.is_empty());
    let nd = weights.len();
    let mut counts = vec![0i64; nd];
    let mut dataset_index = Vec::with_capacity(size as usize);
    let mut sample_index = Vec::with_capacity(size as usize);
    for s in 0..size {
        let sd = (s as f64).max(1.0);
        let mut best = 0usize;
        let mut best_err = weights[0] * sd - counts[0] as f64;
        for d in 1..nd {
            let err = weights[d] * sd - counts[d] as f64;
            if err > best_err {
                best_err = err;
                best = d;
            }
        }
        dataset_index.push(best as i16);
        sample_index.push(counts[best]);
        counts[best] += 1;
    }
    (dataset_index, sample_index)
}

/// Megatron's split string ("998,1,1") as fractions: numbers found by `[.0-9]+`, padded to three
/// with zeros, normalised.
pub fn parse_split(split: &str) -> Result<[f64; 3], String> {
    let mut nums = Vec::new();
    let mut cur = String::new();
    for c in split.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || c == '.' {
            cur.push(c);
        } else if !cur.is_empty() {
            nums.push(cur.parse::<f64>().map_err(|_| format!("split {split:?}: {cur:?} is not a number"))?);
            cur.clear();
        }
    }
    if nums.is_empty() || nums.len() > 3 {
        return Err(format!("split {split:?} must have one to three numbers, like \"998,1,1\""));
    }
    nums.resize(3, 0.0);
    if nums.iter().sum::<f64>() <= 0.0 {
        return Err(format!("split {split:?} sums to zero"));
    }
    let n = normalize(&nums);
    Ok([n[0], n[1], n[2]])
}

/// Document range of each split (`None` where the split is empty), as
/// `round(bookend * num_documents)` with Python's round-half-even.
pub fn split_ranges(split: &[f64; 3], num_documents: u64) -> [Option<std::ops::Range<u32>>; 3] {
    let mut bookends = [0.0f64; 4];
    // functools.reduce starting from the int 0: 0 + a is exactly a.
    for i in 0..3 {
        bookends[i + 1] = if i == 0 { split[0] } else { bookends[i] + split[i] };
    }
    let mut out: [Option<std::ops::Range<u32>>; 3] = [None, None, None];
    for i in 0..3 {
        if bookends[i + 1] <= bookends[i] {
            continue;
        }
        let beg = (bookends[i] * num_documents as f64).round_ties_even() as u32;
        let end = (bookends[i + 1] * num_documents as f64).round_ties_even() as u32;
        out[i] = Some(beg..end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_follows_weights_in_every_prefix() {
        let p = plan(&[3.0, 1.0], 100, DEFAULT_SURPLUS);
        assert_eq!(p.targets, vec![75, 25]);
        assert_eq!(p.requests, vec![76, 26]);
        let (d, s) = blending_indices(&p.weights, p.size);
        // s=0 and s=1 both use max(s,1)=1, so the second sample already goes to the lighter dataset.
        assert_eq!(&d[..8], &[0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!((s[1], s[2], s[5]), (0, 1, 1));
        assert_eq!(d.iter().filter(|&&x| x == 1).count(), 25);
    }

    #[test]
    fn split_strings() {
        let s = parse_split("998,1,1").unwrap();
        assert_eq!(s, [0.998, 0.001, 0.001]);
        let r = split_ranges(&s, 1000);
        assert_eq!(r[0], Some(0..998));
        assert_eq!(r[1], Some(998..999));
        assert_eq!(r[2], Some(999..1000));
        let r = split_ranges(&parse_split("1").unwrap(), 10);
        assert_eq!(r, [Some(0..10), None, None]);
        assert!(parse_split("0,0").is_err());
    }
}
