//! The Hugging Face side: `config.json` (DeepSeek-V3) derived from Megatron's `args` and the
//! layers the checkpoint actually holds, `generation_config.json`, and the shape every HF tensor
//! must have under that config (each converted tensor is checked against it).

use serde_json::{json, Value as Json};

use openseek_common::Failure;

use crate::checkpoint::Checkpoint;
use crate::pickle::Value;

/// What the HF config needs, read from `args`.
#[derive(Debug, Clone)]
pub struct Shape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
    pub intermediate: usize,
    pub moe_intermediate: usize,
    pub experts: usize,
    pub shared_intermediate: usize,
    pub first_k_dense: usize,
    pub tied: bool,
    /// Multi-token-prediction layers (HF layers `layers..layers + mtp`).
    pub mtp: usize,
}

fn get_int(args: &Value, name: &str) -> Option<usize> {
    args.get(name).and_then(|v| v.as_int()).filter(|v| *v >= 0).map(|v| v as usize)
}

fn need(args: &Value, name: &str, what: &str) -> Result<usize, Failure> {
    get_int(args, name).ok_or_else(|| Failure::data(format!("{what}: args.{name} is missing; it is needed for config.json")))
}

impl Shape {
    /// Read the model shape from the checkpoint's args; `vocab` is the true vocabulary size.
    pub fn from_checkpoint(ck: &Checkpoint, vocab: usize) -> Result<Shape, Failure> {
        let a = &ck.args;
        let what = ck.dir.display().to_string();
        if a.get("multi_latent_attention").and_then(|v| v.as_int()).is_none_or(|v| v == 0) {
            return Err(Failure::data(format!("{what}: args.multi_latent_attention is not set: not a DeepSeek-V3 (MLA) checkpoint")));
        }
        if let Some(f) = a.get("moe_router_score_function").and_then(|v| v.as_str().map(String::from)) {
            if f != "sigmoid" {
                return Err(Failure::data(format!("{what}: router score function {f:?}: DeepSeek-V3 routes with sigmoid scores")));
            }
        }
        let layers = need(a, "num_layers", &what)?;
        let has_router = |l: usize| ck.entries.iter().any(|e| e.key == format!("decoder.layers.{l}.mlp.router.weight"));
        let first_k_dense = (0..layers).take_while(|l| !has_router(*l)).count();
        if let Some(l) = (first_k_dense..layers).find(|l| !has_router(*l)) {
            return Err(Failure::data(format!(
                "{what}: layer {l} is dense after MoE layers; DeepSeek-V3 configs express only the first k layers dense"
            )));
        }
        let mtp = ck.entries.iter().filter_map(|e| crate::mapping::mtp_layer(&e.key)).map(|(k, _)| k + 1).max().unwrap_or(0);
        if let Some(declared) = get_int(a, "mtp_num_layers").filter(|n| *n != mtp) {
            return Err(Failure::data(format!("{what}: args.mtp_num_layers is {declared}, but the checkpoint holds {mtp} MTP layer(s)")));
        }
        // DeepSeek-V3 configs make layer i MoE when i >= first_k_dense_replace, MTP layers included.
        let has_mtp_router = |k: usize| ck.entries.iter().any(|e| e.key == format!("mtp.layers.{k}.transformer_layer.mlp.router.weight"));
        if let Some(k) = (0..mtp).find(|k| has_mtp_router(*k) != (layers + k >= first_k_dense && first_k_dense < layers)) {
            return Err(Failure::data(format!(
                "{what}: MTP layer {k} is {} while the decoder's last layer is {}; a DeepSeek-V3 config cannot express that",
                if has_mtp_router(k) { "MoE" } else { "dense" },
                if first_k_dense < layers { "MoE" } else { "dense" }
            )));
        }
        let moe_intermediate = get_int(a, "moe_ffn_hidden_size").unwrap_or(0);
        Ok(Shape {
            vocab,
            hidden: need(a, "hidden_size", &what)?,
            layers,
            heads: need(a, "num_attention_heads", &what)?,
            q_lora_rank: get_int(a, "q_lora_rank"),
            kv_lora_rank: need(a, "kv_lora_rank", &what)?,
            qk_nope: need(a, "qk_head_dim", &what)?,
            qk_rope: need(a, "qk_pos_emb_head_dim", &what)?,
            v_head: need(a, "v_head_dim", &what)?,
            intermediate: need(a, "ffn_hidden_size", &what)?,
            moe_intermediate,
            experts: get_int(a, "num_experts").unwrap_or(0),
            shared_intermediate: get_int(a, "moe_shared_expert_intermediate_size").unwrap_or(0),
            first_k_dense,
            tied: crate::checkpoint::tied_embeddings(a),
            mtp,
        })
    }

    /// The shape an HF tensor must have, or None for a name this model does not have.
    pub fn expected(&self, name: &str) -> Option<Vec<usize>> {
        let h = self.hidden;
        let qk = self.qk_nope + self.qk_rope;
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => return Some(vec![self.vocab, h]),
            "model.norm.weight" => return Some(vec![h]),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (l, rest) = rest.split_once('.')?;
        let l: usize = l.parse().ok()?;
        if l >= self.layers + self.mtp {
            return None;
        }
        if l >= self.layers {
            match rest {
                "enorm.weight" | "hnorm.weight" | "shared_head.norm.weight" => return Some(vec![h]),
                "eh_proj.weight" => return Some(vec![h, 2 * h]),
                "embed_tokens.weight" | "shared_head.head.weight" => return Some(vec![self.vocab, h]),
                _ => {}
            }
        }
        let moe = l >= self.first_k_dense && self.first_k_dense < self.layers;
        let shared = self.shared_intermediate;
        let (mi, ex) = (self.moe_intermediate, self.experts);
        Some(match rest {
            "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
            "self_attn.q_proj.weight" if self.q_lora_rank.is_none() => vec![self.heads * qk, h],
            "self_attn.q_a_proj.weight" => vec![self.q_lora_rank?, h],
            "self_attn.q_a_layernorm.weight" => vec![self.q_lora_rank?],
            "self_attn.q_b_proj.weight" => vec![self.heads * qk, self.q_lora_rank?],
            "self_attn.kv_a_proj_with_mqa.weight" => vec![self.kv_lora_rank + self.qk_rope, h],
            "self_attn.kv_a_layernorm.weight" => vec![self.kv_lora_rank],
            "self_attn.kv_b_proj.weight" => vec![self.heads * (self.qk_nope + self.v_head), self.kv_lora_rank],
            "self_attn.o_proj.weight" => vec![h, self.heads * self.v_head],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" if !moe => vec![self.intermediate, h],
            "mlp.down_proj.weight" if !moe => vec![h, self.intermediate],
            "mlp.gate.weight" if moe => vec![ex, h],
            "mlp.gate.e_score_correction_bias" if moe => vec![ex],
            "mlp.shared_experts.gate_proj.weight" | "mlp.shared_experts.up_proj.weight" if moe && shared > 0 => vec![shared, h],
            "mlp.shared_experts.down_proj.weight" if moe && shared > 0 => vec![h, shared],
            r if moe => {
                let (e, w) = r.strip_prefix("mlp.experts.")?.split_once('.')?;
                if e.parse::<usize>().ok()? >= ex {
                    return None;
                }
                match w {
                    "gate_proj.weight" | "up_proj.weight" => vec![mi, h],
                    "down_proj.weight" => vec![h, mi],
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

/// `config.json` for transformers' `DeepseekV3ForCausalLM`.
pub fn config_json(ck: &Checkpoint, s: &Shape, torch_dtype: &str, bos: Option<i64>, eos: Option<i64>) -> Json {
    let a = &ck.args;
    let f = |n: &str, d: f64| a.get(n).and_then(|v| v.as_f64()).unwrap_or(d);
    let i = |n: &str, d: usize| get_int(a, n).filter(|v| *v > 0).unwrap_or(d);
    let rope_type = a.get("rope_type").and_then(|v| v.as_str().map(String::from)).unwrap_or_else(|| "yarn".into());
    let rope_scaling = if rope_type == "yarn" {
        json!({
            "type": "yarn",
            "factor": f("rotary_scaling_factor", 40.0),
            "original_max_position_embeddings": i("original_max_position_embeddings", 4096),
            "beta_fast": f("beta_fast", 32.0),
            "beta_slow": f("beta_slow", 1.0),
            "mscale": f("mscale", 1.0),
            "mscale_all_dim": f("mscale_all_dim", 0.0),
        })
    } else {
        Json::Null
    };
    let topk = i("moe_router_topk", 2);
    json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "moe_intermediate_size": s.moe_intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.heads,
        "n_shared_experts": s.shared_intermediate.checked_div(s.moe_intermediate).unwrap_or(0),
        "n_routed_experts": s.experts,
        "num_experts_per_tok": topk,
        "routed_scaling_factor": f("moe_router_topk_scaling_factor", 1.0),
        "n_group": i("moe_router_num_groups", 1),
        "topk_group": i("moe_router_group_topk", 1),
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": topk > 1,
        "first_k_dense_replace": s.first_k_dense,
        "moe_layer_freq": 1,
        "q_lora_rank": s.q_lora_rank,
        "kv_lora_rank": s.kv_lora_rank,
        "qk_nope_head_dim": s.qk_nope,
        "qk_rope_head_dim": s.qk_rope,
        "v_head_dim": s.v_head,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "rms_norm_eps": f("norm_epsilon", 1e-5),
        "rope_theta": f("rotary_base", 10000.0),
        "rope_scaling": rope_scaling,
        "rope_interleave": true,
        "max_position_embeddings": get_int(a, "max_position_embeddings").or_else(|| get_int(a, "seq_length")).unwrap_or(4096),
        "tie_word_embeddings": s.tied,
        "num_nextn_predict_layers": s.mtp,
        "initializer_range": f("init_method_std", 0.02),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "use_cache": true,
        "torch_dtype": torch_dtype,
    })
}

pub fn generation_config_json(bos: Option<i64>, eos: Option<i64>) -> Json {
    json!({"_from_model_config": true, "bos_token_id": bos, "eos_token_id": eos})
}
