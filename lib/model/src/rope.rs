//! Rotary position embeddings as transformers' DeepSeek-V3 computes them: inverse frequencies
//! (plain or YaRN), cos/sin tables in fp32 cast to the activations' dtype, and the rotation in
//! interleaved-pair layout (`rope_interleave`, the default) or rotate-half layout.

use crate::config::{Config, RopeScaling};
use tch::{Device, Kind, Tensor};

pub struct Rope {
    /// [rope_dim / 2] fp32.
    inv_freq: Tensor,
    /// YaRN's magnitude factor on cos/sin (1 without scaling).
    attention_factor: f64,
    interleave: bool,
}

impl Rope {
    pub fn new(cfg: &Config, device: Device) -> Rope {
        let dim = cfg.qk_rope_head_dim;
        let base = cfg.rope_theta;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Float, device)) / dim as f64;
        let pos_freqs = Tensor::scalar_tensor(base, (Kind::Float, device)).pow(&exponents);
        let (inv_freq, attention_factor) = match &cfg.rope_scaling {
            RopeScaling::None => (pos_freqs.reciprocal(), 1.0),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention_factor = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => get_mscale(*factor, *m) / get_mscale(*factor, *a),
                    _ => get_mscale(*factor, 1.0),
                });
                // The dimension at which a wavelength makes `rotations` turns over the original context.
                let correction_dim = |rotations: f64| {
                    let max_pos = *original_max_position_embeddings as f64;
                    (dim as f64 * (max_pos / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min((dim - 1) as f64);
                if low == high {
                    high += 0.001;
                }
                let ramp = ((Tensor::arange(dim / 2, (Kind::Float, device)) - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                let extrapolation = pos_freqs.reciprocal();
                let interpolation = (&pos_freqs * *factor).reciprocal();
                let inv_freq = interpolation * (1.0 - &extrapolation_factor) + extrapolation * &extrapolation_factor;
                (inv_freq, attention_factor)
            }
        };
        Rope { inv_freq, attention_factor, interleave: cfg.rope_interleave }
    }

    /// cos and sin for `positions` ([T] int64): each [T, rope_dim] (frequencies repeated twice), in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.to_device(positions.device()).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        ((emb.cos() * self.attention_factor).to_kind(kind), (emb.sin() * self.attention_factor).to_kind(kind))
    }

    /// Whether pairs are interleaved (x[2i], x[2i+1]) rather than halves (x[i], x[i + rope_dim/2]).
    pub fn interleave(&self) -> bool {
        self.interleave
    }

    /// Rotate `x` [..., T, rope_dim] by the tables from `cos_sin`.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = *x.size().last().unwrap();
        if self.interleave {
            // Pairs (x0, x1), (x2, x3), … each turn by one frequency; the output lists the
            // first members of all pairs, then the second members.
            let (cos, sin) = (cos.narrow(-1, 0, d / 2), sin.narrow(-1, 0, d / 2));
            let x1 = x.slice(-1, 0, d, 2);
            let x2 = x.slice(-1, 1, d, 2);
            Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x2 * &cos + &x1 * &sin], -1)
        } else {
            let x1 = x.narrow(-1, 0, d / 2);
            let x2 = x.narrow(-1, d / 2, d - d / 2);
            let rotated = Tensor::cat(&[-x2, x1], -1);
            x * cos + rotated * sin
        }
    }
}
