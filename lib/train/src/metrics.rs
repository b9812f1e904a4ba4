//! Throughput accounting: training FLOPs per token by Megatron's formula
//! (`megatron/training/training.py num_floating_point_operations`, MLA + MoE branch), MFU against
//! a named peak, and peak memory.

use openseek_model::Config;

/// Megatron pads the vocabulary to a multiple of this (`make_vocab_size_divisible_by`, TP 1).
pub const VOCAB_PAD: i64 = 64;

/// H100 SXM dense bf16 peak, the MFU basis unless the config names another.
pub const H100_BF16_PEAK_TFLOPS: f64 = 989.0;

/// Forward + backward FLOPs per token at sequence length `seq` (no recompute), Megatron's formula,
/// with `mtp_depths` multi-token-prediction depths computed (0 when the MTP loss is off): as
/// Megatron counts them, each a decoder layer (MoE or dense as its layer index says), its norms and
/// `eh_proj` (3h + 2h² per token), and one more pass through the head.
pub fn flops_per_token(cfg: &Config, seq: i64, mtp_depths: i64) -> f64 {
    let h = cfg.hidden_size as f64;
    let count = cfg.num_hidden_layers + mtp_depths;
    let layers = count as f64;
    let moe_layers = (0..count).filter(|&i| cfg.is_moe_layer(i)).count() as f64;
    let dense_layers = layers - moe_layers;
    let swiglu = 1.5;
    let shared = (cfg.moe_intermediate_size * cfg.n_shared_experts) as f64;
    let mlp = 12.0
        * layers
        * h
        * (cfg.intermediate_size as f64 * swiglu * dense_layers / layers
            + cfg.moe_intermediate_size as f64 * cfg.num_experts_per_tok as f64 * swiglu * moe_layers / layers
            + shared * swiglu * moe_layers / layers);
    let heads = cfg.num_attention_heads as f64;
    let (nope, rope, v) = (cfg.qk_nope_head_dim as f64, cfg.qk_rope_head_dim as f64, cfg.v_head_dim as f64);
    let q_term = match cfg.q_lora_rank {
        None => h * heads * (nope + rope),
        Some(r) => r as f64 * (h + heads * (nope + rope) + 1.0),
    };
    let s = seq as f64;
    let attn = 6.0
        * layers
        * (q_term
            + cfg.kv_lora_rank as f64 * (h + heads * (nope + v) + 1.0)
            + h * rope
            + heads * v * h
            + s * heads * (nope + rope) / 2.0
            + s * heads * v / 2.0);
    let depths = mtp_depths as f64;
    let mtp_projections = 6.0 * depths * (3.0 * h + 2.0 * h * h);
    let vocab = ((cfg.vocab_size + VOCAB_PAD - 1) / VOCAB_PAD * VOCAB_PAD) as f64;
    let logits = 6.0 * h * vocab * (depths + 1.0);
    mlp + attn + mtp_projections + logits
}

/// The process' peak resident memory (VmHWM) in bytes, if the kernel reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Device memory in use on the current CUDA device (total - free from `cudaMemGetInfo`: PyTorch's
/// allocator reserve plus the CUDA context), through the CUDA runtime libtorch already loaded.
pub fn cuda_memory_in_use_bytes() -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    static FUNC: std::sync::OnceLock<Option<MemGetInfo>> = std::sync::OnceLock::new();
    let f = FUNC.get_or_init(|| {
        for name in [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"] {
            // SAFETY: dlopen/dlsym with valid C strings; the symbol has cudaMemGetInfo's signature.
            unsafe {
                let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if !h.is_null() {
                    let sym = libc::dlsym(h, c"cudaMemGetInfo".as_ptr());
                    if !sym.is_null() {
                        return Some(std::mem::transmute::<*mut libc::c_void, MemGetInfo>(sym));
                    }
                }
            }
        }
        None
    });
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two valid out-pointers.
    let rc = unsafe { (f.as_ref()?)(&mut free, &mut total) };
    (rc == 0).then_some((total - free) as u64)
}

/// Wait for the device, so that wall-clock times measure the work (a no-op on the CPU).
pub fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openseek_small_v1_is_2_614_gflop_per_token_at_4096() {
        let cfg = Config::from_json(serde_json::json!({
            "model_type": "deepseek_v3", "vocab_size": 151851, "hidden_size": 1280, "num_hidden_layers": 6,
            "num_attention_heads": 10, "num_key_value_heads": 10, "q_lora_rank": null, "kv_lora_rank": 512,
            "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "intermediate_size": 7168,
            "moe_intermediate_size": 896, "n_routed_experts": 64, "num_experts_per_tok": 6, "n_shared_experts": 2,
            "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1
        }))
        .unwrap();
        // MODEL.md: MLP 0.991 + attention 0.457 + logits 1.166 GFLOP.
        let mlp = 12.0 * 1280.0 * (7168.0 * 1.5 + 5.0 * (896.0 * 6.0 * 1.5 + 1792.0 * 1.5));
        let attn = 36.0 * (1280.0 * 10.0 * 192.0 + 512.0 * 3841.0 + 1280.0 * 64.0 + 1280.0 * 1280.0 + 4096.0 * 960.0 + 4096.0 * 640.0);
        let logits = 6.0 * 1280.0 * 151872.0;
        let f = flops_per_token(&cfg, 4096, 0);
        assert!((f - (mlp + attn + logits)).abs() < 1.0, "{f} vs {}", mlp + attn + logits);
        assert!((f / 1e9 - 2.614).abs() < 0.001, "{f}");
        // With OpenSeek's one MTP depth: one more MoE layer, its norms and eh_proj, one more head.
        let moe_layer = 12.0 * 1280.0 * (896.0 * 6.0 * 1.5 + 1792.0 * 1.5) + attn / 6.0;
        let extra = moe_layer + 6.0 * (3.0 * 1280.0 + 2.0 * 1280.0 * 1280.0) + logits;
        let g = flops_per_token(&cfg, 4096, 1);
        assert!((g - f - extra).abs() < 1.0, "{g} vs {}", f + extra);
    }
}
