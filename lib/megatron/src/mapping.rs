//! Megatron parameter names to Hugging Face DeepSeek-V3 names, and how tensor-parallel ranks split
//! each parameter. Megatron keys here are *global*: layer numbers counted over the whole model and
//! experts numbered over all expert-parallel ranks, written `mlp.experts.{e}.linear_fc{1,2}.weight`
//! whatever the expert layout they were read from (per-expert `local_experts.{k}`, TE grouped GEMM
//! `linear_fc1.weight{k}`, torch_dist's stacked `experts.experts`). Both Megatron's local layer spec
//! and the Transformer Engine spec (norms fused into the next linear as `layer_norm_weight`) map.
//! Multi-token-prediction layers (`mtp.layers.{k}.{enorm, hnorm, eh_proj, final_layernorm}` and
//! `mtp.layers.{k}.transformer_layer.…`, megatron-core's `MultiTokenPredictionBlock`) map to
//! DeepSeek-V3's release layout, `model.layers.{num_layers + k}.{enorm, hnorm, eh_proj,
//! shared_head.norm}` and the decoder layer's names under that prefix, with the release's copies
//! of the shared embedding and output layer (`embed_tokens`, `shared_head.head`) per MTP layer.

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

/// What the mapping needs to know of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// The output layer shares the embedding.
    pub tied: bool,
    /// Decoder layers (`num_layers`): MTP layer k becomes HF layer `layers + k`.
    pub layers: usize,
    /// MTP layers.
    pub mtp: usize,
}

/// `mtp.layers.{k}.rest` -> (k, rest).
pub fn mtp_layer(key: &str) -> Option<(usize, &str)> {
    let (k, rest) = key.strip_prefix("mtp.layers.")?.split_once('.')?;
    Some((k.parse().ok()?, rest))
}

/// The HF tensors of a global Megatron key.
pub fn target(key: &str, m: &Model) -> Target {
    if key.ends_with("._extra_state") || key.contains("._extra_state/") {
        return Target::Ignored("`_extra_state` (module metadata, no weights)");
    }
    let one = |name: String| Target::Hf(vec![(name, Part::Whole)]);
    let mtp_copies = |what: &'static str| (0..m.mtp).map(move |k| (format!("model.layers.{}.{what}", m.layers + k), Part::Vocab));
    match key {
        "embedding.word_embeddings.weight" => {
            let mut names = vec![("model.embed_tokens.weight".to_string(), Part::Vocab)];
            names.extend(mtp_copies("embed_tokens.weight"));
            if m.tied {
                names.extend(mtp_copies("shared_head.head.weight"));
            }
            return Target::Hf(names);
        }
        "decoder.final_layernorm.weight" => return one("model.norm.weight".into()),
        "output_layer.weight" if m.tied => return Target::Ignored("output layer tied to the embedding"),
        "output_layer.weight" => return Target::Hf([("lm_head.weight".to_string(), Part::Vocab)].into_iter().chain(mtp_copies("shared_head.head.weight")).collect()),
        _ => {}
    }
    if let Some((k, rest)) = mtp_layer(key) {
        if k >= m.mtp {
            return Target::Unknown;
        }
        let p = format!("model.layers.{}", m.layers + k);
        return match rest {
            "enorm.weight" | "hnorm.weight" | "eh_proj.weight" => one(format!("{p}.{rest}")),
            "final_layernorm.weight" => one(format!("{p}.shared_head.norm.weight")),
            _ => match rest.strip_prefix("transformer_layer.") {
                Some(r) => layer_target(&format!("{p}."), r),
                None => Target::Unknown,
            },
        };
    }
    let Some(rest) = key.strip_prefix("decoder.layers.") else { return Target::Unknown };
    let Some((layer, rest)) = rest.split_once('.') else { return Target::Unknown };
    if layer.parse::<usize>().is_err() {
        return Target::Unknown;
    }
    layer_target(&format!("model.layers.{layer}."), rest)
}

/// The HF tensors of a decoder layer's key `rest`, the layer's HF prefix `p` (with its dot).
fn layer_target(p: &str, rest: &str) -> Target {
    let one = |name: String| Target::Hf(vec![(name, Part::Whole)]);
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
        "word_embeddings" | "output_layer" | "linear_q_proj" | "linear_q_up_proj" | "linear_kv_up_proj" | "eh_proj" => Merge::Dim(0),
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

    const UNTIED: Model = Model { tied: false, layers: 4, mtp: 0 };

    fn names(t: Target) -> Vec<String> {
        match t {
            Target::Hf(v) => v.into_iter().map(|(n, _)| n).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_and_te_spec_names_map_to_the_same_hf_names() {
        assert_eq!(names(target("decoder.layers.3.self_attention.kv_layernorm.weight", &UNTIED)), ["model.layers.3.self_attn.kv_a_layernorm.weight"]);
        assert_eq!(names(target("decoder.layers.3.self_attention.linear_kv_up_proj.layer_norm_weight", &UNTIED)), ["model.layers.3.self_attn.kv_a_layernorm.weight"]);
        assert_eq!(names(target("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", &UNTIED)), ["model.layers.0.post_attention_layernorm.weight"]);
        assert_eq!(
            names(target("decoder.layers.2.mlp.experts.17.linear_fc1.weight", &UNTIED)),
            ["model.layers.2.mlp.experts.17.gate_proj.weight", "model.layers.2.mlp.experts.17.up_proj.weight"]
        );
        assert_eq!(names(target("decoder.layers.2.mlp.router.expert_bias", &UNTIED)), ["model.layers.2.mlp.gate.e_score_correction_bias"]);
    }

    #[test]
    fn tied_output_extra_state_and_strangers() {
        assert_eq!(target("output_layer.weight", &Model { tied: true, ..UNTIED }), Target::Ignored("output layer tied to the embedding"));
        assert_eq!(names(target("output_layer.weight", &UNTIED)), ["lm_head.weight"]);
        assert!(matches!(target("decoder.layers.1.mlp.linear_fc1._extra_state", &UNTIED), Target::Ignored(_)));
        assert_eq!(target("mtp.layers.0.enorm.weight", &UNTIED), Target::Unknown);
        assert_eq!(target("decoder.layers.1.self_attention.linear_qkv.weight", &UNTIED), Target::Unknown);
    }

    #[test]
    fn mtp_layers_map_to_the_release_layout_with_copies_of_the_shared_tensors() {
        let m = Model { tied: false, layers: 4, mtp: 2 };
        assert_eq!(names(target("mtp.layers.1.enorm.weight", &m)), ["model.layers.5.enorm.weight"]);
        assert_eq!(names(target("mtp.layers.0.eh_proj.weight", &m)), ["model.layers.4.eh_proj.weight"]);
        assert_eq!(names(target("mtp.layers.0.final_layernorm.weight", &m)), ["model.layers.4.shared_head.norm.weight"]);
        assert_eq!(names(target("mtp.layers.0.transformer_layer.self_attention.linear_kv_up_proj.layer_norm_weight", &m)), ["model.layers.4.self_attn.kv_a_layernorm.weight"]);
        assert_eq!(
            names(target("mtp.layers.1.transformer_layer.mlp.experts.3.linear_fc1.weight", &m)),
            ["model.layers.5.mlp.experts.3.gate_proj.weight", "model.layers.5.mlp.experts.3.up_proj.weight"]
        );
        assert_eq!(names(target("embedding.word_embeddings.weight", &m)), ["model.embed_tokens.weight", "model.layers.4.embed_tokens.weight", "model.layers.5.embed_tokens.weight"]);
        assert_eq!(names(target("output_layer.weight", &m)), ["lm_head.weight", "model.layers.4.shared_head.head.weight", "model.layers.5.shared_head.head.weight"]);
        let tied = Model { tied: true, mtp: 1, ..m };
        assert_eq!(names(target("embedding.word_embeddings.weight", &tied)), ["model.embed_tokens.weight", "model.layers.4.embed_tokens.weight", "model.layers.4.shared_head.head.weight"]);
        assert!(matches!(target("mtp.layers.0.eh_proj._extra_state", &m), Target::Ignored(_)));
        assert_eq!(target("mtp.layers.2.enorm.weight", &m), Target::Unknown, "past the MTP layers the checkpoint has");
        assert_eq!(target("mtp.layers.0.transformer_layer.bogus.weight", &m), Target::Unknown);
        assert_eq!(merge("mtp.layers.0.eh_proj.weight"), Merge::Dim(0));
        assert_eq!(merge("mtp.layers.0.transformer_layer.self_attention.linear_proj.weight"), Merge::Dim(1));
        assert!(is_expert("mtp.layers.0.transformer_layer.mlp.experts.3.linear_fc2.weight"));
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
