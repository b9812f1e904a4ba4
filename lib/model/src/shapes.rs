//! Every tensor of a model by its Hugging Face name, with its shape, from the config alone: the
//! main model's (routed experts fused, the model's own layout), then each multi-token-prediction
//! depth's (`crate::mtp`) under `model.layers.{num_hidden_layers + k}`. Checkpoints are checked
//! against these names and fresh weights are drawn for them.

use crate::config::Config;

/// Every tensor of the model with its shape, HF names, fused experts (the model's own layout): the
/// main model, then each multi-token-prediction depth (`crate::mtp`).
pub fn expected_shapes(cfg: &Config) -> Vec<(String, Vec<i64>)> {
    let h = cfg.hidden_size;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for i in 0..cfg.num_hidden_layers {
        layer_shapes(cfg, i, &format!("model.layers.{i}"), &mut out);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    for k in 0..cfg.num_nextn_predict_layers as usize {
        let p = mtp_prefix(cfg, k);
        let [enorm, hnorm, eh_proj, head_norm] = mtp_own_shapes(cfg);
        for (name, shape) in [enorm, hnorm, eh_proj] {
            out.push((format!("{p}.{name}"), shape));
        }
        layer_shapes(cfg, cfg.num_hidden_layers + k as i64, &p, &mut out);
        out.push((format!("{p}.{}", head_norm.0), head_norm.1));
    }
    out
}

/// The tensors of decoder layer `i` under `p`, with their shapes.
fn layer_shapes(cfg: &Config, i: i64, p: &str, out: &mut Vec<(String, Vec<i64>)>) {
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let mut put = |name: &str, shape: Vec<i64>| out.push((format!("{p}.{name}"), shape));
    put("input_layernorm.weight", vec![h]);
    put("post_attention_layernorm.weight", vec![h]);
    let q_out = heads * cfg.qk_head_dim();
    match cfg.q_lora_rank {
        None => put("self_attn.q_proj.weight", vec![q_out, h]),
        Some(r) => {
            put("self_attn.q_a_proj.weight", vec![r, h]);
            if cfg.attention_bias {
                put("self_attn.q_a_proj.bias", vec![r]);
            }
            put("self_attn.q_a_layernorm.weight", vec![r]);
            put("self_attn.q_b_proj.weight", vec![q_out, r]);
        }
    }
    let kv_a = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
    put("self_attn.kv_a_proj_with_mqa.weight", vec![kv_a, h]);
    put("self_attn.kv_a_layernorm.weight", vec![cfg.kv_lora_rank]);
    put("self_attn.kv_b_proj.weight", vec![heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank]);
    put("self_attn.o_proj.weight", vec![h, heads * cfg.v_head_dim]);
    if cfg.attention_bias {
        put("self_attn.kv_a_proj_with_mqa.bias", vec![kv_a]);
        put("self_attn.o_proj.bias", vec![h]);
    }
    if cfg.is_moe_layer(i) {
        let (e, inter) = (cfg.n_routed_experts, cfg.moe_intermediate_size);
        let shared = inter * cfg.n_shared_experts;
        put("mlp.gate.weight", vec![e, h]);
        put("mlp.gate.e_score_correction_bias", vec![e]);
        put("mlp.experts.gate_up_proj", vec![e, 2 * inter, h]);
        put("mlp.experts.down_proj", vec![e, h, inter]);
        put("mlp.shared_experts.gate_proj.weight", vec![shared, h]);
        put("mlp.shared_experts.up_proj.weight", vec![shared, h]);
        put("mlp.shared_experts.down_proj.weight", vec![h, shared]);
    } else {
        let inter = cfg.intermediate_size;
        put("mlp.gate_proj.weight", vec![inter, h]);
        put("mlp.up_proj.weight", vec![inter, h]);
        put("mlp.down_proj.weight", vec![h, inter]);
    }
}

/// The weight prefix of depth `k` (0-based): `model.layers.{num_hidden_layers + k}`.
pub fn mtp_prefix(cfg: &Config, k: usize) -> String {
    format!("model.layers.{}", cfg.num_hidden_layers + k as i64)
}

/// Whether `name` is a tensor of an MTP depth the config declares.
pub fn is_mtp_name(cfg: &Config, name: &str) -> bool {
    layer_index(name).is_some_and(|i| i >= cfg.num_hidden_layers && i < cfg.num_hidden_layers + cfg.num_nextn_predict_layers)
}

/// N of a `model.layers.N.…` name.
pub fn layer_index(name: &str) -> Option<i64> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// The MTP-only tensors of a depth (beside its decoder layer's), with their shapes.
pub fn mtp_own_shapes(cfg: &Config) -> [(&'static str, Vec<i64>); 4] {
    let h = cfg.hidden_size;
    [("enorm.weight", vec![h]), ("hnorm.weight", vec![h]), ("eh_proj.weight", vec![h, 2 * h]), ("shared_head.norm.weight", vec![h])]
}
