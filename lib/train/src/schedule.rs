//! Learning-rate schedules as Megatron computes them (`OptimizerParamScheduler.get_lr`), counted
//! in samples: warm-up and decay given in iterations are multiplied by the global batch size, and
//! the rate of an iteration is the rate at the samples consumed before it (so the first iteration
//! of a warm-up runs at 0, as in Megatron and transformers).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Constant,
    Cosine,
    Linear,
    /// Warm-up, stable, decay: constant until the last `wsd_decay` samples of the decay, then
    /// down to min_lr in the WSD decay style.
    Wsd,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WsdDecay {
    Linear,
    Cosine,
    Exponential,
    MinusSqrt,
}

/// A schedule with every length in samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub style: Style,
    pub warmup: u64,
    /// Where the decay ends (min_lr from there on).
    pub decay_end: u64,
    /// WSD only: length of the final decay.
    pub wsd_decay: u64,
    pub wsd_style: WsdDecay,
}

impl Schedule {
    /// The learning rate after `s` samples.
    pub fn lr(&self, s: u64) -> f64 {
        let (max, min) = (self.max_lr, self.min_lr);
        if self.warmup > 0 && s <= self.warmup {
            return max * s as f64 / self.warmup as f64;
        }
        if self.style == Style::Constant {
            return max;
        }
        if s > self.decay_end {
            return min;
        }
        let ratio = (s - self.warmup) as f64 / (self.decay_end - self.warmup) as f64;
        let pi = std::f64::consts::PI;
        let coeff = match self.style {
            Style::Constant => unreachable!(),
            Style::Linear => 1.0 - ratio,
            Style::Cosine => 0.5 * ((pi * ratio).cos() + 1.0),
            Style::Wsd => {
                let anneal_start = self.decay_end - self.wsd_decay;
                if s <= anneal_start {
                    1.0
                } else {
                    let r = (s - anneal_start) as f64 / self.wsd_decay as f64;
                    match self.wsd_style {
                        WsdDecay::Linear => 1.0 - r,
                        WsdDecay::Cosine => 0.5 * ((pi * r).cos() + 1.0),
                        WsdDecay::Exponential => 2.0 * 0.5f64.powf(r) - 1.0,
                        WsdDecay::MinusSqrt => 1.0 - r.sqrt(),
                    }
                }
            }
        };
        min + coeff * (max - min)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.warmup > self.decay_end && self.style != Style::Constant {
            return Err(format!("the warm-up ({} samples) is longer than the decay ({} samples)", self.warmup, self.decay_end));
        }
        if self.decay_end == self.warmup && self.style != Style::Constant {
            return Err("the decay has no length: decay end equals the warm-up".into());
        }
        if self.style == Style::Wsd && (self.wsd_decay == 0 || self.wsd_decay > self.decay_end - self.warmup) {
            return Err(format!(
                "the WSD decay ({} samples) must be positive and fit after the warm-up ({} of {} samples)",
                self.wsd_decay, self.warmup, self.decay_end
            ));
        }
        if self.min_lr > self.max_lr {
            return Err(format!("min_lr {} is above lr {}", self.min_lr, self.max_lr));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-15 * b.abs().max(1e-30), "{a} != {b}");
    }

    #[test]
    fn baseline_cosine_with_sample_warmup() {
        // FlagScale baseline: 3e-3 -> 3e-4, 2,048,000 warm-up samples, 24,576,000 samples.
        let s = Schedule {
            max_lr: 3e-3,
            min_lr: 3e-4,
            style: Style::Cosine,
            warmup: 2_048_000,
            decay_end: 24_576_000,
            wsd_decay: 0,
            wsd_style: WsdDecay::Linear,
        };
        assert_eq!(s.lr(0), 0.0);
        close(s.lr(1024), 3e-3 * 1024.0 / 2_048_000.0);
        close(s.lr(2_048_000), 3e-3);
        let mid = 2_048_000 + (24_576_000 - 2_048_000) / 2;
        close(s.lr(mid), 3e-4 + 0.5 * (3e-3 - 3e-4));
        let at = 10_000_000u64;
        let r = (at - 2_048_000) as f64 / (24_576_000 - 2_048_000) as f64;
        close(s.lr(at), 3e-4 + 0.5 * ((std::f64::consts::PI * r).cos() + 1.0) * 2.7e-3);
        close(s.lr(24_576_000), 3e-4);
        close(s.lr(30_000_000), 3e-4);
    }

    #[test]
    fn linear_constant_and_wsd() {
        let base = Schedule { max_lr: 1.0, min_lr: 0.1, style: Style::Linear, warmup: 10, decay_end: 110, wsd_decay: 20, wsd_style: WsdDecay::Linear };
        close(base.lr(5), 0.5);
        close(base.lr(60), 0.1 + 0.5 * 0.9);
        close(base.lr(200), 0.1);
        let c = Schedule { style: Style::Constant, ..base };
        close(c.lr(5), 0.5);
        close(c.lr(1000), 1.0);
        let w = Schedule { style: Style::Wsd, ..base };
        close(w.lr(50), 1.0);
        close(w.lr(90), 1.0);
        close(w.lr(100), 0.1 + 0.5 * 0.9);
        close(w.lr(110), 0.1);
        let w = Schedule { wsd_style: WsdDecay::MinusSqrt, ..w };
        close(w.lr(95), 0.1 + (1.0 - 0.25f64.sqrt()) * 0.9);
        let w = Schedule { wsd_style: WsdDecay::Exponential, ..w };
        close(w.lr(100), 0.1 + (2.0 * 0.5f64.powf(0.5) - 1.0) * 0.9);
        let w = Schedule { wsd_style: WsdDecay::Cosine, ..w };
        close(w.lr(100), 0.1 + 0.45);
    }

    #[test]
    fn impossible_schedules_are_refused() {
        let s = Schedule { max_lr: 1.0, min_lr: 0.1, style: Style::Cosine, warmup: 100, decay_end: 50, wsd_decay: 0, wsd_style: WsdDecay::Linear };
        assert!(s.check().unwrap_err().contains("warm-up"));
        let s = Schedule { style: Style::Wsd, warmup: 10, decay_end: 50, wsd_decay: 60, ..s };
        assert!(s.check().unwrap_err().contains("WSD"));
    }
}
