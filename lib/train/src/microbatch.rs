//! One micro-batch forward and backward, layer by layer. Every layer's input is a leaf of its
//! own graph, so a layer can run its forward without keeping activations (under no_grad) and
//! recompute them in the backward pass; the LM head and the loss run in chunks of tokens
//! (crate::loss). As the backward pass completes each part's gradients (the head, then each
//! layer from the last, then the embedding) it tells the caller, which can start reducing them
//! over ranks while the rest of the backward runs. With multi-token prediction (crate::mtp) the
//! final hidden states are a leaf that the main head + loss and the MTP depths both send their
//! gradients to; the MTP layers count as layers `num_hidden_layers + k` for the caller.

use crate::config::{HeadLoss, TrainFastPaths};
use crate::loss;
use crate::mtp;
use openseek_common::Failure;
use openseek_model::moe::{AuxCoefficients, RoutingStats};
use openseek_model::{DeepseekV3, DocumentSegments};
use tch::{Kind, Tensor};

/// The points of [`forward_backward`]'s backward pass after which some parameters' gradients are
/// complete for the micro-batch, in the order they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradReady {
    /// The final norm and an untied LM head.
    Head,
    /// Every parameter of decoder layer N.
    Layer(usize),
    /// The embedding (also the head when tied), and anything else: the end of the pass.
    Embedding,
}

impl GradReady {
    /// When the gradient of the model parameter `name` is complete.
    pub fn of(name: &str) -> GradReady {
        if name == "model.norm.weight" || name == "lm_head.weight" {
            return GradReady::Head;
        }
        let layer = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|n| n.parse().ok());
        layer.map_or(GradReady::Embedding, GradReady::Layer)
    }

    /// A number per point (a bucket key for openseek-dist).
    pub fn key(self) -> usize {
        match self {
            GradReady::Head => 0,
            GradReady::Layer(i) => i + 1,
            GradReady::Embedding => usize::MAX,
        }
    }
}

pub struct MicroBatch {
    /// [B, T] int64.
    pub ids: Tensor,
    /// [B*T] int64.
    pub labels: Tensor,
    /// [B*T] fp32.
    pub loss_mask: Tensor,
    /// Attention within documents (positions restarting at each); None for plain causal
    /// attention over the whole row.
    pub per_document: Option<DocumentSegments>,
}

/// How a micro-batch runs: the same for every micro-batch of a run but the loss denominator.
pub struct MicroBatchPlan<'a> {
    /// Per layer: recompute its activations in the backward pass.
    pub recompute: &'a [bool],
    pub aux: AuxCoefficients,
    /// Tokens per chunk of the LM head + loss.
    pub chunk_tokens: i64,
    pub head_loss: HeadLoss,
    pub fast: TrainFastPaths,
    /// The micro-batch's sum of masked token losses is divided by this (see `crate::train_step`).
    pub loss_denominator: f64,
    /// Micro-batches in the step (the auxiliary losses are means over them).
    pub micro_batches: usize,
    /// The multi-token-prediction objective, when the model has MTP layers and `mtp_loss_coeff` > 0:
    /// the coefficient and each depth's loss denominator (`crate::mtp::denominators`).
    pub mtp: Option<(f64, Vec<f64>)>,
    /// Print each phase's wall time (device synchronised).
    pub profile: bool,
}

/// Where the pass is, for the caller's hook: the parameters of a part of the model are about to be
/// used (forward), or their gradients are complete (backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassPoint {
    /// Before the forward pass uses the part's parameters (`Head`: before the final norm, the
    /// head and anything after them).
    ParamsNeeded(GradReady),
    /// The part's gradients are complete for the micro-batch.
    GradsReady(GradReady),
}

/// What a micro-batch contributed; detached scalars already divided by the step's denominators.
pub struct MicroOutput {
    /// Sum of masked token losses / the loss denominator.
    pub lm_loss: Tensor,
    pub seq_aux_loss: Tensor,
    pub z_loss: Tensor,
    /// The MTP loss before its coefficient (crate::mtp::MtpOutput::loss), when it ran.
    pub mtp_loss: Option<Tensor>,
    /// Tokens per expert for each MoE layer (`DeepseekV3::all_layers` order: the MTP layers' last,
    /// when the MTP loss ran), int64.
    pub loads: Vec<Tensor>,
}

/// A layer's output and auxiliary loss, with their autograd graph.
type KeptGraph = (Tensor, Option<Tensor>);

fn sum_losses(stats: &Option<RoutingStats>) -> (Option<Tensor>, Option<Tensor>) {
    match stats {
        None => (None, None),
        Some(s) => (s.seq_aux_loss.as_ref().map(|t| t.shallow_clone()), s.z_loss.as_ref().map(|t| t.shallow_clone())),
    }
}

/// Forward and backward of one micro-batch as `plan` says; gradients accumulate into the
/// parameters' `.grad`. `at` is called at each [`PassPoint`]: before a part's parameters are used,
/// and once the gradients of a part are complete (its error ends the pass).
pub fn forward_backward(
    model: &DeepseekV3,
    batch: &MicroBatch,
    plan: &MicroBatchPlan,
    at: &mut dyn FnMut(PassPoint) -> Result<(), Failure>,
) -> Result<MicroOutput, Failure> {
    let device = model.device();
    let mut profile = Profile::new(device, plan.profile);
    let zero = || Tensor::zeros([], (Kind::Float, device));
    let aux = &plan.aux;
    let aux_scale = 1.0 / plan.micro_batches as f64;
    let documents = batch.per_document.as_ref();
    at(PassPoint::ParamsNeeded(GradReady::Embedding))?;
    let (x0, cos, sin) = model.embed(&batch.ids, documents.map(|d| &d.positions));
    let mut x = x0.detach().set_requires_grad(true);
    // Per layer: its input leaf, and (output, auxiliary loss) when the graph was kept.
    let mut saved: Vec<(Tensor, Option<KeptGraph>)> = Vec::with_capacity(model.layers.len());
    let (mut seq_aux, mut z) = (zero(), zero());
    let mut loads = vec![];
    for (i, (layer, &again)) in model.layers.iter().zip(plan.recompute).enumerate() {
        at(PassPoint::ParamsNeeded(GradReady::Layer(i)))?;
        let input = x;
        let (y, stats) = if again {
            tch::no_grad(|| layer.forward_train(&input, &model.rope, &cos, &sin, documents, aux))
        } else {
            layer.forward_train(&input, &model.rope, &cos, &sin, documents, aux)
        };
        let (a, zl) = sum_losses(&stats);
        if let Some(a) = &a {
            seq_aux += a.detach() * aux_scale;
        }
        if let Some(zl) = &zl {
            z += zl.detach() * aux_scale;
        }
        if let Some(s) = stats {
            loads.push(s.load);
        }
        x = y.detach().set_requires_grad(true);
        let graph = (!again).then(|| (y, aux_total(a, zl, aux_scale)));
        saved.push((input, graph));
        profile.mark("forward layer");
    }

    // Final norm, then head + loss chunk by chunk with their backward (crate::loss).
    at(PassPoint::ParamsNeeded(GradReady::Head))?;
    let h = model.norm.forward(&x);
    let (lm_loss, mtp_loss) = match &plan.mtp {
        None => {
            let lm_loss = loss::head_and_loss(model, &h, &batch.labels, &batch.loss_mask, plan.chunk_tokens, plan.loss_denominator, plan.head_loss, plan.fast);
            profile.mark("head + loss forward/backward");
            (lm_loss, None)
        }
        Some((coeff, denominators)) => {
            // The MTP depths read the final hidden states too: both gradients gather on a leaf.
            let leaf = h.detach().set_requires_grad(true);
            let lm_loss = loss::head_and_loss(model, &leaf, &batch.labels, &batch.loss_mask, plan.chunk_tokens, plan.loss_denominator, plan.head_loss, plan.fast);
            profile.mark("head + loss forward/backward");
            let main_layers = model.layers.len();
            for k in 0..model.mtp.len() {
                at(PassPoint::ParamsNeeded(GradReady::Layer(main_layers + k)))?;
            }
            let mtp_batch = mtp::MtpBatch { ids: &batch.ids, labels: &batch.labels, loss_mask: &batch.loss_mask, per_document: documents };
            let settings = mtp::MtpSettings {
                coeff: *coeff,
                denominators: denominators.clone(),
                micro_batches: plan.micro_batches,
                chunk_tokens: plan.chunk_tokens,
                head_loss: plan.head_loss,
                fast: plan.fast,
                aux: *aux,
            };
            let out = mtp::mtp_forward_backward(model, &leaf, &mtp_batch, &settings)?;
            seq_aux += out.seq_aux_loss;
            z += out.z_loss;
            loads.extend(out.loads);
            for k in (0..model.mtp.len()).rev() {
                at(PassPoint::GradsReady(GradReady::Layer(main_layers + k)))?;
            }
            openseek_kernels::backward(&[&h], &[&leaf.grad()]).map_err(|e| Failure::software(format!("backward pass of the final norm: {e}")))?;
            profile.mark("MTP forward/backward");
            (lm_loss, Some(out.loss))
        }
    };
    at(PassPoint::GradsReady(GradReady::Head))?;

    let mut grad = x.grad();
    for (i, (layer, (input, graph))) in model.layers.iter().zip(saved).enumerate().rev() {
        let (y, aux_loss) = match graph {
            Some(g) => g,
            None => {
                let (y, stats) = layer.forward_train(&input, &model.rope, &cos, &sin, documents, aux);
                let (a, zl) = sum_losses(&stats);
                (y, aux_total(a, zl, aux_scale))
            }
        };
        match aux_loss {
            Some(a) => openseek_kernels::backward(&[&y, &a], &[&grad, &a.ones_like()]),
            None => openseek_kernels::backward(&[&y], &[&grad]),
        }
        .map_err(|e| Failure::software(format!("backward pass of layer {i}: {e}")))?;
        grad = input.grad();
        profile.mark("backward layer");
        at(PassPoint::GradsReady(GradReady::Layer(i)))?;
    }
    openseek_kernels::backward(&[&x0], &[&grad]).map_err(|e| Failure::software(format!("backward pass of the embedding: {e}")))?;
    profile.mark("embedding backward");
    at(PassPoint::GradsReady(GradReady::Embedding))?;
    profile.report();
    Ok(MicroOutput { lm_loss, seq_aux_loss: seq_aux, z_loss: z, mtp_loss, loads })
}

/// `debug.profile`: wall time of each phase (device synchronised), printed on stderr.
struct Profile {
    device: tch::Device,
    on: bool,
    last: std::time::Instant,
    phases: Vec<(&'static str, f64)>,
}

impl Profile {
    fn new(device: tch::Device, on: bool) -> Profile {
        let p = Profile { device, on, last: std::time::Instant::now(), phases: vec![] };
        p.sync();
        p
    }
    fn sync(&self) {
        if let (true, tch::Device::Cuda(i)) = (self.on, self.device) {
            tch::Cuda::synchronize(i as i64);
        }
    }
    fn mark(&mut self, what: &'static str) {
        if self.on {
            self.sync();
            self.phases.push((what, self.last.elapsed().as_secs_f64() * 1e3));
            self.last = std::time::Instant::now();
        }
    }
    fn report(&self) {
        if self.on {
            let parts: Vec<String> = self.phases.iter().map(|(w, ms)| format!("{w} {ms:.1}")).collect();
            eprintln!("os-train: profile (ms): {}", parts.join(", "));
        }
    }
}

fn aux_total(a: Option<Tensor>, z: Option<Tensor>, scale: f64) -> Option<Tensor> {
    match (a, z) {
        (None, None) => None,
        (Some(a), None) => Some(a * scale),
        (None, Some(z)) => Some(z * scale),
        (Some(a), Some(z)) => Some((a + z) * scale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openseek_model::DeepseekV3;
    use tch::Device;

    /// The points come in backward order, and at each the gradients it names are already what
    /// they are at the end of the pass (tied and untied heads; a recomputed layer; two MTP depths,
    /// reported as layers 3 and 4 before the head).
    #[test]
    fn gradients_are_complete_when_reported() {
        for (tied, depths) in [(false, 0), (true, 0), (false, 2), (true, 1)] {
            let mut raw = crate::init::tiny_config(50, 3, tied).raw;
            raw["num_nextn_predict_layers"] = depths.into();
            let cfg = openseek_model::Config::from_json(raw).unwrap();
            let w = crate::init::init_weights(&cfg, 0.2, 3, Kind::Float, Device::Cpu);
            let model = DeepseekV3::from_weights(cfg, w);
            let params: Vec<(String, Tensor)> =
                model.named_tensors().into_iter().filter(|(n, _)| !n.ends_with("e_score_correction_bias")).map(|(n, t)| (n, t.set_requires_grad(true))).collect();
            assert_eq!(params.iter().any(|(n, _)| n == "lm_head.weight"), !tied);
            let ids = Tensor::from_slice(&[3i64, 7, 9, 11, 2, 5, 8, 13]).view([2, 4]);
            let batch = MicroBatch { labels: ids.view([-1]).roll([-1], [0]), loss_mask: Tensor::ones([8], (Kind::Float, Device::Cpu)), ids, per_document: None };
            let mut seen = vec![];
            let mut snapshots: Vec<(String, Tensor)> = vec![];
            let mut ready = |point: PassPoint| {
                let PassPoint::GradsReady(point) = point else { return Ok(()) };
                seen.push(point);
                for (n, t) in &params {
                    if GradReady::of(n) == point {
                        snapshots.push((n.clone(), t.grad().copy()));
                    }
                }
                Ok(())
            };
            let plan = MicroBatchPlan {
                recompute: &[false, true, false],
                aux: AuxCoefficients { seq_aux_loss: 1e-2, z_loss: 1e-3 },
                chunk_tokens: 3,
                head_loss: HeadLoss::Fused,
                fast: TrainFastPaths::default(),
                loss_denominator: 8.0,
                micro_batches: 1,
                mtp: (depths > 0).then(|| (0.3, vec![8.0; depths])),
                profile: false,
            };
            let out = forward_backward(&model, &batch, &plan, &mut ready).unwrap();
            assert_eq!(out.mtp_loss.is_some(), depths > 0);
            assert_eq!(out.loads.len(), 2 + depths, "the MoE layers' loads, MTP layers' last");
            use GradReady::*;
            let mtp_points: Vec<GradReady> = (0..depths).rev().map(|k| Layer(3 + k)).collect();
            assert_eq!(seen, [mtp_points, vec![Head, Layer(2), Layer(1), Layer(0), Embedding]].concat());
            assert_eq!(snapshots.len(), params.len(), "every parameter reported once");
            // ZeRO-1's buckets for these keys: the embedding, each layer, the final norm with the
            // head, then the MTP layers.
            let described = params.iter().map(|(n, t)| openseek_dist::Param { name: n.clone(), numel: t.numel(), decay: true }).collect();
            let keys: Vec<usize> = params.iter().map(|(n, _)| GradReady::of(n).key()).collect();
            let layout = openseek_dist::FlatLayout::with_buckets(described, &keys, 2);
            let order: Vec<usize> = layout.buckets().iter().map(|b| b.key).collect();
            let want: Vec<GradReady> = [vec![Embedding, Layer(0), Layer(1), Layer(2), Head], (0..depths).map(|k| Layer(3 + k)).collect()].concat();
            assert_eq!(order, want.into_iter().map(GradReady::key).collect::<Vec<_>>());
            for (n, g) in snapshots {
                let end = &params.iter().find(|(m, _)| *m == n).unwrap().1.grad();
                assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{n}: no gradient when reported");
                assert!(g.equal(end), "{n}: its gradient changed after it was reported (tied {tied}, {depths} MTP depths)");
            }
        }
        assert_eq!(GradReady::of("model.layers.12.mlp.experts.down_proj"), GradReady::Layer(12));
        assert_eq!(GradReady::of("model.embed_tokens.weight"), GradReady::Embedding);
    }

    #[test]
    fn attention_within_documents_equals_each_document_alone() {
        let cfg = crate::init::tiny_config(50, 2, false);
        let w = crate::init::init_weights(&cfg, 0.2, 3, Kind::Float, Device::Cpu);
        let model = DeepseekV3::from_weights(cfg, w);
        let (a, b) = ([3i64, 7, 9, 11, 2], [5i64, 8, 13, 21, 34, 4, 6]);
        let row: Vec<i64> = a.iter().chain(&b).cloned().collect();
        let ids = Tensor::from_slice(&row).view([1, 12]);
        let documents = openseek_model::document_attention(&[vec![0, 5]], 12, Device::Cpu);
        let (mut x, cos, sin) = model.embed(&ids, Some(&documents.positions));
        for layer in &model.layers {
            x = layer.forward_train(&x, &model.rope, &cos, &sin, Some(&documents), &AuxCoefficients::default()).0;
        }
        let packed = model.head(&model.norm.forward(&x));
        for (doc, start) in [(&a[..], 0i64), (&b[..], 5)] {
            let alone = model.forward(&Tensor::from_slice(doc).view([1, doc.len() as i64]));
            let part = packed.narrow(1, start, doc.len() as i64);
            let diff = (&alone - &part).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "document at {start}: {diff}");
        }
        // Plain causal attention over the row differs for the second document.
        let causal = model.forward(&ids).narrow(1, 5, 7);
        assert!((causal - packed.narrow(1, 5, 7)).abs().max().double_value(&[]) > 1e-3);
        // Rows of one document each (the causal shortcut) equal plain causal attention.
        let two = Tensor::cat(&[&ids, &ids.flip([1])], 0);
        let whole = openseek_model::document_attention(&[vec![0], vec![0]], 12, Device::Cpu);
        let (mut x, cos, sin) = model.embed(&two, Some(&whole.positions));
        for layer in &model.layers {
            x = layer.forward_train(&x, &model.rope, &cos, &sin, Some(&whole), &AuxCoefficients::default()).0;
        }
        let diff = (model.head(&model.norm.forward(&x)) - model.forward(&two)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "single-document rows: {diff}");
    }
}
