//! Weights for a model trained from scratch, as transformers' DeepSeek-V3 initialises them:
//! matrices and embeddings normal(0, std), norms one, the router's correction bias zero. Drawn on
//! the CPU from the seed, so a seed gives the same model on any device.

use openseek_model::checkpoint::expected_shapes;
use openseek_model::model::Weights;
use openseek_model::Config;
use tch::{Device, Kind, Tensor};

pub fn init_weights(cfg: &Config, std: f64, seed: u64, kind: Kind, device: Device) -> Weights {
    tch::manual_seed(seed as i64);
    let mut w = Weights::new();
    for (name, shape) in expected_shapes(cfg) {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else if name.ends_with("e_score_correction_bias") || name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else {
            Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * std
        };
        let k = if name.ends_with("e_score_correction_bias") { Kind::Float } else { kind };
        w.insert(name, t.to_kind(k).to_device(device));
    }
    w
}
