//! The LM head and the cross-entropy loss, forward and backward, chunk by chunk over tokens.
//! The fused path (the default) builds no autograd graph over the logits: per chunk it computes
//! the logits in the compute dtype and, over them in place, the logits' gradient (softmax -
//! one-hot) and the label's log-probability: on CUDA in bf16 one kernel per chunk
//! (`openseek_kernels::softmax_cross_entropy`, fp32 inside), elsewhere tensor ops (a softmax in the
//! compute dtype, the loss from the label's probability); two GEMMs turn that
//! into the hidden states' gradient and the head weight's, added in fp32 straight into the head's
//! `.grad`. Full-vocabulary fp32 logits and their gradient never exist.
//! `debug.loss = "autograd"` selects the autograd path, the reference the tests compare with.

use crate::config::{HeadLoss, TrainFastPaths};
use openseek_model::DeepseekV3;
use tch::{Kind, Reduction, Tensor};


/// Loss of the final hidden states `h` ([B, T, H], with its autograd graph) and its backward: the
/// gradients accumulate into the parameters' `.grad` (the head's, or the tied embedding's, added
/// to what else reaches it). `labels` [B*T] (-100: no loss), `loss_mask` [B*T] fp32; the result
/// is the detached sum of masked token losses / `denominator`.
#[allow(clippy::too_many_arguments)]
pub fn head_and_loss(
    model: &DeepseekV3,
    h: &Tensor,
    labels: &Tensor,
    loss_mask: &Tensor,
    chunk_tokens: i64,
    denominator: f64,
    path: HeadLoss,
    fast: TrainFastPaths,
) -> Tensor {
    let head = model.lm_head.as_ref().unwrap_or(&model.embed_tokens);
    match path {
        HeadLoss::Fused => fused(head, h, labels, loss_mask, chunk_tokens, denominator, fast),
        HeadLoss::Autograd => autograd(head, h, labels, loss_mask, chunk_tokens, denominator),
    }
}

fn fused(head: &Tensor, h: &Tensor, labels: &Tensor, loss_mask: &Tensor, chunk_tokens: i64, denominator: f64, fast: TrainFastPaths) -> Tensor {
    let kind = h.kind();
    let width = *h.size().last().unwrap();
    let hidden = h.detach().view([-1, width]);
    let n = hidden.size()[0];
    let device = hidden.device();
    let direct = fast.head_grad;
    // The softmax and loss as one CUDA kernel per chunk (`xent_kernel` off: tensor ops).
    let kernel = device.is_cuda() && kind == Kind::BFloat16 && fast.xent_kernel;
    let (loss, dh, dw) = tch::no_grad(|| {
        let (weight, _) = padded_head(head, kind, false);
        let vocab = head.size()[0];
        let valid = labels.ne(-100);
        let targets = labels.where_scalarother(&valid, 0).unsqueeze(1);
        let mask = loss_mask * valid.to_kind(Kind::Float);
        let scale = (&mask / denominator).unsqueeze(1);
        let mask = mask.to_kind(kind).unsqueeze(1);
        let minus_one = Tensor::full([chunk_tokens.min(n), 1], -1.0, (kind, device));
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        let dh = Tensor::empty([n, width], (kind, device));
        // The head weight's gradient, sum over tokens of mask * dlogits^T h / denominator: by
        // default each chunk's product (compute dtype) added in fp32 straight into the head's
        // `.grad`, the first chunk's written into a fresh one when it has none (`head_assign`; off:
        // zeros, then added); with `head_grad` off summed in an fp32 buffer and handed
        // to autograd as the head's upstream gradient.
        let mut head_grad = (direct && head.requires_grad()).then(|| {
            let g = head.grad();
            if g.defined() {
                return (g, true);
            }
            let assign = fast.head_assign;
            let g = if assign { head.empty_like() } else { head.zeros_like() };
            openseek_kernels::set_grad(head, Some(&g)).expect("setting the head's gradient");
            (g, !assign)
        });
        let mut dw = (!direct).then(|| Tensor::zeros([weight.size()[0], width], (Kind::Float, device)));
        let mut start = 0;
        while start < n {
            let len = chunk_tokens.min(n - start);
            let x = hidden.narrow(0, start, len);
            let t = targets.narrow(0, start, len);
            let s = scale.narrow(0, start, len);
            let mut dlogits = x.mm(&weight.tr());
            let picked = if kernel {
                // In place: softmax - one-hot, the padding columns 0; the label's log-probability in fp32.
                openseek_kernels::softmax_cross_entropy(&dlogits, &t, vocab).expect("softmax cross entropy kernel").unsqueeze(1)
            } else {
                // The padding columns set to -inf after a plain GEMM (cheaper than a bias epilogue).
                if weight.size()[0] > vocab {
                    let _ = dlogits.narrow(1, vocab, weight.size()[0] - vocab).fill_(f64::NEG_INFINITY);
                }
                dlogits = dlogits.softmax(-1, kind);
                // The label's log-probability from the softmax the gradient needs anyway (in bf16
                // the probability is good to 3 significant digits).
                let picked = dlogits.gather(1, &t, false).to_kind(Kind::Float).log();
                let _ = dlogits.scatter_add_(1, &t, &minus_one.narrow(0, 0, len));
                picked
            };
            loss -= (picked * &s).sum(Kind::Float);
            let mut d = dh.narrow(0, start, len);
            let _ = dlogits.mm_out(&d, &weight);
            let _ = d.g_mul_(&s);
            let xm = &x * mask.narrow(0, start, len);
            if let Some((g, accumulate)) = &mut head_grad {
                openseek_kernels::addmm_accumulate(g, &dlogits.tr(), &xm, 1.0 / denominator, *accumulate).expect("head weight gradient");
                *accumulate = true;
            }
            if let Some(dw) = &mut dw {
                *dw += dlogits.tr().mm(&xm);
            }
            start += len;
        }
        let dw = dw.map(|dw| (dw.narrow(0, 0, vocab) * (1.0 / denominator)).to_kind(head.kind()));
        (loss, dh, dw)
    });
    let dh = dh.view_as(h);
    match &dw {
        Some(dw) => openseek_kernels::backward(&[h, head], &[&dh, dw]),
        None => openseek_kernels::backward(&[h], &[&dh]),
    }
    .expect("the backward pass from the head");
    loss
}

fn autograd(head: &Tensor, h: &Tensor, labels: &Tensor, loss_mask: &Tensor, chunk_tokens: i64, denominator: f64) -> Tensor {
    let h_leaf = h.detach().set_requires_grad(true);
    let hidden = h_leaf.view([-1, *h_leaf.size().last().unwrap()]);
    let n = hidden.size()[0];
    let mut lm_loss = Tensor::zeros([], (Kind::Float, h.device()));
    let (weight, bias) = padded_head(head, h_leaf.kind(), true);
    let mut start = 0;
    while start < n {
        let len = chunk_tokens.min(n - start);
        let logits = hidden.narrow(0, start, len).linear(&weight, bias.as_ref()).to_kind(Kind::Float);
        let ce = logits.cross_entropy_loss::<Tensor>(&labels.narrow(0, start, len), None, Reduction::None, -100, 0.0);
        let loss = (ce * loss_mask.narrow(0, start, len)).sum(Kind::Float) / denominator;
        loss.backward();
        lm_loss += loss.detach();
        start += len;
    }
    (h * h_leaf.grad()).sum(Kind::Float).backward();
    lm_loss
}

/// The LM head in the compute dtype with its rows padded to a multiple of 64 (as Megatron pads
/// the vocabulary): an odd vocabulary (151,851) makes the logits' rows misaligned and the GEMMs
/// several times slower. The padded logits must be -inf (softmax and loss unchanged): the bias
/// returned does that for autograd; the fused path fills them (its CUDA kernel skips them).
/// Outside autograd one cast-and-copy into the padded tensor; with autograd a concatenation.
fn padded_head(head: &Tensor, kind: Kind, autograd: bool) -> (Tensor, Option<Tensor>) {
    let (v, h) = (head.size()[0], head.size()[1]);
    let padded = (v + 63) / 64 * 64;
    if padded == v {
        return (head.to_kind(kind), None);
    }
    let opts = (kind, head.device());
    let weight = if autograd {
        Tensor::cat(&[head.to_kind(kind), Tensor::zeros([padded - v, h], opts)], 0)
    } else {
        let w = Tensor::empty([padded, h], opts);
        w.narrow(0, 0, v).copy_(head);
        let _ = w.narrow(0, v, padded - v).zero_();
        w
    };
    let bias = Tensor::cat(&[Tensor::zeros([v], opts), Tensor::full([padded - v], f64::NEG_INFINITY, opts)], 0);
    (weight, Some(bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openseek_model::moe::AuxCoefficients;
    use openseek_model::Config;
    use tch::Device;

    /// The test model's config and weights; each run builds its model from copies of them (drawn
    /// once: the global generator is shared with tests running in parallel).
    fn config_and_weights(tied: bool) -> (Config, openseek_model::weights::Weights) {
        let cfg = crate::init::tiny_config(150, 2, tied);
        let w = crate::init::init_weights(&cfg, 0.2, 5, Kind::Float, Device::Cpu);
        (cfg, w)
    }

    use crate::init::trainable_model as model;

    /// Loss and every parameter's gradient through embedding, layers, norm and head + loss.
    fn run(cfg: &Config, w: &openseek_model::weights::Weights, path: HeadLoss) -> (f64, Vec<(String, Tensor)>) {
        let model = model(cfg, w);
        // Inputs from a fixed pattern, not torch's global generator (other tests draw from it in parallel).
        let (rows, seq) = (3, 10);
        let pattern = |mul: i64, add: i64, modulo: i64| Tensor::from_slice(&(0..rows * seq).map(|i| (i * mul + add) % modulo).collect::<Vec<_>>());
        let ids = pattern(37, 11, 150).view([rows, seq]);
        let labels = pattern(53, 7, 150);
        let _ = labels.narrow(0, 4, 2).fill_(-100);
        let mask = pattern(7, 3, 10).gt(2).to_kind(Kind::Float);
        let (mut x, cos, sin) = model.embed(&ids, None);
        for layer in &model.layers {
            x = layer.forward_train(&x, &model.rope, &cos, &sin, None, &AuxCoefficients::default()).0;
        }
        let h = model.norm.forward(&x);
        // Chunks of 7 tokens: the last one is short.
        let loss = head_and_loss(&model, &h, &labels, &mask, 7, 23.0, path, TrainFastPaths::default());
        let grads = model.named_tensors().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t.grad())).collect();
        (loss.double_value(&[]), grads)
    }

    #[test]
    fn fused_loss_and_gradients_equal_autograd_for_tied_and_untied_heads() {
        for tied in [false, true] {
            let (cfg, w) = config_and_weights(tied);
            let (fused_loss, fused) = run(&cfg, &w, HeadLoss::Fused);
            let (ref_loss, reference) = run(&cfg, &w, HeadLoss::Autograd);
            assert!(ref_loss > 1.0, "tied {tied}: loss {ref_loss}");
            assert!(((fused_loss - ref_loss) / ref_loss).abs() < 1e-5, "tied {tied}: loss {fused_loss} vs {ref_loss}");
            assert_eq!(fused.len(), reference.len());
            for ((name, g), (_, r)) in fused.iter().zip(&reference) {
                assert!(r.defined() && g.defined(), "tied {tied}: {name} has no gradient");
                let scale = r.abs().max().double_value(&[]);
                assert!(scale > 0.0, "tied {tied}: {name}'s gradient is zero");
                let diff = (g - r).abs().max().double_value(&[]);
                assert!(diff <= 1e-5 * scale, "tied {tied}: {name}: max |diff| {diff:e}, max |grad| {scale:e}");
            }
        }
    }

}
