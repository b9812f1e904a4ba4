//! The model configuration, read from a Hugging Face `config.json` (`model_type` deepseek_v3).
//! Missing fields take transformers' `DeepseekV3Config` defaults, so a config means what it means there.

use openseek_common::Failure;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// How positions are encoded: plain RoPE, or YaRN-scaled RoPE (DeepSeek-V3's long-context variant).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Yarn {
        factor: f64,
        original_max_position_embeddings: i64,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

/// Every field the model needs, with HF names.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub moe_intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub n_shared_experts: i64,
    pub n_routed_experts: i64,
    pub num_experts_per_tok: i64,
    pub routed_scaling_factor: f64,
    pub n_group: i64,
    pub topk_group: i64,
    pub norm_topk_prob: bool,
    pub first_k_dense_replace: i64,
    pub q_lora_rank: Option<i64>,
    pub kv_lora_rank: i64,
    pub qk_nope_head_dim: i64,
    pub qk_rope_head_dim: i64,
    pub v_head_dim: i64,
    pub attention_bias: bool,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub rope_interleave: bool,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// DeepSeek-V3 multi-token-prediction (MTP) depths, stored as layers after the main ones
    /// (`model.layers.{num_hidden_layers + k - 1}`, k = 1..=this); trained by os-train, never used
    /// by the forward pass. 0 when the config omits it: only layers a config declares are MTP.
    pub num_nextn_predict_layers: i64,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub initializer_range: f64,
    /// The JSON object as read, written back unchanged by `save`.
    pub raw: Value,
}

/// The JSON fields, with transformers' defaults (DeepseekV3Config).
#[derive(Deserialize)]
#[serde(default)]
struct Raw {
    model_type: Option<String>,
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    moe_intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    n_shared_experts: i64,
    n_routed_experts: i64,
    num_experts_per_tok: Option<i64>,
    routed_scaling_factor: f64,
    n_group: Option<i64>,
    topk_group: Option<i64>,
    norm_topk_prob: Option<bool>,
    first_k_dense_replace: Option<i64>,
    q_lora_rank: Option<i64>,
    kv_lora_rank: i64,
    qk_nope_head_dim: i64,
    qk_rope_head_dim: i64,
    v_head_dim: Option<i64>,
    attention_bias: bool,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    rope_interleave: Option<bool>,
    max_position_embeddings: i64,
    tie_word_embeddings: bool,
    #[serde(alias = "num_mtp_layers")]
    num_nextn_predict_layers: Option<i64>,
    hidden_act: String,
    topk_method: Option<String>,
    scoring_func: Option<String>,
    bos_token_id: Option<i64>,
    eos_token_id: Value,
    pad_token_id: Option<i64>,
    initializer_range: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            model_type: None,
            vocab_size: 129280,
            hidden_size: 7168,
            intermediate_size: 18432,
            moe_intermediate_size: 2048,
            num_hidden_layers: 61,
            num_attention_heads: 128,
            // transformers defaults to 128; MLA needs it equal to the heads, so a missing value means that.
            num_key_value_heads: None,
            n_shared_experts: 1,
            n_routed_experts: 256,
            num_experts_per_tok: Some(8),
            routed_scaling_factor: 2.5,
            n_group: Some(8),
            topk_group: Some(4),
            norm_topk_prob: Some(true),
            first_k_dense_replace: Some(3),
            q_lora_rank: Some(1536),
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: Some(128),
            attention_bias: false,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            rope_interleave: Some(true),
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            // transformers 5 defaults `num_mtp_layers` (its alias) to 1 but never builds MTP layers
            // into the model it loads; here a config that does not declare MTP layers has none, so
            // weights past num_hidden_layers are unexpected rather than silently taken for MTP.
            num_nextn_predict_layers: None,
            hidden_act: "silu".into(),
            topk_method: None,
            scoring_func: None,
            bos_token_id: Some(0),
            eos_token_id: Value::from(1),
            pad_token_id: None,
            initializer_range: 0.02,
        }
    }
}

impl Config {
    /// Read `DIR/config.json` (or a path to the file itself).
    pub fn load(path: &Path) -> Result<Config, Failure> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Failure::no_input(format!("cannot read the model config {}: {e}", file.display())))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Failure::data(format!("{}: not valid JSON: {e}", file.display())))?;
        Config::from_json(value).map_err(|e| Failure::config(format!("{}: {e}", file.display())))
    }

    /// Interpret a config.json object; the error says which field is wrong.
    pub fn from_json(value: Value) -> Result<Config, String> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| format!("config field: {e}"))?;
        if let Some(t) = &raw.model_type {
            if t != "deepseek_v3" {
                return Err(format!("model_type is {t:?}; only \"deepseek_v3\" (OpenSeek-Small-v1) is supported"));
            }
        }
        if raw.hidden_act != "silu" {
            return Err(format!("hidden_act is {:?}; only \"silu\" is supported", raw.hidden_act));
        }
        if let Some(m) = raw.topk_method.as_deref().filter(|m| *m != "noaux_tc") {
            return Err(format!("topk_method is {m:?}; only \"noaux_tc\" (sigmoid router with correction bias) is supported"));
        }
        if let Some(s) = raw.scoring_func.as_deref().filter(|s| *s != "sigmoid") {
            return Err(format!("scoring_func is {s:?}; only \"sigmoid\" is supported"));
        }
        let (rope_theta, rope_scaling) = parse_rope(&raw)?;
        let eos_token_ids = match &raw.eos_token_id {
            Value::Null => vec![],
            Value::Number(n) => vec![n.as_i64().ok_or("eos_token_id is not an integer")?],
            Value::Array(a) => a.iter().map(|v| v.as_i64().ok_or("eos_token_id holds a non-integer")).collect::<Result<_, _>>()?,
            other => return Err(format!("eos_token_id is {other}; expected an integer or a list")),
        };
        let cfg = Config {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            moe_intermediate_size: raw.moe_intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            n_shared_experts: raw.n_shared_experts,
            n_routed_experts: raw.n_routed_experts,
            num_experts_per_tok: raw.num_experts_per_tok.unwrap_or(8),
            routed_scaling_factor: raw.routed_scaling_factor,
            n_group: raw.n_group.unwrap_or(1),
            topk_group: raw.topk_group.unwrap_or(1),
            norm_topk_prob: raw.norm_topk_prob.unwrap_or(true),
            first_k_dense_replace: raw.first_k_dense_replace.unwrap_or(0),
            q_lora_rank: raw.q_lora_rank,
            kv_lora_rank: raw.kv_lora_rank,
            qk_nope_head_dim: raw.qk_nope_head_dim,
            qk_rope_head_dim: raw.qk_rope_head_dim,
            v_head_dim: raw.v_head_dim.unwrap_or(128),
            attention_bias: raw.attention_bias,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_interleave: raw.rope_interleave.unwrap_or(true),
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            num_nextn_predict_layers: raw.num_nextn_predict_layers.unwrap_or(0),
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
            pad_token_id: raw.pad_token_id,
            initializer_range: raw.initializer_range,
            raw: value,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("v_head_dim", self.v_head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        let not_negative = [
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("n_routed_experts", self.n_routed_experts),
            ("n_shared_experts", self.n_shared_experts),
            ("first_k_dense_replace", self.first_k_dense_replace),
            ("num_nextn_predict_layers", self.num_nextn_predict_layers),
        ];
        for (name, v) in positive {
            if v < 1 {
                return Err(format!("{name} is {v}; it must be at least 1"));
            }
        }
        for (name, v) in not_negative {
            if v < 0 {
                return Err(format!("{name} is {v}; it must not be negative"));
            }
        }
        if let Some(r) = self.q_lora_rank.filter(|r| *r < 1) {
            return Err(format!("q_lora_rank is {r}; it must be at least 1 (or null for a plain q_proj)"));
        }
        if self.qk_head_dim() < 1 {
            return Err("qk_nope_head_dim + qk_rope_head_dim is 0; query/key heads need a width".into());
        }
        if self.n_routed_experts > 0 && self.moe_intermediate_size < 1 {
            return Err(format!("moe_intermediate_size is {}; it must be at least 1 with routed experts", self.moe_intermediate_size));
        }
        for (name, v) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} is {v}; it must be a positive number"));
            }
        }
        for (name, v) in [("routed_scaling_factor", self.routed_scaling_factor), ("initializer_range", self.initializer_range)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} is {v}; it must be a finite number, not negative"));
            }
        }
        if self.num_key_value_heads != self.num_attention_heads {
            return Err(format!(
                "num_key_value_heads {} differs from num_attention_heads {}; MLA has one KV head per query head",
                self.num_key_value_heads, self.num_attention_heads
            ));
        }
        if self.qk_rope_head_dim % 2 != 0 {
            return Err(format!("qk_rope_head_dim {} must be even", self.qk_rope_head_dim));
        }
        if self.n_group < 1 || self.n_routed_experts % self.n_group != 0 {
            return Err(format!("n_routed_experts {} is not divisible by n_group {}", self.n_routed_experts, self.n_group));
        }
        if self.topk_group < 1 || self.topk_group > self.n_group {
            return Err(format!("topk_group {} must be between 1 and n_group {}", self.topk_group, self.n_group));
        }
        if self.num_experts_per_tok < 1 || self.num_experts_per_tok > self.topk_group * (self.n_routed_experts / self.n_group) {
            return Err(format!(
                "num_experts_per_tok {} cannot be chosen from topk_group {} groups of {} experts",
                self.num_experts_per_tok,
                self.topk_group,
                self.n_routed_experts / self.n_group
            ));
        }
        Ok(())
    }

    /// Query/key head width: the un-rotated part plus the rotated part.
    pub fn qk_head_dim(&self) -> i64 {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Whether layer `i` uses the MoE block (else the dense MLP).
    pub fn is_moe_layer(&self, i: i64) -> bool {
        i >= self.first_k_dense_replace && self.n_routed_experts > 0
    }

    /// The softmax scale of attention: head_dim^-0.5, times YaRN's mscale² when `mscale_all_dim` is set.
    pub fn softmax_scale(&self) -> f64 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        match &self.rope_scaling {
            RopeScaling::Yarn { factor, mscale_all_dim: Some(m), .. } if *m != 0.0 => {
                let s = yarn_mscale(*factor, *m);
                base * s * s
            }
            _ => base,
        }
    }
}

/// YaRN's magnitude correction: 1 + 0.1·m·ln(scale) for scale > 1.
pub fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

/// `rope_parameters` (transformers 5) or `rope_scaling` (older configs), with `rope_theta` inside or beside.
fn parse_rope(raw: &Raw) -> Result<(f64, RopeScaling), String> {
    let params = raw.rope_scaling.as_ref().filter(|v| !v.is_null()).or(raw.rope_parameters.as_ref().filter(|v| !v.is_null()));
    let get = |k: &str| params.and_then(|p| p.get(k)).filter(|v| !v.is_null());
    let num = |k: &str| -> Result<Option<f64>, String> {
        get(k).map(|v| v.as_f64().ok_or(format!("rope field {k} is {v}; expected a number"))).transpose()
    };
    let theta = num("rope_theta")?.or(raw.rope_theta).unwrap_or(10000.0);
    let kind = get("rope_type").or(get("type")).and_then(|v| v.as_str()).unwrap_or("default");
    match kind {
        "default" => Ok((theta, RopeScaling::None)),
        "yarn" => {
            let original = num("original_max_position_embeddings")?.map(|v| v as i64).unwrap_or(raw.max_position_embeddings);
            let factor = match num("factor")? {
                Some(f) => f,
                None => raw.max_position_embeddings as f64 / original as f64,
            };
            let truncate = get("truncate").and_then(|v| v.as_bool()).unwrap_or(true);
            Ok((
                theta,
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: num("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                    beta_slow: num("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
                    mscale: num("mscale")?,
                    mscale_all_dim: num("mscale_all_dim")?,
                    attention_factor: num("attention_factor")?,
                    truncate,
                },
            ))
        }
        other => Err(format!("rope type {other:?} is not supported (only default and yarn)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> Value {
        json!({"model_type": "deepseek_v3", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2,
               "topk_group": 1, "q_lora_rank": null, "first_k_dense_replace": 1, "rope_theta": 1e6})
    }

    #[test]
    fn defaults_and_nulls_follow_transformers() {
        let c = Config::from_json(small()).unwrap();
        assert_eq!(c.q_lora_rank, None);
        assert_eq!(c.kv_lora_rank, 512);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert!(c.rope_interleave);
        assert_eq!(c.eos_token_ids, vec![1]);
        // No MTP layers unless declared (also under transformers' alias `num_mtp_layers`).
        assert_eq!(c.num_nextn_predict_layers, 0);
        let mut v = small();
        v["num_mtp_layers"] = json!(2);
        assert_eq!(Config::from_json(v).unwrap().num_nextn_predict_layers, 2);
        let mut v = small();
        v.as_object_mut().unwrap().remove("q_lora_rank");
        assert_eq!(Config::from_json(v).unwrap().q_lora_rank, Some(1536));
    }

    #[test]
    fn yarn_fields_parse_in_both_spellings() {
        for key in ["rope_scaling", "rope_parameters"] {
            let mut v = small();
            v[key] = json!({"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0});
            let c = Config::from_json(v).unwrap();
            match c.rope_scaling {
                RopeScaling::Yarn { factor, original_max_position_embeddings, mscale_all_dim, .. } => {
                    assert_eq!((factor, original_max_position_embeddings, mscale_all_dim), (40.0, 4096, Some(1.0)));
                }
                _ => panic!("yarn expected"),
            }
            let m = 0.1 * 40f64.ln() + 1.0;
            assert!((c.softmax_scale() - m * m / 192f64.sqrt()).abs() < 1e-12);
        }
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let mut v = small();
        v["topk_group"] = json!(3);
        assert!(Config::from_json(v).unwrap_err().contains("topk_group 3"));
        let mut v = small();
        v["model_type"] = json!("llama");
        assert!(Config::from_json(v).unwrap_err().contains("llama"));
        let mut v = small();
        v["rope_scaling"] = json!({"rope_type": "longrope"});
        assert!(Config::from_json(v).unwrap_err().contains("longrope"));
    }

    #[test]
    fn degenerate_sizes_are_refused_naming_the_field() {
        for (field, value, needle) in [
            ("kv_lora_rank", json!(0), "kv_lora_rank is 0"),
            ("intermediate_size", json!(0), "intermediate_size is 0"),
            ("num_hidden_layers", json!(0), "num_hidden_layers is 0"),
            ("hidden_size", json!(0), "hidden_size is 0"),
            ("hidden_size", json!(-64), "hidden_size is -64"),
            ("vocab_size", json!(-1), "vocab_size is -1"),
            ("num_nextn_predict_layers", json!(-1), "num_nextn_predict_layers is -1"),
            ("q_lora_rank", json!(0), "q_lora_rank is 0"),
            ("moe_intermediate_size", json!(0), "moe_intermediate_size is 0"),
            ("rms_norm_eps", json!(0.0), "rms_norm_eps is 0"),
            ("first_k_dense_replace", json!(-2), "first_k_dense_replace is -2"),
        ] {
            let mut v = small();
            v[field] = value;
            let err = Config::from_json(v).expect_err(field);
            assert!(err.contains(needle), "{field}: {err}");
        }
    }

    #[test]
    fn a_bad_config_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = small();
        v["kv_lora_rank"] = json!(0);
        std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
        let e = Config::load(dir.path()).unwrap_err();
        assert_eq!(e.code, openseek_common::ExitCode::Config);
        assert!(e.message.contains("config.json") && e.message.contains("kv_lora_rank is 0"), "{}", e.message);
    }
}
