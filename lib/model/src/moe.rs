//! The mixture of experts: the sigmoid router with group-limited top-k, the routed experts
//! (grouped GEMM on CUDA, a loop on CPU) and the shared experts.

use crate::config::Config;
use crate::fast_paths::FastPaths;
use crate::layers::Mlp;
use crate::weights::{take, Weights};
use tch::{Kind, Tensor};

/// Sigmoid router with group-limited top-k. The correction bias only ranks experts; the
/// weights are the unbiased scores of the chosen experts.
pub struct Router {
    pub weight: Tensor,
    /// `e_score_correction_bias`, fp32.
    pub bias: Tensor,
    top_k: i64,
    n_group: i64,
    topk_group: i64,
    norm_topk_prob: bool,
    scaling: f64,
}

/// One routing decision for N tokens.
pub struct Routing {
    /// Router logits x W_gate^T [N, E], fp32 (before the sigmoid).
    pub logits: Tensor,
    /// sigmoid(logits) [N, E], fp32.
    pub scores: Tensor,
    /// Weights of the chosen experts [N, k], fp32.
    pub weights: Tensor,
    /// Chosen expert ids [N, k].
    pub idx: Tensor,
}

impl Router {
    /// x [N, hidden] -> (weights [N, k] fp32, expert ids [N, k]).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let r = self.route(x);
        (r.weights, r.idx)
    }

    /// The full routing of x [N, hidden]: logits, scores, chosen experts and their weights.
    pub fn route(&self, x: &Tensor) -> Routing {
        let n = x.size()[0];
        let experts = self.weight.size()[0];
        let per_group = experts / self.n_group;
        let logits = x.to_kind(Kind::Float).linear::<Tensor>(&self.weight.to_kind(Kind::Float), None);
        let scores = logits.sigmoid();
        let for_choice = (&scores + &self.bias).detach();
        // Rank groups by the sum of their two best experts; keep the best topk_group groups.
        let group_scores = for_choice.view([n, self.n_group, per_group]).topk(per_group.min(2), -1, true, true).0.sum_dim_intlist(-1, false, Kind::Float);
        let group_idx = group_scores.topk(self.topk_group, -1, true, false).1;
        let group_mask = group_scores.zeros_like().scatter_value(1, &group_idx, 1.0);
        let expert_mask = group_mask.unsqueeze(-1).expand([n, self.n_group, per_group], false).reshape([n, experts]);
        let for_choice = for_choice.masked_fill(&expert_mask.eq(0.0), f64::NEG_INFINITY);
        let idx = for_choice.topk(self.top_k, -1, true, false).1;
        let mut weights = scores.gather(1, &idx, false);
        if self.norm_topk_prob {
            weights = &weights / (weights.sum_dim_intlist(-1, true, Kind::Float) + 1e-20);
        }
        Routing { logits, scores, weights: weights * self.scaling, idx }
    }

    pub fn num_experts(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn top_k(&self) -> i64 {
        self.top_k
    }

    /// DeepSeek-V3's auxiliary-loss-free balancing, after a step: each expert's correction bias
    /// moves by `rate` towards balance, `bias_e += rate * sign(mean load - load_e)`, where `load`
    /// is the tokens routed to each expert over the step (all micro-batches and ranks), as
    /// Megatron's `_update_router_expert_bias` does.
    pub fn update_bias(&mut self, load: &Tensor, rate: f64) {
        let _guard = tch::no_grad_guard();
        let load = load.to_kind(Kind::Float);
        let delta = (load.mean(Kind::Float) - &load).sign() * rate;
        let _ = self.bias.g_add_(&delta);
    }
}

/// The routed experts, fused: gate_up [E, 2I, H], down [E, H, I].
pub struct Experts {
    pub gate_up_proj: Tensor,
    pub down_proj: Tensor,
    pub fast: FastPaths,
}

impl Experts {
    /// x [N, H]; each token goes through its k experts, outputs weighted (fp32 weights [N, k]) and summed.
    /// On CUDA the experts run as two grouped GEMMs; on CPU one after another.
    pub fn forward(&self, x: &Tensor, weights: &Tensor, idx: &Tensor) -> Tensor {
        if x.device().is_cuda() {
            self.forward_grouped(x, weights, idx)
        } else {
            self.forward_loop(x, weights, idx)
        }
    }

    /// All (token, expert) pairs sorted by expert, each expert's rows one group of
    /// `_grouped_mm` (offsets = running row counts), results put back in token order, weighted and
    /// summed. The rows move by gathers whose backward passes are gathers too (openseek-kernels'
    /// `gather_rows`/`combine_rows`: no atomic adds, slow in bf16 on CUDA) and SwiGLU runs as one
    /// autograd function over the [gate | up] halves (`swiglu`); on CUDA SwiGLU and the combine run
    /// as NVRTC kernels (`swiglu_kernel` / `combine_kernel` off: ATen operations).
    /// `moe_fused` off: the same steps as tensor ops (`index_copy`, `narrow`), the
    /// reference these are tested against.
    pub fn forward_grouped(&self, x: &Tensor, weights: &Tensor, idx: &Tensor) -> Tensor {
        let (experts, k) = (self.gate_up_proj.size()[0], idx.size()[1]);
        let (n, width) = (x.size()[0], x.size()[1]);
        let inter = self.down_proj.size()[2];
        // order[j]: the (token, slot) pair at row j of the expert-sorted rows; rank = its inverse.
        let (_, order) = idx.view([-1]).sort_stable(true, 0, false);
        let rank = order.argsort(0, false);
        let offsets = tokens_per_expert(idx, experts).cumsum(0, Kind::Int);
        let kind = x.kind();
        let gate_up = self.gate_up_proj.to_kind(kind).transpose(1, 2);
        let down = self.down_proj.to_kind(kind).transpose(1, 2);
        if self.fast.moe_fused {
            let rows = openseek_kernels::gather_rows(x, &order.floor_divide_scalar(k), &rank).expect("gather_rows");
            let h = rows.internal_grouped_mm(&gate_up, Some(&offsets), None, None);
            let h = openseek_kernels::swiglu(&h, self.fast.swiglu_kernel).expect("swiglu");
            let y = h.internal_grouped_mm(&down, Some(&offsets), None, None);
            return openseek_kernels::combine_rows(&y, &weights.to_kind(kind), &rank, &order, self.fast.combine_kernel).expect("combine_rows");
        }
        let pairs = x.unsqueeze(1).expand([n, k, width], false).reshape([n * k, width]);
        let rows = pairs.empty_like().index_copy(0, &rank, &pairs);
        let h = rows.internal_grouped_mm(&gate_up, Some(&offsets), None, None);
        let h = (h.narrow(-1, 0, inter).silu() * h.narrow(-1, inter, inter)).contiguous();
        let y = h.internal_grouped_mm(&down, Some(&offsets), None, None);
        let y = y.empty_like().index_copy(0, &order, &y).view([n, k, width]);
        (y * weights.to_kind(kind).unsqueeze(-1)).sum_dim_intlist(1, false, kind)
    }

    /// Experts one after another in id order (transformers' own order).
    pub fn forward_loop(&self, x: &Tensor, weights: &Tensor, idx: &Tensor) -> Tensor {
        let mut out = x.zeros_like();
        let inter = self.down_proj.size()[2];
        let (gate_up, down) = (self.gate_up_proj.to_kind(x.kind()), self.down_proj.to_kind(x.kind()));
        for e in 0..self.gate_up_proj.size()[0] {
            let hits = idx.eq(e).nonzero();
            if hits.size()[0] == 0 {
                continue;
            }
            let token = hits.select(1, 0);
            let slot = hits.select(1, 1);
            let h = x.index_select(0, &token).linear::<Tensor>(&gate_up.get(e), None);
            let h = h.narrow(-1, 0, inter).silu() * h.narrow(-1, inter, inter);
            let y = h.linear::<Tensor>(&down.get(e), None);
            let w = weights.index_select(0, &token).gather(1, &slot.unsqueeze(1), false);
            out = out.index_add(0, &token, &(y * w).to_kind(x.kind()));
        }
        out
    }
}

pub struct Moe {
    pub gate: Router,
    pub experts: Experts,
    pub shared_experts: Mlp,
}

impl Moe {
    pub fn set_fast_paths(&mut self, fast: FastPaths) {
        self.experts.fast = fast;
        self.shared_experts.fast = fast;
    }

    pub(crate) fn take(w: &mut Weights, p: &str, cfg: &Config) -> Moe {
        Moe {
            gate: Router {
                weight: take(w, &format!("{p}.gate.weight")),
                bias: take(w, &format!("{p}.gate.e_score_correction_bias")).to_kind(Kind::Float),
                top_k: cfg.num_experts_per_tok,
                n_group: cfg.n_group,
                topk_group: cfg.topk_group,
                norm_topk_prob: cfg.norm_topk_prob,
                scaling: cfg.routed_scaling_factor,
            },
            experts: Experts {
                gate_up_proj: take(w, &format!("{p}.experts.gate_up_proj")),
                down_proj: take(w, &format!("{p}.experts.down_proj")),
                fast: FastPaths::default(),
            },
            shared_experts: Mlp::take(w, &format!("{p}.shared_experts")),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_train(x, &AuxCoefficients::default()).0
    }

    /// x [B, T, hidden] -> (output, what the router did). The auxiliary losses are computed when
    /// their coefficients are non-zero, already multiplied by them.
    pub fn forward_train(&self, x: &Tensor, aux: &AuxCoefficients) -> (Tensor, RoutingStats) {
        let shape = x.size();
        let flat = x.view([-1, *shape.last().unwrap()]);
        let r = self.gate.route(&flat);
        let routed = self.experts.forward(&flat, &r.weights, &r.idx).view(shape.as_slice());
        let experts = self.gate.num_experts();
        let load = tokens_per_expert(&r.idx, experts);
        let seq_aux_loss = (aux.seq_aux_loss != 0.0).then(|| {
            sequence_aux_loss(&r.scores, &r.idx, shape[0], self.gate.top_k()) * aux.seq_aux_loss
        });
        let z_loss = (aux.z_loss != 0.0).then(|| {
            r.logits.logsumexp([-1], false).square().mean(Kind::Float) * aux.z_loss
        });
        (routed + self.shared_experts.forward(x), RoutingStats { load, seq_aux_loss, z_loss })
    }
}

/// How many of the (token, slot) choices in `idx` went to each of `experts` experts, int64 [E].
/// A scatter-add rather than `bincount`, which waits for the device to size its output.
pub fn tokens_per_expert(idx: &Tensor, experts: i64) -> Tensor {
    let flat = idx.view([-1]);
    Tensor::zeros([experts], (Kind::Int64, idx.device())).scatter_add(0, &flat, &flat.ones_like())
}

/// The coefficients of the router's auxiliary losses (0 = not computed).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuxCoefficients {
    /// DeepSeek-V3's complementary sequence-wise balance loss (Megatron `--moe-aux-loss-coeff`
    /// with `seq_aux_loss`).
    pub seq_aux_loss: f64,
    /// Router z-loss: mean over tokens of logsumexp(router logits)² (Megatron `--moe-z-loss-coeff`).
    pub z_loss: f64,
}

/// What one MoE layer's router did on a batch.
pub struct RoutingStats {
    /// Tokens routed to each expert [E], int64, detached.
    pub load: Tensor,
    /// The sequence-wise balance loss times its coefficient (a scalar with gradient).
    pub seq_aux_loss: Option<Tensor>,
    /// The router z-loss times its coefficient.
    pub z_loss: Option<Tensor>,
}

/// DeepSeek-V3's sequence-wise balance loss for `batch` sequences of equal length:
/// per sequence, sum over experts of f_e * P_e with f_e = E/(k T) * tokens of the sequence routed
/// to e and P_e = the mean over its tokens of the normalised score s_e / sum_j s_j; averaged over
/// the sequences.
pub fn sequence_aux_loss(scores: &Tensor, idx: &Tensor, batch: i64, top_k: i64) -> Tensor {
    let (n, experts) = (scores.size()[0], scores.size()[1]);
    let t = n / batch;
    let routed = scores.zeros_like().scatter_value(1, idx, 1.0).view([batch, t, experts]).sum_dim_intlist(1, false, Kind::Float);
    let f = routed * (experts as f64 / (top_k * t) as f64);
    let p = (scores / scores.sum_dim_intlist(-1, true, Kind::Float)).view([batch, t, experts]).mean_dim(1, false, Kind::Float);
    (f * p).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn grouped_experts_equal_the_loop() {
        tch::manual_seed(7);
        let (e, h, i, n, k) = (8, 64, 32, 50, 2);
        let experts = Experts {
            gate_up_proj: Tensor::randn([e, 2 * i, h], (Kind::Float, Device::Cpu)) / 8.0,
            down_proj: Tensor::randn([e, h, i], (Kind::Float, Device::Cpu)) / 6.0,
            fast: FastPaths::default(),
        };
        let x = Tensor::randn([n, h], (Kind::Float, Device::Cpu));
        // Expert 3 gets no token: an empty group.
        let idx = Tensor::randint(e - 1, [n, k], (Kind::Int64, Device::Cpu));
        let idx = idx.where_self(&idx.ne(3), &Tensor::from(e - 1));
        let w = Tensor::rand([n, k], (Kind::Float, Device::Cpu));
        let a = experts.forward_loop(&x, &w, &idx);
        let b = experts.forward_grouped(&x, &w, &idx);
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "grouped differs from the loop by {diff}");
        assert!(a.abs().max().double_value(&[]) > 0.1);
    }

    /// The grouped path's backward (what training uses on CUDA) equals the loop's: gradients of
    /// the input, the routing weights and both expert weights.
    #[test]
    fn grouped_experts_backward_equals_the_loop() {
        tch::manual_seed(11);
        let (e, h, i, n, k) = (8, 32, 16, 40, 2);
        let gate_up = Tensor::randn([e, 2 * i, h], (Kind::Float, Device::Cpu)) / 6.0;
        let down = Tensor::randn([e, h, i], (Kind::Float, Device::Cpu)) / 4.0;
        let x = Tensor::randn([n, h], (Kind::Float, Device::Cpu));
        let w = Tensor::rand([n, k], (Kind::Float, Device::Cpu));
        let idx = Tensor::randint(e - 1, [n, k], (Kind::Int64, Device::Cpu));
        let idx = idx.where_self(&idx.ne(5), &Tensor::from(e - 1));
        let probe = Tensor::randn([n, h], (Kind::Float, Device::Cpu));
        let grads = |grouped: bool| {
            let leaves: Vec<Tensor> = [&gate_up, &down, &x, &w].iter().map(|t| t.detach().copy().set_requires_grad(true)).collect();
            let experts = Experts { gate_up_proj: leaves[0].shallow_clone(), down_proj: leaves[1].shallow_clone(), fast: FastPaths::default() };
            let y = if grouped {
                experts.forward_grouped(&leaves[2], &leaves[3], &idx)
            } else {
                experts.forward_loop(&leaves[2], &leaves[3], &idx)
            };
            (y * &probe).sum(Kind::Float).backward();
            leaves.iter().map(|l| l.grad()).collect::<Vec<_>>()
        };
        let (a, b) = (grads(false), grads(true));
        for (name, (ga, gb)) in ["gate_up_proj", "down_proj", "x", "weights"].iter().zip(a.iter().zip(&b)) {
            let diff = (ga - gb).abs().max().double_value(&[]);
            let scale = ga.abs().max().double_value(&[]);
            assert!(scale > 1e-3, "{name}: no gradient");
            assert!(diff <= 1e-5 * scale.max(1.0), "{name}: grouped backward differs from the loop by {diff}");
        }
    }
}
