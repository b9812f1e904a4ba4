//! Megatron parameter names to Hugging Face DeepSeek-V3 names, and how tensor-parallel ranks split
//! each parameter. Megatron keys here are *global*: layer numbers counted over the whole model and
//! experts numbered over all expert-parallel ranks, written `mlp.experts.{e}.linear_fc{1,2}.weight`
//! whatever the expert layout they were read from (per-expert `local_experts.{k}`, TE grouped GEMM
//! `linear_fc1.weight{k}`, torch_dist's stacked `experts.experts`). Both Megatron's local layer spec
//! and the Transformer Engine spec (norms fused into the next linear as `layer_norm_weight`) map.

/// Which rows of the merged Megatron tensor an HF tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// The first half of the rows (the gate of a fused `linear_fc1`).
    Gate,
    /// The second half of the rows (the up projection).
    Up,
    /// The first `vocab` rows (embedding and output layer without Megatron's vocab padding).
    Vocab,
}

/// How the tensor-parallel ranks of a parameter are put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Every rank holds all of it.
    Replicated,
    /// Concatenated along this dimension.
    Dim(usize),
    /// Column-parallel with the ranks' rows split, unless every rank holds the full tensor
    /// (Transformer Engine's `parallel_mode="duplicated"` down projections of MLA).
    DimOrDuplicated(usize),
    /// Fused SwiGLU `linear_fc1`: each rank holds [gate_r; up_r]; the whole is [gate; up].
    GateUp,
}

/// What becomes of a Megatron key.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// HF tensors made from it.
    Hf(Vec<(String, Part)>),
    /// Deliberately not converted, with the reason.
    Ignored(&'static str),
    /// Neither mapped nor known to be ignorable.
    Unknown,
}

/// The HF tensors of a global Megatron key; `tied`: the output layer shares the embedding.
pub fn target(key: &str, tied: bool) -> Target {
    if key.ends_with("._extra_state") || key.contains("._extra_state/") {
        return Target::Ignored("`_extra_state` (module metadata, no weights)");
    }
    let one = |name: String| Target::Hf(vec![(name, Part::Whole)]);
    match key {
        "embedding.word_embeddings.weight" => return Target::Hf(vec![("model.embed_tokens.weight".into(), Part::Vocab)]),
        "decoder.final_layernorm.weight" => return one("model.norm.weight".into()),
        "output_layer.weight" if tied => return Target::Ignored("output layer tied to the embedding"),
        "output_layer.weight" => return Target::Hf(vec![("lm_head.weight".into(), Part::Vocab)]),
        _ => {}
    }
    let Some(rest) = key.strip_prefix("decoder.layers.") else { return Target::Unknown };
    let Some((layer, rest)) = rest.split_once('.') else { return Target::Unknown };
    if layer.parse::<usize>().is_err() {
        return Target::Unknown;
    }
    let p = format!("model.layers.{layer}.");
    let gate_up = |base: String| Target::Hf(vec![(format!("{base}gate_proj.weight"), Part::Gate), (format!("{base}up_proj.weight"), Part::Up)]);
    if let Some(expert) = rest.strip_prefix("mlp.experts.") {
        let Some((e, w)) = expert.split_once('.') else { return Target::Unknown };
        if e.parse::<usize>().is_err() {
            return Target::Unknown;
        }
        return match w {
            "linear_fc1.weight" => gate_up(format!("{p}mlp.experts.{e}.")),
            "linear_fc2.weight" => one(format!("{p}mlp.experts.{e}.down_proj.weight")),
            _ => Target::Unknown,
        };
    }
    let hf = match rest {
        "input_layernorm.weight" | "self_attention.linear_q_proj.layer_norm_weight" | "self_attention.linear_q_down_proj.layer_norm_weight" => "input_layernorm.weight",
        "self_attention.linear_q_proj.weight" => "self_attn.q_proj.weight",
        "self_attention.linear_q_down_proj.weight" => "self_attn.q_a_proj.weight",
        "self_attention.q_layernorm.weight" | "self_attention.linear_q_up_proj.layer_norm_weight" => "self_attn.q_a_layernorm.weight",
        "self_attention.linear_q_up_proj.weight" => "self_attn.q_b_proj.weight",
        "self_attention.linear_kv_down_proj.weight" => "self_attn.kv_a_proj_with_mqa.weight",
        "self_attention.kv_layernorm.weight" | "self_attention.linear_kv_up_proj.layer_norm_weight" => "self_attn.kv_a_layernorm.weight",
        "self_attention.linear_kv_up_proj.weight" => "self_attn.kv_b_proj.weight",
        "self_attention.linear_proj.weight" => "self_attn.o_proj.weight",
        "pre_mlp_layernorm.weight" | "mlp.linear_fc1.layer_norm_weight" => "post_attention_layernorm.weight",
        "mlp.linear_fc1.weight" => return gate_up(format!("{p}mlp.")),
        "mlp.linear_fc2.weight" => "mlp.down_proj.weight",
        "mlp.router.weight" => "mlp.gate.weight",
        "mlp.router.expert_bias" => "mlp.gate.e_score_correction_bias",
        "mlp.router.local_tokens_per_expert" => return Target::Ignored("router token counts (training statistics)"),
        "mlp.shared_experts.linear_fc1.weight" => return gate_up(format!("{p}mlp.shared_experts.")),
        "mlp.shared_experts.linear_fc2.weight" => "mlp.shared_experts.down_proj.weight",
        _ => return Target::Unknown,
    };
    one(format!("{p}{hf}"))
}

/// How tensor-parallel ranks split a global Megatron key.
pub fn merge(key: &str) -> Merge {
    let last = key.rsplit('.').nth(1).unwrap_or("");
    if key.ends_with("layer_norm_weight") || key.ends_with("layer_norm_bias") {
        return Merge::Replicated;
    }
    match last {
        "word_embeddings" | "output_layer" | "linear_q_proj" | "linear_q_up_proj" | "linear_kv_up_proj" => Merge::Dim(0),
        "linear_q_down_proj" | "linear_kv_down_proj" => Merge::DimOrDuplicated(0),
        "linear_proj" | "linear_fc2" => Merge::Dim(1),
        "linear_fc1" => Merge::GateUp,
        _ => Merge::Replicated,
    }
}

/// Whether a global key belongs to a routed expert (split by expert-tensor-parallel ranks).
pub fn is_expert(key: &str) -> bool {
    key.contains(".mlp.experts.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: Target) -> Vec<String> {
        match t {
            Target::Hf(v) => v.into_iter().map(|(n, _)| n).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_and_te_spec_names_map_to_the_same_hf_names() {
        assert_eq!(names(target("decoder.layers.3.self_attention.kv_layernorm.weight", false)), ["model.layers.3.self_attn.kv_a_layernorm.weight"]);
        assert_eq!(names(target("decoder.layers.3.self_attention.linear_kv_up_proj.layer_norm_weight", false)), ["model.layers.3.self_attn.kv_a_layernorm.weight"]);
        assert_eq!(names(target("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", false)), ["model.layers.0.post_attention_layernorm.weight"]);
        assert_eq!(
            names(target("decoder.layers.2.mlp.experts.17.linear_fc1.weight", false)),
            ["model.layers.2.mlp.experts.17.gate_proj.weight", "model.layers.2.mlp.experts.17.up_proj.weight"]
        );
        assert_eq!(names(target("decoder.layers.2.mlp.router.expert_bias", false)), ["model.layers.2.mlp.gate.e_score_correction_bias"]);
    }

    #[test]
    fn tied_output_extra_state_and_strangers() {
        assert_eq!(target("output_layer.weight", true), Target::Ignored("output layer tied to the embedding"));
        assert_eq!(names(target("output_layer.weight", false)), ["lm_head.weight"]);
        assert!(matches!(target("decoder.layers.1.mlp.linear_fc1._extra_state", false), Target::Ignored(_)));
        assert_eq!(target("mtp.layers.0.enorm.weight", false), Target::Unknown);
        assert_eq!(target("decoder.layers.1.self_attention.linear_qkv.weight", false), Target::Unknown);
    }

    #[test]
    fn split_dimensions() {
        assert_eq!(merge("decoder.layers.0.self_attention.linear_proj.weight"), Merge::Dim(1));
        assert_eq!(merge("decoder.layers.0.self_attention.linear_q_proj.weight"), Merge::Dim(0));
        assert_eq!(merge("decoder.layers.0.self_attention.linear_kv_down_proj.weight"), Merge::DimOrDuplicated(0));
        assert_eq!(merge("decoder.layers.0.self_attention.linear_kv_up_proj.layer_norm_weight"), Merge::Replicated);
        assert_eq!(merge("decoder.layers.1.mlp.experts.5.linear_fc1.weight"), Merge::GateUp);
        assert_eq!(merge("decoder.layers.1.mlp.shared_experts.linear_fc2.weight"), Merge::Dim(1));
        assert_eq!(merge("embedding.word_embeddings.weight"), Merge::Dim(0));
        assert_eq!(merge("decoder.layers.1.mlp.router.weight"), Merge::Replicated);
    }
}
