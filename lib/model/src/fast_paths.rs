//! The model's fast paths: CUDA kernels and tensor layouts that compute what the plain tensor
//! operations compute (the plain path is what the tests compare them with). Each has an off switch,
//! so a benchmark can measure it and a suspect result can be checked against the plain path. The
//! switches are configuration (os-train's `[debug] disable`, os-eval's `--disable`), carried by the
//! model's modules, never read from the environment.

/// Which fast paths a model's modules take; all on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPaths {
    /// RMSNorm as ATen's fused kernel (CUDA, 16-bit activations).
    pub fused_norm: bool,
    /// The routed experts' row movement as openseek-kernels' gathers (else `index_copy`/`narrow`).
    pub moe_fused: bool,
    /// SwiGLU forward and backward as NVRTC kernels (else ATen's silu and mul).
    pub swiglu_kernel: bool,
    /// Dense and shared MLPs: gate and up as one GEMM (CUDA).
    pub mlp_fused: bool,
    /// The MoE's weighted combine as an NVRTC kernel (else gather + bmm).
    pub combine_kernel: bool,
    /// Attention's queries and keys joined in the projections' [B, T, H, d] layout.
    pub attn_layout: bool,
    /// MLA's rotary joins as NVRTC kernels (CUDA, with `attn_layout`).
    pub rope_kernel: bool,
    /// Attention within documents through flash attention's variable-length kernels (CUDA, 16-bit
    /// activations; else SDPA with the documents' [B, 1, T, T] mask, or for scoring each document
    /// padded to the batch's longest and masked).
    pub varlen_attention: bool,
    /// Greedy decoding's step (all rows, one token each) captured as a CUDA graph per number of
    /// cache entries read, and replayed (CUDA, bf16 activations); else launched op by op.
    pub decode_graph: bool,
    /// Scored tokens' log-probs through openseek-kernels' `target_logprobs`, one read of each row of
    /// bf16 logits (CUDA, bf16 activations); else fp32 logits and log_softmax.
    pub logprob_kernel: bool,
}

impl Default for FastPaths {
    fn default() -> FastPaths {
        FastPaths {
            fused_norm: true,
            moe_fused: true,
            swiglu_kernel: true,
            mlp_fused: true,
            combine_kernel: true,
            attn_layout: true,
            rope_kernel: true,
            varlen_attention: true,
            decode_graph: true,
            logprob_kernel: true,
        }
    }
}

impl FastPaths {
    /// The switches' names, as configs spell them.
    pub const NAMES: [&'static str; 10] = [
        "fused_norm",
        "moe_fused",
        "swiglu_kernel",
        "mlp_fused",
        "combine_kernel",
        "attn_layout",
        "rope_kernel",
        "varlen_attention",
        "decode_graph",
        "logprob_kernel",
    ];

    fn switch(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "fused_norm" => &mut self.fused_norm,
            "moe_fused" => &mut self.moe_fused,
            "swiglu_kernel" => &mut self.swiglu_kernel,
            "mlp_fused" => &mut self.mlp_fused,
            "combine_kernel" => &mut self.combine_kernel,
            "attn_layout" => &mut self.attn_layout,
            "rope_kernel" => &mut self.rope_kernel,
            "varlen_attention" => &mut self.varlen_attention,
            "decode_graph" => &mut self.decode_graph,
            "logprob_kernel" => &mut self.logprob_kernel,
            _ => return None,
        })
    }

    /// All on but those in `names`; names that are not the model's are returned, for the caller
    /// to check against its own switches.
    pub fn with_disabled(names: &[String]) -> (FastPaths, Vec<&str>) {
        let mut fast = FastPaths::default();
        let mut others = vec![];
        for name in names {
            match fast.switch(name) {
                Some(on) => *on = false,
                None => others.push(name.as_str()),
            }
        }
        (fast, others)
    }

    /// All on but those in `names`, each of which must be one of the model's switches: an unknown
    /// name is a usage error (exit 64) naming `flag` and the known names.
    pub fn parse_disabled(names: &[String], flag: &str) -> Result<FastPaths, openseek_common::Failure> {
        let (fast, others) = FastPaths::with_disabled(names);
        match others.first() {
            None => Ok(fast),
            Some(other) => Err(openseek_common::Failure::usage(format!(
                "{flag}: unknown fast path {other:?}; known: {}",
                FastPaths::NAMES.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_turn_their_switch_off_and_others_are_returned() {
        let names: Vec<String> = ["rope_kernel", "xent_kernel", "fused_norm"].iter().map(|s| s.to_string()).collect();
        let (fast, others) = FastPaths::with_disabled(&names);
        assert!(!fast.rope_kernel && !fast.fused_norm && fast.moe_fused);
        assert_eq!(others, ["xent_kernel"]);
        for name in FastPaths::NAMES {
            let one = [name.to_string()];
            let (f, rest) = FastPaths::with_disabled(&one);
            assert!(rest.is_empty() && f != FastPaths::default(), "{name}");
        }
    }

    #[test]
    fn parse_disabled_refuses_names_that_are_not_the_models() {
        let names = vec!["moe_fused".to_string()];
        assert!(!FastPaths::parse_disabled(&names, "--disable").unwrap().moe_fused);
        let err = FastPaths::parse_disabled(&["xent_kernel".to_string()], "--disable").unwrap_err();
        assert_eq!(err.code, openseek_common::ExitCode::Usage);
        assert!(err.message.contains("--disable: unknown fast path \"xent_kernel\"") && err.message.contains("rope_kernel"), "{}", err.message);
    }
}
