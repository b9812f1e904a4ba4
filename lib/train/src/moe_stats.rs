//! What the routers did in a step, for the log: per MoE layer the tokens each expert got (min,
//! max, spread, experts with none) and the correction biases' range.

use openseek_model::model::FeedForward;
use openseek_model::DeepseekV3;
use serde_json::{json, Map, Value};
use tch::{Device, Tensor};

/// Min, max, std (population) and zero count of tokens per expert.
pub fn load_stats(load: &[i64]) -> (i64, i64, f64, usize) {
    let n = load.len() as f64;
    let mean = load.iter().sum::<i64>() as f64 / n;
    let var = load.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / n;
    (*load.iter().min().unwrap(), *load.iter().max().unwrap(), var.sqrt(), load.iter().filter(|&&l| l == 0).count())
}

/// The log's `moe` object (`layer_N` → statistics) and its TensorBoard scalars (`moe/layer_N/…`),
/// from the step's tokens per expert `loads` (one tensor per MoE layer, in layer order, the MTP
/// layers `num_hidden_layers + k` last when the MTP loss ran).
pub fn record(model: &DeepseekV3, loads: &[Tensor]) -> (Map<String, Value>, Vec<(String, f32)>) {
    let mut moe = Map::new();
    let mut scalars = vec![];
    let layers = model.all_layers().filter_map(|(i, l)| match &l.mlp {
        FeedForward::Moe(m) => Some((i, m)),
        FeedForward::Dense(_) => None,
    });
    for ((i, m), load) in layers.zip(loads) {
        let l: Vec<i64> = Vec::<i64>::try_from(load.to_device(Device::Cpu)).unwrap_or_default();
        if l.is_empty() {
            continue;
        }
        let (min, max, std, dead) = load_stats(&l);
        let bias = Vec::<f32>::try_from(m.gate.bias.to_device(Device::Cpu)).unwrap_or_default();
        let bmin = bias.iter().cloned().fold(f32::INFINITY, f32::min);
        let bmax = bias.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let bmean = bias.iter().sum::<f32>() / bias.len().max(1) as f32;
        let key = format!("layer_{i}");
        for (name, v) in [
            ("tokens_min", min as f64),
            ("tokens_max", max as f64),
            ("tokens_std", std),
            ("dead_experts", dead as f64),
            ("bias_min", bmin as f64),
            ("bias_max", bmax as f64),
            ("bias_mean", bmean as f64),
        ] {
            scalars.push((format!("moe/{key}/{name}"), v as f32));
        }
        moe.insert(
            key,
            json!({"tokens_min": min, "tokens_max": max, "tokens_std": std, "dead_experts": dead,
                   "bias_min": bmin, "bias_max": bmax, "bias_mean": bmean}),
        );
    }
    (moe, scalars)
}

#[cfg(test)]
mod tests {
    #[test]
    fn load_stats_of_a_known_load() {
        let (min, max, std, dead) = super::load_stats(&[0, 2, 4, 6]);
        assert_eq!((min, max, dead), (0, 6, 1));
        assert!((std - 5f64.sqrt()).abs() < 1e-12);
    }
}
