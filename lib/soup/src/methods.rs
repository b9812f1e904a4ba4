//! The merge arithmetic on one tensor, in f32, following mergekit 0.1.5's kernels operation by
//! operation (same order of additions, same thresholds) so deterministic methods agree with it
//! to float precision: linear (weighted / uniform / EMA averages), slerp, and the generalized
//! task arithmetic family (task_arithmetic, ties, dare_linear, dare_ties).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const PAR_CHUNK: usize = 1 << 16;

/// `acc += x * w` with a fused multiply-add, as torch's vectorized `addcmul_` computes it
/// (so averages round exactly like mergekit's); uses the FMA instruction when the CPU has it.
fn fma_accumulate(acc: &mut [f32], x: &[f32], w: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA (checked just above).
            unsafe { fma_accumulate_x86(acc, x, w) };
            return;
        }
    }
    for (o, v) in acc.iter_mut().zip(x) {
        *o = v.mul_add(w, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma_accumulate_x86(acc: &mut [f32], x: &[f32], w: f32) {
    for (o, v) in acc.iter_mut().zip(x) {
        *o = v.mul_add(w, *o);
    }
}

/// Weighted sum of `inputs` (`sum w_i x_i`), divided by `sum w_i` when `normalize`.
pub fn linear(inputs: &[&[f32]], weights: &[f32], normalize: bool) -> Vec<f32> {
    let n = inputs[0].len();
    let mut out = vec![0f32; n];
    let denominator: f32 = weights.iter().sum();
    out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, chunk)| {
        let start = c * PAR_CHUNK;
        let len = chunk.len();
        for (x, w) in inputs.iter().zip(weights) {
            fma_accumulate(chunk, &x[start..start + len], *w);
        }
        if normalize {
            chunk.iter_mut().for_each(|o| *o /= denominator);
        }
    });
    out
}

/// EMA weights of an ordered sequence of `n` checkpoints: `ema = x_1`, then
/// `ema = decay * ema + (1 - decay) * x_i`; returned as the weight of each `x_i` (they sum to 1).
pub fn ema_weights(n: usize, decay: f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i == 0 {
                decay.powi(n as i32 - 1)
            } else {
                (1.0 - decay) * decay.powi((n - 1 - i) as i32)
            }
        })
        .map(|w| w as f32)
        .collect()
}

fn l2_norm(x: &[f32]) -> f64 {
    x.par_chunks(PAR_CHUNK).map(|c| c.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>()).sum::<f64>().sqrt()
}

/// Spherical interpolation from `a` (t = 0, the base) to `b` (t = 1) over the whole tensor as
/// one vector; nearly collinear pairs (|cos| > 0.9995) interpolate linearly.
pub fn slerp(t: f32, a: &[f32], b: &[f32]) -> Vec<f32> {
    const DOT_THRESHOLD: f32 = 0.9995;
    const EPS: f64 = 1e-8;
    if a.is_empty() {
        return Vec::new();
    }
    let na = l2_norm(a);
    let nb = l2_norm(b);
    let na = if na > EPS { na as f32 } else { 1.0 };
    let nb = if nb > EPS { nb as f32 } else { 1.0 };
    let dot: f64 = a
        .par_chunks(PAR_CHUNK)
        .zip(b.par_chunks(PAR_CHUNK))
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| ((p / na) * (q / nb)) as f64).sum::<f64>())
        .sum();
    let dot = (dot as f32).clamp(-1.0, 1.0);
    let (ca, cb) = if dot.abs() > DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta = dot.acos();
        let s = theta.sin();
        (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
    };
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, chunk)| {
        let s = c * PAR_CHUNK;
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = ca * a[s + i] + cb * b[s + i];
        }
    });
    out
}

/// How task vectors (input - base) are sparsified before they are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsify {
    None,
    /// Keep the `density` fraction of largest magnitudes (TIES).
    Magnitude,
    /// Keep each element with probability `density` (DARE), from a seeded generator.
    Random,
}

/// Parameters of the task-arithmetic family for one tensor.
pub struct TaskArithmetic<'a> {
    pub sparsify: Sparsify,
    /// Sign consensus by summed weighted deltas (TIES).
    pub consensus: bool,
    pub normalize: bool,
    /// Rescale a sparsified delta to keep its L1 norm.
    pub rescale: bool,
    pub lambda: f32,
    pub weights: &'a [f32],
    pub densities: &'a [f32],
    /// Seed of the random drop (one stream per tensor and input).
    pub seeds: &'a [u64],
}

fn rescale_l1(original: &[f32], masked: &mut [f32]) {
    const EPS: f64 = 1e-7;
    let before: f64 = original.iter().map(|v| v.abs() as f64).sum();
    let after: f64 = masked.iter().map(|v| v.abs() as f64).sum();
    if before < EPS || after < EPS {
        return;
    }
    let scale = (before as f32) / (after as f32);
    masked.iter_mut().for_each(|v| *v *= scale);
}

/// Keep the `k = max(1, floor(density * n))` largest magnitudes of `delta`.
fn magnitude_mask(delta: &mut [f32], density: f32, rescale: bool) {
    if density >= 1.0 {
        return;
    }
    if density <= 0.0 || delta.is_empty() {
        delta.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let k = ((density as f64 * delta.len() as f64) as usize).max(1);
    let original = if rescale { Some(delta.to_vec()) } else { None };
    if k < delta.len() {
        let mut order: Vec<u32> = (0..delta.len() as u32).collect();
        order.select_nth_unstable_by(k - 1, |&i, &j| delta[j as usize].abs().total_cmp(&delta[i as usize].abs()));
        for &i in &order[k..] {
            delta[i as usize] = 0.0;
        }
    }
    if let Some(original) = original {
        rescale_l1(&original, delta);
    }
}

/// Keep each element with probability `density`.
fn random_mask(delta: &mut [f32], density: f32, rescale: bool, seed: u64) {
    if density >= 1.0 {
        return;
    }
    let original = if rescale { Some(delta.to_vec()) } else { None };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for v in delta.iter_mut() {
        if rng.random::<f32>() >= density {
            *v = 0.0;
        }
    }
    if let Some(original) = original {
        rescale_l1(&original, delta);
    }
}

/// `base + lambda * combine(sparsify(x_i - base) * w_i)`, combined by (sign-consensus) sum and
/// divided by the summed weights when `normalize`.
pub fn task_arithmetic(base: &[f32], inputs: &[&[f32]], p: &TaskArithmetic) -> Vec<f32> {
    let n = base.len();
    let mut deltas: Vec<Vec<f32>> = inputs
        .par_iter()
        .enumerate()
        .map(|(m, x)| {
            let mut d: Vec<f32> = x.iter().zip(base).map(|(x, b)| x - b).collect();
            match p.sparsify {
                Sparsify::None => {}
                Sparsify::Magnitude => magnitude_mask(&mut d, p.densities[m], p.rescale),
                Sparsify::Random => random_mask(&mut d, p.densities[m], p.rescale, p.seeds[m]),
            }
            let w = p.weights[m];
            d.iter_mut().for_each(|v| *v *= w);
            d
        })
        .collect();
    let mut out = vec![0f32; n];
    let weight_sum: f32 = p.weights.iter().fold(0.0, |a, w| a + w);
    let deltas_ref: Vec<&[f32]> = deltas.iter().map(|d| d.as_slice()).collect();
    out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, chunk)| {
        let s = c * PAR_CHUNK;
        for (i, o) in chunk.iter_mut().enumerate() {
            let j = s + i;
            let (mixed, divisor) = if p.consensus {
                let sign_weight = deltas_ref.iter().fold(0f32, |a, d| a + d[j]);
                let majority = if sign_weight >= 0.0 { 1.0f32 } else { -1.0 };
                let mut mixed = 0f32;
                let mut divisor = 0f32;
                for (d, w) in deltas_ref.iter().zip(p.weights) {
                    let sign = if d[j] > 0.0 { 1.0 } else if d[j] < 0.0 { -1.0 } else { 0.0 };
                    if sign == majority {
                        mixed += d[j];
                        divisor += w;
                    }
                }
                (mixed, if divisor == 0.0 { 1.0 } else { divisor })
            } else {
                let mixed = deltas_ref.iter().fold(0f32, |a, d| a + d[j]);
                (mixed, if weight_sum.abs() < 1e-8 { 1.0 } else { weight_sum })
            };
            let mut mixed = if p.normalize { mixed / divisor } else { mixed };
            if p.lambda != 1.0 {
                mixed *= p.lambda;
            }
            *o = base[j] + mixed;
        }
    });
    deltas.clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_ema() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 6.0];
        assert_eq!(linear(&[&a, &b], &[1.0, 1.0], true), vec![2.0, 4.0]);
        assert_eq!(linear(&[&a, &b], &[1.0, 3.0], true), vec![2.5, 5.0]);
        assert_eq!(linear(&[&a, &b], &[1.0, 3.0], false), vec![10.0, 20.0]);
        let w = ema_weights(3, 0.5);
        assert_eq!(w, vec![0.25, 0.25, 0.5]);
    }

    #[test]
    fn slerp_endpoints_and_orthogonal_midpoint() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        assert_eq!(slerp(0.0, &a, &b), vec![1.0, 0.0]);
        let mid = slerp(0.5, &a, &b);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((mid[0] - h).abs() < 1e-6 && (mid[1] - h).abs() < 1e-6, "{mid:?}");
        // collinear: linear interpolation
        assert_eq!(slerp(0.5, &[1.0, 1.0], &[3.0, 3.0]), vec![2.0, 2.0]);
    }

    #[test]
    fn ties_keeps_top_magnitudes_and_majority_sign() {
        let base = [0.0f32; 4];
        let x = [1.0f32, -0.1, 0.5, -3.0];
        let y = [1.0f32, 0.2, -0.4, 2.0];
        let p = TaskArithmetic {
            sparsify: Sparsify::Magnitude,
            consensus: true,
            normalize: true,
            rescale: false,
            lambda: 1.0,
            weights: &[1.0, 1.0],
            densities: &[0.5, 0.5],
            seeds: &[0, 0],
        };
        // x keeps {-3.0, 1.0}; y keeps {2.0, 1.0}; element 3: sum -1 -> majority negative.
        assert_eq!(task_arithmetic(&base, &[&x, &y], &p), vec![1.0, 0.0, 0.0, -3.0]);
    }

    #[test]
    fn dare_drops_about_one_minus_density_and_keeps_l1() {
        let n = 100_000;
        let base = vec![0f32; n];
        let x: Vec<f32> = (0..n).map(|i| ((i % 7) as f32) - 3.0).collect();
        let mut d = x.clone();
        random_mask(&mut d, 0.3, true, 42);
        let kept = d.iter().zip(&x).filter(|(v, o)| **v != 0.0 && **o != 0.0).count();
        let nonzero = x.iter().filter(|v| **v != 0.0).count();
        let frac = kept as f64 / nonzero as f64;
        assert!((frac - 0.3).abs() < 0.01, "{frac}");
        let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
        assert!((l1(&d) / l1(&x) - 1.0).abs() < 1e-5);
        let mut again = x.clone();
        random_mask(&mut again, 0.3, true, 42);
        assert_eq!(again, d, "same seed, same drop");
        let _ = base;
    }
}
