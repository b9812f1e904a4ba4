//! The multi-token-prediction (MTP) objective, forward and backward, as megatron-core's GPTModel
//! computes it with a `MultiTokenPredictionBlock`: depth k (1..=D) predicts, at position i, token
//! i + k + 1 from the previous depth's output at i and the embedding of token i + k. Token ids,
//! labels and the loss mask are shifted left by k with zeros at the end of each row (megatron-core's
//! `roll_tensor`, no loss there); attention (causal, or within documents) and rotary positions are
//! the main model's. Each depth's masked cross-entropy sum (`crate::loss`'s chunked head + loss)
//! is divided by its denominator ([`denominators`]: as megatron-core, the main loss's for
//! `loss_averaging = "per_token"`, else the depth's own shifted loss-token count times the
//! micro-batches), averaged over the D depths and scaled by `mtp_loss_coeff`. The routers of MoE
//! MTP layers add their auxiliary losses like any layer's and report their loads.
//!
//! Depth by depth the forward keeps one layer's graph, each depth's input a leaf of its own; the
//! backward runs from the last depth to the first, so a depth's output gradient (its own head and
//! loss, plus what the next depth sent back) is complete before its layer's backward.

use crate::config::{HeadLoss, LossAveraging, TrainFastPaths};
use crate::loss;
use openseek_common::Failure;
use openseek_model::moe::AuxCoefficients;
use openseek_model::{DeepseekV3, DocumentSegments};
use tch::{Kind, Tensor};

/// A micro-batch as the MTP objective reads it.
#[derive(Clone, Copy)]
pub struct MtpBatch<'a> {
    /// [B, T] int64: the main model's input tokens.
    pub ids: &'a Tensor,
    /// [B*T] int64: the main model's labels (token i + 1 at position i; -100: no loss).
    pub labels: &'a Tensor,
    /// [B*T] fp32.
    pub loss_mask: &'a Tensor,
    /// The documents (positions restarting at each) when attention is within documents, as the main
    /// layers used them.
    pub per_document: Option<&'a DocumentSegments>,
}

/// How the MTP loss of a micro-batch is weighted and computed.
pub struct MtpSettings {
    /// `mtp_loss_coeff` (> 0: with 0 the objective is not run).
    pub coeff: f64,
    /// Per depth, what its masked loss sum is divided by ([`denominators`]).
    pub denominators: Vec<f64>,
    /// Micro-batches in the step (the auxiliary losses are means over them).
    pub micro_batches: usize,
    pub chunk_tokens: i64,
    pub head_loss: HeadLoss,
    pub fast: TrainFastPaths,
    pub aux: AuxCoefficients,
}

/// Each depth's loss denominator for a micro-batch whose loss mask is `loss_mask` ([rows x seq],
/// row-major): with `per_token` averaging the main loss's `main_denominator` (megatron-core's MTP
/// with `--calculate-per-token-loss`: the masked sums, normalised with the main loss), else the
/// tokens of the mask shifted by the depth (at least one) times the step's `micro_batches`
/// (megatron-core without it: each depth's mean over its own tokens, averaged over micro-batches).
pub fn denominators(averaging: LossAveraging, main_denominator: f64, loss_mask: &[f32], seq: usize, depths: usize, micro_batches: usize) -> Vec<f64> {
    (1..=depths)
        .map(|k| match averaging {
            LossAveraging::PerToken => main_denominator,
            LossAveraging::PerMicroBatch => {
                let tokens: f64 = loss_mask.chunks(seq).map(|row| row.iter().skip(k).map(|&m| m as f64).sum::<f64>()).sum();
                tokens.max(1.0) * micro_batches as f64
            }
        })
        .collect()
}

/// What the MTP depths contributed; detached scalars.
pub struct MtpOutput {
    /// The mean over depths of each depth's masked loss sum / the denominator, before the
    /// coefficient (comparable with the main loss).
    pub loss: Tensor,
    /// The MTP layers' auxiliary losses (already multiplied by their coefficients and / micro-batches).
    pub seq_aux_loss: Tensor,
    pub z_loss: Tensor,
    /// Tokens per expert of each MoE MTP layer (depth order), int64.
    pub loads: Vec<Tensor>,
}

/// `t` [B, T] shifted left by `k` along T, `fill` in the last k places.
fn shift_left(t: &Tensor, k: i64, fill: f64) -> Tensor {
    let (rows, len) = (t.size()[0], t.size()[1]);
    let k = k.min(len);
    let tail = Tensor::full([rows, k], fill, (t.kind(), t.device()));
    Tensor::cat(&[t.narrow(1, k, len - k), tail], 1)
}

/// Forward and backward of every MTP depth of `model` on one micro-batch. `hidden` is the main
/// model's final hidden states (after its final norm) [B, T, H], a leaf requiring grad: its
/// gradient, and those of the shared embedding and head and the MTP parameters, accumulate.
pub fn mtp_forward_backward(model: &DeepseekV3, hidden: &Tensor, batch: &MtpBatch, s: &MtpSettings) -> Result<MtpOutput, Failure> {
    let depths = model.mtp.len();
    let device = hidden.device();
    let zero = || Tensor::zeros([], (Kind::Float, device));
    let aux_scale = 1.0 / s.micro_batches as f64;
    let (rows, len) = (batch.ids.size()[0], batch.ids.size()[1]);
    let positions = batch.per_document.map(|d| &d.positions);
    let labels = batch.labels.view([rows, len]);
    let loss_mask = batch.loss_mask.view([rows, len]);
    assert_eq!(s.denominators.len(), depths, "one loss denominator per MTP depth");
    let (mut seq_aux, mut z) = (zero(), zero());
    let mut loads = vec![];
    // Per depth: its output with graph, its auxiliary loss, and its output as a leaf (the next
    // depth's input; the first depth's input is the caller's leaf).
    let mut kept = Vec::with_capacity(depths);
    let mut input = hidden.shallow_clone();
    for (d, layer) in model.mtp.iter().enumerate() {
        let k = d as i64 + 1;
        let (embedded, cos, sin) = model.embed(&shift_left(batch.ids, k, 0.0), positions);
        let (y, stats) = layer.forward_train(&input, &embedded, &model.rope, &cos, &sin, batch.per_document, &s.aux);
        let mut aux_loss: Option<Tensor> = None;
        if let Some(st) = stats {
            for (part, sum) in [(&st.seq_aux_loss, &mut seq_aux), (&st.z_loss, &mut z)] {
                if let Some(a) = part {
                    *sum += a.detach() * aux_scale;
                    aux_loss = Some(match aux_loss {
                        Some(t) => t + a * aux_scale,
                        None => a * aux_scale,
                    });
                }
            }
            loads.push(st.load);
        }
        let output = y.detach().set_requires_grad(true);
        kept.push((y, aux_loss, output.shallow_clone()));
        input = output;
    }
    let mut loss = zero();
    for (d, (y, aux_loss, output)) in kept.into_iter().enumerate().rev() {
        let k = d as i64 + 1;
        let labels_k = shift_left(&labels, k, -100.0).view([-1]);
        let mask_k = shift_left(&loss_mask, k, 0.0).view([-1]);
        // The gradient of coeff / D * (masked loss sum_k / denominator_k).
        let denominator = s.denominators[d] * depths as f64 / s.coeff;
        loss += loss::head_and_loss(model, &output, &labels_k, &mask_k, s.chunk_tokens, denominator, s.head_loss, s.fast);
        let grad = output.grad();
        match aux_loss {
            Some(a) => openseek_kernels::backward(&[&y, &a], &[&grad, &a.ones_like()]),
            None => openseek_kernels::backward(&[&y], &[&grad]),
        }
        .map_err(|e| Failure::software(format!("backward pass of MTP depth {k}: {e}")))?;
    }
    Ok(MtpOutput { loss: loss / s.coeff, seq_aux_loss: seq_aux, z_loss: z, loads })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openseek_model::{Config, DeepseekV3};
    use tch::{Device, Reduction};

    fn config(vocab: i64, tied: bool, depths: i64) -> Config {
        let mut v = crate::init::tiny_config(vocab, 2, tied).raw;
        v["num_nextn_predict_layers"] = depths.into();
        Config::from_json(v).unwrap()
    }

    use crate::init::trainable_model as model;

    /// The same objective in plain autograd over whole tensors: each depth's logits in fp32,
    /// cross-entropy per token, shifted targets and mask built by index arithmetic.
    fn reference(model: &DeepseekV3, hidden: &Tensor, batch: &MtpBatch, coeff: f64, denominator: f64) -> f64 {
        let MtpBatch { ids, labels, loss_mask: mask, per_document: doc } = *batch;
        let (rows, len) = (ids.size()[0], ids.size()[1]);
        let mut h = hidden.shallow_clone();
        let mut total = Tensor::zeros([], (Kind::Float, Device::Cpu));
        let depths = model.mtp.len() as i64;
        for (d, layer) in model.mtp.iter().enumerate() {
            let k = d as i64 + 1;
            let ahead: Vec<i64> = (0..rows * len).map(|j| if j % len + k < len { j + k } else { -1 }).collect();
            let valid = Tensor::from_slice(&ahead.iter().map(|&a| (a >= 0) as i64 as f32).collect::<Vec<_>>());
            let index = Tensor::from_slice(&ahead.iter().map(|&a| a.max(0)).collect::<Vec<_>>());
            let ids_k = ids.view([-1]).index_select(0, &index).view([rows, len]) * valid.to_kind(Kind::Int64).view([rows, len]);
            let (emb, cos, sin) = model.embed(&ids_k, doc.map(|d| &d.positions));
            let (y, _) = layer.forward_train(&h, &emb, &model.rope, &cos, &sin, doc, &AuxCoefficients::default());
            let logits = model.head(&y).view([rows * len, -1]).to_kind(Kind::Float);
            let targets = labels.index_select(0, &index);
            let ce = logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, -100, 0.0);
            total += (ce * mask.index_select(0, &index) * &valid).sum(Kind::Float) / denominator;
            h = y;
        }
        let loss = total / depths as f64;
        (&loss * coeff).backward();
        loss.double_value(&[])
    }

    /// The depth-by-depth objective equals plain autograd: loss and every gradient (hidden states,
    /// shared embedding and head, MTP parameters), for tied and untied heads, two depths, causal
    /// and per-document attention, fused and autograd head + loss.
    #[test]
    fn equals_plain_autograd() {
        for (tied, per_document, path) in [(false, false, HeadLoss::Fused), (true, true, HeadLoss::Fused), (false, true, HeadLoss::Autograd)] {
            let cfg = config(60, tied, 2);
            let w = crate::init::init_weights(&cfg, 0.3, 4, Kind::Float, Device::Cpu);
            let (rows, len) = (2i64, 9i64);
            let ids = Tensor::from_slice(&(0..rows * len).map(|i| (i * 17 + 5) % 60).collect::<Vec<_>>()).view([rows, len]);
            let labels = Tensor::from_slice(&(0..rows * len).map(|i| if i == 4 { -100 } else { (i * 29 + 3) % 60 }).collect::<Vec<_>>());
            let mask = Tensor::from_slice(&(0..rows * len).map(|i| if i % 7 == 3 { 0.0f32 } else { 1.0 }).collect::<Vec<_>>());
            let doc = per_document.then(|| openseek_model::document_attention(&[vec![0, 4], vec![0]], len, Device::Cpu));
            let hidden0 = Tensor::randn([rows, len, 32], (Kind::Float, Device::Cpu));
            let (coeff, denominator) = (0.3, 13.0);
            let run = |reference_path: bool| {
                let m = model(&cfg, &w);
                let hidden = hidden0.copy().set_requires_grad(true);
                let batch = MtpBatch { ids: &ids, labels: &labels, loss_mask: &mask, per_document: doc.as_ref() };
                let loss = if reference_path {
                    reference(&m, &hidden, &batch, coeff, denominator)
                } else {
                    let settings = MtpSettings { coeff, denominators: vec![denominator; 2], micro_batches: 1, chunk_tokens: 5, head_loss: path, fast: TrainFastPaths::default(), aux: AuxCoefficients::default() };
                    mtp_forward_backward(&m, &hidden, &batch, &settings).unwrap().loss.double_value(&[])
                };
                let mut grads = vec![("hidden".to_string(), hidden.grad())];
                grads.extend(m.named_tensors().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t.grad())));
                (loss, grads)
            };
            let (loss, got) = run(false);
            let (want_loss, want) = run(true);
            assert!(want_loss > 0.5 && ((loss - want_loss) / want_loss).abs() < 1e-5, "loss {loss} vs {want_loss}");
            let mut with_grad = 0;
            for ((name, g), (_, r)) in got.iter().zip(&want) {
                if !r.defined() {
                    assert!(!g.defined() || g.abs().max().double_value(&[]) == 0.0, "{name}: gradient where the reference has none");
                    continue;
                }
                with_grad += 1;
                let scale = r.abs().max().double_value(&[]);
                let diff = (g - r).abs().max().double_value(&[]);
                assert!(diff <= 1e-5 * scale.max(1e-6), "{name} (tied {tied}, per-document {per_document}): max |diff| {diff:e}, max |grad| {scale:e}");
            }
            // Hidden states, embedding, head (untied), and every tensor of both depths.
            assert!(with_grad > 30, "only {with_grad} gradients compared");
        }
    }

    #[test]
    fn denominators_follow_the_loss_averaging() {
        let mask = [1.0, 1.0, 0.0, 1.0, /* row 2 */ 0.0, 1.0, 1.0, 1.0];
        assert_eq!(denominators(LossAveraging::PerToken, 6.5, &mask, 4, 2, 3), [6.5, 6.5]);
        // Depth 1 sees positions 1.. of each row (2 + 3 tokens), depth 2 positions 2.. (1 + 2).
        assert_eq!(denominators(LossAveraging::PerMicroBatch, 6.5, &mask, 4, 2, 3), [15.0, 9.0]);
        assert_eq!(denominators(LossAveraging::PerMicroBatch, 1.0, &[0.0; 4], 4, 1, 2), [2.0]);
    }

    #[test]
    fn shifting_fills_the_end_of_each_row() {
        let t = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
        assert_eq!(Vec::<i64>::try_from(shift_left(&t, 1, 0.0).view([-1])).unwrap(), [2, 3, 0, 5, 6, 0]);
        assert_eq!(Vec::<i64>::try_from(shift_left(&t, 5, -100.0).view([-1])).unwrap(), [-100; 6]);
    }
}
