//! Greedy continuation of token-id prompts with openseek-model, timed: the Rust side of
//! `bench/generate/generate.py`.
//!
//!   greedy MODEL_DIR PROMPTS_JSON OUT_JSON DEVICE(cpu|cuda) DTYPE(float32|bfloat16) BATCH MAX_NEW
//!
//! BATCH is the most sequences decoded together (continuous batching). PROMPTS_JSON is `[[ids]...]`; OUT_JSON gets `{"generated": [[ids]...], "seconds": …}` (generation
//! only, after a warm-up call; no EOS, so every continuation runs to MAX_NEW).

use openseek_model::generate::{greedy, GenerateOptions};
use openseek_model::tch::{Device, Kind};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(a.len(), 7, "usage: greedy MODEL_DIR PROMPTS_JSON OUT_JSON DEVICE DTYPE BATCH MAX_NEW");
    let device = if a[3] == "cuda" { Device::Cuda(0) } else { Device::Cpu };
    let kind = if a[4] == "bfloat16" { Kind::BFloat16 } else { Kind::Float };
    let model = openseek_model::load(std::path::Path::new(&a[0]), kind, device).unwrap_or_else(|e| panic!("{}", e.message));
    let prompts: Vec<Vec<i64>> = serde_json::from_str(&std::fs::read_to_string(&a[1]).unwrap()).unwrap();
    let mut opts = GenerateOptions::new(a[6].parse().unwrap(), vec![], a[5].parse().unwrap());
    if device.is_cuda() {
        opts.cache_bytes = 16 << 30;
        opts.prefill_tokens = 1 << 17;
    }
    let go_on = || -> Result<(), openseek_common::Failure> { Ok(()) };
    let warm = GenerateOptions::new(4, vec![], opts.batch_size);
    greedy(&model, &prompts[..opts.batch_size.min(prompts.len())], &warm, &mut |_, _| false, &go_on).unwrap();
    let start = Instant::now();
    let generated = greedy(&model, &prompts, &opts, &mut |_, _| false, &go_on).unwrap();
    if device.is_cuda() {
        openseek_model::tch::Cuda::synchronize(0);
    }
    let seconds = start.elapsed().as_secs_f64();
    std::fs::write(&a[2], serde_json::json!({"generated": generated, "seconds": seconds}).to_string()).unwrap();
}
