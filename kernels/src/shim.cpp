// The ATen operations the model and trainer need that tch 0.24 does not expose. Tensors cross
// the boundary as tch's handles (at::Tensor*); every function catches C++ exceptions and returns
// the message (malloc'd, freed by Rust) or null on success. Streams go through the device-generic
// accelerator API; only CUDA graphs need CUDA's headers, compiled in where build.rs finds them
// beside the build's torch (OSKERN_CUDA_GRAPHS), so the rest builds on a machine without CUDA.

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
#ifdef OSKERN_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>
#endif

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

char *error_of(const std::exception &e) {
  return strdup(e.what());
}

std::vector<Tensor> list_of(Tensor *const *ts, size_t n) {
  std::vector<Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) out.push_back(*ts[i]);
  return out;
}

// One SwiGLU kernel launch, filled here and run by the Rust launcher (`Launch` in swiglu.rs):
// forward h [rows, 2I] -> out [rows, I]; backward h, dy [rows, I] -> out = dh [rows, 2I]. Row
// strides in elements, last dimensions contiguous; dtype 0 = bf16, 1 = fp32.
struct SwiGluLaunch {
  const void *h;
  const void *dy;
  void *out;
  int64_t rows, inter, h_stride, dy_stride, out_stride;
  int32_t dtype, device, backward;
};
typedef int (*SwiGluLauncher)(const SwiGluLaunch *, char *err, size_t cap);

// A [rows, width] view (or copy) of t with a contiguous last dimension.
Tensor as_rows(const Tensor &t) {
  auto r = t.reshape({-1, t.size(-1)});
  return r.size(1) > 1 && r.stride(1) != 1 ? r.contiguous() : r;
}

void run_swiglu(SwiGluLauncher launcher, const Tensor &h, const Tensor *dy, const Tensor &out) {
  SwiGluLaunch l{h.data_ptr(), dy ? dy->data_ptr() : nullptr, out.data_ptr(), h.size(0), h.size(1) / 2, h.stride(0),
                 dy ? dy->stride(0) : 0, out.stride(0), h.scalar_type() == at::kBFloat16 ? 0 : 1,
                 static_cast<int32_t>(h.get_device()), dy ? 1 : 0};
  char err[1024] = {0};
  if (launcher(&l, err, sizeof err) != 0) throw std::runtime_error(std::string("swiglu kernel: ") + err);
}

// silu(h[..., :I]) * h[..., I:] for h [..., 2I] (gate columns first). The backward writes both
// halves of dh into one tensor, where autograd through two narrow() views would fill two zero
// tensors, copy each half in and add them. With a launcher (the address of a Rust function, 0 for
// none), CUDA bf16/fp32 tensors go through the NVRTC kernels it launches, and only h is kept (silu
// is recomputed); otherwise the same operations (silu, mul, silu_backward) and roundings as the
// composition, keeping silu(gate) from the forward pass.
struct SwiGlu : public torch::autograd::Function<SwiGlu> {
  static Tensor forward(AutogradContext *ctx, const Tensor &h, int64_t launcher) {
    auto i = h.size(-1) / 2;
    bool kernel = launcher != 0 && h.is_cuda() && (h.scalar_type() == at::kBFloat16 || h.scalar_type() == at::kFloat);
    ctx->saved_data["launcher"] = kernel ? launcher : int64_t{0};
    if (kernel) {
      ctx->save_for_backward({h});
      auto rows = as_rows(h);
      auto out = at::empty({rows.size(0), i}, h.options());
      run_swiglu(reinterpret_cast<SwiGluLauncher>(launcher), rows, nullptr, out);
      auto sizes = h.sizes().vec();
      sizes.back() = i;
      return out.view(sizes);
    }
    auto s = at::silu(h.narrow(-1, 0, i));
    ctx->save_for_backward({h, s});
    return s * h.narrow(-1, i, i);
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &h = saved[0];
    auto i = h.size(-1) / 2;
    auto launcher = ctx->saved_data["launcher"].toInt();
    if (launcher != 0) {
      auto rows = as_rows(h);
      auto dy = as_rows(grads[0].to(h.scalar_type()));
      auto dh = at::empty({rows.size(0), 2 * i}, h.options());
      run_swiglu(reinterpret_cast<SwiGluLauncher>(launcher), rows, &dy, dh);
      return {dh.view(h.sizes()), Tensor()};
    }
    auto &s = saved[1];
    auto g = h.narrow(-1, 0, i), u = h.narrow(-1, i, i);
    auto dh = at::empty_like(h, at::MemoryFormat::Contiguous);
    auto dg = dh.narrow(-1, 0, i), du = dh.narrow(-1, i, i);
    at::mul_out(du, grads[0], s);
    at::silu_backward_out(dg, grads[0] * u, g);
    return {dh, Tensor()};
  }
};

// One launch of the rope kernels, filled here and run by the Rust launcher (`Launch` in rope.rs):
// mode 0/1 the query's forward/backward, 2/3 the key's; rows are (token, head) pairs.
struct RopeLaunch {
  const void *x, *pe, *dv, *cos, *sin;
  void *out, *dpe;
  int64_t rows, tokens, heads, nope, rope, v, x_stride, pe_stride, cos_batch_stride;
  int32_t dtype, device, mode, interleave;
};
typedef int (*RopeLauncher)(const RopeLaunch *, char *err, size_t cap);

// A launch's common fields: x the rows a kernel reads ([rows, width], rows uniform), tables c/s
// [Bc, T, rope], out what it writes.
RopeLaunch rope_launch(int32_t mode, const Tensor &x, const Tensor &c, const Tensor &s, const Tensor &out, int64_t heads,
                       int64_t nope, bool inter) {
  RopeLaunch l{};
  l.x = x.data_ptr();
  l.cos = c.data_ptr();
  l.sin = s.data_ptr();
  l.out = out.data_ptr();
  l.rows = x.size(0);
  l.tokens = c.size(1);
  l.heads = heads;
  l.nope = nope;
  l.rope = c.size(2);
  l.x_stride = x.stride(0);
  l.cos_batch_stride = c.size(0) == 1 ? 0 : c.stride(0);
  l.dtype = x.scalar_type() == at::kBFloat16 ? 0 : 1;
  l.device = static_cast<int32_t>(x.get_device());
  l.mode = mode;
  l.interleave = inter ? 1 : 0;
  return l;
}

void run_rope(int64_t launcher, const RopeLaunch &l) {
  char err[1024] = {0};
  if (reinterpret_cast<RopeLauncher>(launcher)(&l, err, sizeof err) != 0) throw std::runtime_error(std::string("rope kernel: ") + err);
}

bool rope_kernel_for(int64_t launcher, const Tensor &x) {
  return launcher != 0 && x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat);
}

// cos/sin [T, rope] or [B, T, rope] as [Bc, T, rope] contiguous in x's dtype, checked against x [B, T, ...].
Tensor rope_table(const Tensor &c, const Tensor &x, int64_t rope) {
  auto t = (c.dim() == 2 ? c.unsqueeze(0) : c).to(x.scalar_type()).contiguous();
  TORCH_CHECK(t.dim() == 3 && (t.size(0) == 1 || t.size(0) == x.size(0)) && t.size(1) == x.size(1) && t.size(2) == rope,
              "rope tables ", c.sizes(), " do not fit ", x.sizes(), " with ", rope, " rotated columns");
  return t;
}

// The tables' columns for the pairs' first and second members' outputs (interleaved: the first
// half for both, as the composition narrows them).
std::pair<Tensor, Tensor> table_halves(const Tensor &t, bool inter) {
  auto half = t.size(-1) / 2;
  return {t.narrow(-1, 0, half), inter ? t.narrow(-1, 0, half) : t.narrow(-1, half, half)};
}

// x [..., rope] rotated by tables broadcasting against it: pairs (x[2i], x[2i+1]) when
// interleaved, else (x[i], x[half + i]); out = [a c1 - b s1 | b c2 + a s2] over the pairs (a, b).
Tensor rotate(const Tensor &x, const Tensor &cos, const Tensor &sin, bool inter) {
  auto d = x.size(-1);
  auto a = inter ? x.slice(-1, 0, d, 2) : x.narrow(-1, 0, d / 2);
  auto b = inter ? x.slice(-1, 1, d, 2) : x.narrow(-1, d / 2, d / 2);
  auto [c1, c2] = table_halves(cos, inter);
  auto [s1, s2] = table_halves(sin, inter);
  return at::cat({a * c1 - b * s1, b * c2 + a * s2}, -1);
}

// rotate's backward: the gradient dy [..., rope] of its output back onto x's pairs.
Tensor rotate_back(const Tensor &dy, const Tensor &cos, const Tensor &sin, bool inter) {
  auto half = dy.size(-1) / 2;
  auto d1 = dy.narrow(-1, 0, half), d2 = dy.narrow(-1, half, half);
  auto [c1, c2] = table_halves(cos, inter);
  auto [s1, s2] = table_halves(sin, inter);
  auto da = d1 * c1 + d2 * s2, db = d2 * c2 - d1 * s1;
  return inter ? at::stack({da, db}, -1).flatten(-2) : at::cat({da, db}, -1);
}

// MLA's query [B, T, H, nope + rope] with its rope columns rotated, contiguous. Only the tables
// are kept for the backward pass. With a launcher, CUDA bf16/fp32 tensors go through its NVRTC
// kernels; otherwise ATen operations.
struct RopeQuery : public torch::autograd::Function<RopeQuery> {
  static Tensor forward(AutogradContext *ctx, const Tensor &q, const Tensor &cos, const Tensor &sin, int64_t nope, bool inter,
                        int64_t launcher) {
    TORCH_CHECK(q.dim() == 4 && nope >= 0 && nope < q.size(3), "rope_query: q ", q.sizes(), " with ", nope, " nope columns");
    auto rope = q.size(3) - nope;
    TORCH_CHECK(rope % 2 == 0, "rope_query: an odd number of rotated columns (", rope, ")");
    auto c = rope_table(cos, q, rope), s = rope_table(sin, q, rope);
    bool kernel = rope_kernel_for(launcher, q);
    ctx->save_for_backward({c, s});
    ctx->saved_data["nope"] = nope;
    ctx->saved_data["inter"] = inter;
    ctx->saved_data["launcher"] = kernel ? launcher : int64_t{0};
    if (!kernel) return at::cat({q.narrow(-1, 0, nope), rotate(q.narrow(-1, nope, rope), c.unsqueeze(2), s.unsqueeze(2), inter)}, -1);
    auto rows = as_rows(q);
    auto out = at::empty(q.sizes(), q.options());
    run_rope(launcher, rope_launch(0, rows, c, s, out, q.size(2), nope, inter));
    return out;
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &c = saved[0], &s = saved[1];
    auto nope = ctx->saved_data["nope"].toInt();
    auto inter = ctx->saved_data["inter"].toBool();
    auto launcher = ctx->saved_data["launcher"].toInt();
    auto dy = grads[0];
    auto rope = dy.size(3) - nope;
    if (launcher == 0) {
      auto dq = at::cat({dy.narrow(-1, 0, nope), rotate_back(dy.narrow(-1, nope, rope), c.unsqueeze(2), s.unsqueeze(2), inter)}, -1);
      return {dq, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    dy = dy.to(c.scalar_type()).contiguous();
    auto dq = at::empty(dy.sizes(), dy.options());
    run_rope(launcher, rope_launch(1, dy.view({-1, dy.size(3)}), c, s, dq, dy.size(2), nope, inter));
    return {dq, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// MLA's key [B, T, H, nope + rope]: kv [B, T, H, nope + v]'s nope columns, then k_pe [B, T, rope]
// rotated and repeated on every head (contiguous); and the values kv[..., nope:] (a view). The
// backward writes kv's gradient [dk_nope | dv] in one tensor and k_pe's from dk's rope columns
// summed over heads. Kernels as in RopeQuery.
struct RopeKey : public torch::autograd::Function<RopeKey> {
  static variable_list forward(AutogradContext *ctx, const Tensor &kv, const Tensor &pe, const Tensor &cos, const Tensor &sin,
                               int64_t nope, bool inter, int64_t launcher) {
    TORCH_CHECK(kv.dim() == 4 && nope >= 0 && nope <= kv.size(3) && pe.dim() == 3 && pe.size(0) == kv.size(0) && pe.size(1) == kv.size(1) &&
                    pe.size(2) % 2 == 0 && pe.scalar_type() == kv.scalar_type(),
                "rope_key: kv ", kv.sizes(), " with ", nope, " nope columns and k_pe ", pe.sizes(), " do not fit");
    auto b = kv.size(0), t = kv.size(1), heads = kv.size(2), rope = pe.size(2), vdim = kv.size(3) - nope;
    auto c = rope_table(cos, kv, rope), s = rope_table(sin, kv, rope);
    bool kernel = rope_kernel_for(launcher, kv);
    ctx->save_for_backward({c, s});
    ctx->saved_data["nope"] = nope;
    ctx->saved_data["v"] = vdim;
    ctx->saved_data["inter"] = inter;
    ctx->saved_data["launcher"] = kernel ? launcher : int64_t{0};
    auto v = kv.narrow(-1, nope, vdim);
    if (!kernel) {
      auto k_rot = rotate(pe.unsqueeze(2), c.unsqueeze(2), s.unsqueeze(2), inter).expand({b, t, heads, rope});
      return {at::cat({kv.narrow(-1, 0, nope), k_rot}, -1), v};
    }
    auto rows = as_rows(kv), pe_rows = as_rows(pe);
    auto k = at::empty({b, t, heads, nope + rope}, kv.options());
    auto l = rope_launch(2, rows, c, s, k, heads, nope, inter);
    l.pe = pe_rows.data_ptr();
    l.pe_stride = pe_rows.stride(0);
    l.v = vdim;
    run_rope(launcher, l);
    return {k, v};
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &c = saved[0], &s = saved[1];
    auto nope = ctx->saved_data["nope"].toInt(), vdim = ctx->saved_data["v"].toInt();
    auto inter = ctx->saved_data["inter"].toBool();
    auto launcher = ctx->saved_data["launcher"].toInt();
    auto dk = grads[0], dv = grads[1];
    auto &like = dk.defined() ? dk : dv;
    auto b = like.size(0), t = like.size(1), heads = like.size(2), rope = c.size(2);
    if (!dk.defined()) dk = at::zeros({b, t, heads, nope + rope}, dv.options());
    if (!dv.defined()) dv = at::zeros({b, t, heads, vdim}, dk.options());
    if (launcher == 0) {
      auto dkv = at::cat({dk.narrow(-1, 0, nope), dv}, -1);
      auto dpe = rotate_back(dk.narrow(-1, nope, rope).sum(2), c, s, inter);
      return {dkv, dpe, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    dk = dk.to(c.scalar_type()).contiguous();
    dv = dv.to(c.scalar_type()).contiguous();
    auto dkv = at::empty({b, t, heads, nope + vdim}, dk.options());
    auto dpe = at::empty({b, t, rope}, dk.options());
    auto l = rope_launch(3, dk.view({-1, nope + rope}), c, s, dkv, heads, nope, inter);
    l.dv = dv.data_ptr();
    l.dpe = dpe.data_ptr();
    l.v = vdim;
    run_rope(launcher, l);
    return {dkv, dpe, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The routed experts' rows: rows[j] = x[token[j]] (one gather); `rank` [n*k] is where the pair
// (token t, slot s) sits among the rows, so dx[t] = sum_s drows[rank[t*k + s]] (a gather and a sum,
// no atomic adds).
struct GatherRows : public torch::autograd::Function<GatherRows> {
  static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &token, const Tensor &rank) {
    ctx->save_for_backward({rank});
    ctx->saved_data["n"] = x.size(0);
    return x.index_select(0, token);
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto rank = ctx->get_saved_variables()[0];
    auto n = ctx->saved_data["n"].toInt();
    auto d = grads[0].index_select(0, rank);
    return {d.view({n, -1, d.size(1)}).sum(1), Tensor(), Tensor()};
  }
};

// One combine kernel launch, filled here and run by the Rust launcher (`Launch` in combine.rs), all
// tensors contiguous: forward y [P, H], w [n, k], rank [n*k] -> out [n, H]; backward the same and
// dout [n, H] -> out = dy [P, H], dw [n, k]. dtype 0 = bf16, 1 = fp32.
struct CombineLaunch {
  const void *y, *w;
  const int64_t *rank;
  const void *dout;
  void *out, *dw;
  int64_t tokens, k, width;
  int32_t dtype, device, backward;
};
typedef int (*CombineLauncher)(const CombineLaunch *, char *err, size_t cap);

void run_combine(int64_t launcher, const Tensor &y, const Tensor &w, const Tensor &rank, const Tensor *dout, const Tensor &out,
                 const Tensor *dw) {
  CombineLaunch l{y.data_ptr(), w.data_ptr(), rank.data_ptr<int64_t>(), dout ? dout->data_ptr() : nullptr, out.data_ptr(),
                  dw ? dw->data_ptr() : nullptr, w.size(0), w.size(1), y.size(1), y.scalar_type() == at::kBFloat16 ? 0 : 1,
                  static_cast<int32_t>(y.get_device()), dout ? 1 : 0};
  char err[1024] = {0};
  if (reinterpret_cast<CombineLauncher>(launcher)(&l, err, sizeof err) != 0) throw std::runtime_error(std::string("combine kernel: ") + err);
}

// The experts' outputs back in token order, weighted and summed: out[t] = sum_s w[t, s] *
// y[rank[t*k + s]]; `order` is rank's inverse. With a launcher (the address of a Rust function, 0
// for none), CUDA bf16/fp32 inputs with k <= 32 go through its NVRTC kernels (one pass each way,
// only y, w and rank kept); otherwise a gather and a batched [1 x k] @ [k x H] product per token,
// the backward's gather by `order`.
struct CombineRows : public torch::autograd::Function<CombineRows> {
  static Tensor forward(AutogradContext *ctx, const Tensor &y, const Tensor &w, const Tensor &rank, const Tensor &order,
                        int64_t launcher) {
    auto n = w.size(0), k = w.size(1);
    bool kernel = launcher != 0 && y.is_cuda() && (y.scalar_type() == at::kBFloat16 || y.scalar_type() == at::kFloat) &&
                  w.scalar_type() == y.scalar_type() && rank.scalar_type() == at::kLong && k >= 1 && k <= 32;
    ctx->saved_data["launcher"] = kernel ? launcher : int64_t{0};
    if (kernel) {
      TORCH_CHECK(y.dim() == 2 && w.dim() == 2 && y.size(0) == n * k && rank.numel() == n * k,
                  "combine_rows: y ", y.sizes(), ", w ", w.sizes(), " and rank ", rank.sizes(), " do not fit");
      auto yc = y.contiguous(), wc = w.contiguous(), rc = rank.contiguous();
      ctx->save_for_backward({yc, wc, rc});
      auto out = at::empty({n, y.size(1)}, y.options());
      run_combine(launcher, yc, wc, rc, nullptr, out, nullptr);
      return out;
    }
    auto yg = y.index_select(0, rank).view({n, k, y.size(1)});
    ctx->save_for_backward({yg, w, order});
    return at::bmm(w.unsqueeze(1), yg).squeeze(1);
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto launcher = ctx->saved_data["launcher"].toInt();
    if (launcher != 0) {
      auto &y = saved[0], &w = saved[1], &rank = saved[2];
      auto dout = grads[0].to(y.scalar_type()).contiguous();
      auto dy = at::empty_like(y), dw = at::empty_like(w);
      run_combine(launcher, y, w, rank, &dout, dy, &dw);
      return {dy, dw, Tensor(), Tensor(), Tensor()};
    }
    auto &yg = saved[0], &w = saved[1], &order = saved[2];
    auto dout = grads[0].contiguous();
    auto dw = at::bmm(yg, dout.unsqueeze(2)).squeeze(2);
    auto dyg = w.unsqueeze(2) * dout.unsqueeze(1);  // a K = 1 bmm runs a slow generic kernel
    auto dy = dyg.view({-1, dyg.size(2)}).index_select(0, order);
    return {dy, dw, Tensor(), Tensor(), Tensor()};
  }
};

// Causal attention within segments of packed sequences (documents): q, k [total, H, Dqk], v
// [total, H, Dv] (last dimensions contiguous, Dv <= Dqk), cu_seqlens int32 [segments + 1] the
// segments' running starts (0 first, total last), max_len the longest segment; a token attends to
// the tokens of its own segment up to itself. Out [total, H, Dv] contiguous. CUDA, fp16/bf16:
// flash attention 2's varlen kernels (`_flash_attention_forward` / `_backward`), which need Dv ==
// Dqk, so v is padded with zeros to Dqk and the output narrowed (as SDPA's flash path pads). The
// backward keeps q, k, the padded v, the padded output, the logsumexp and the RNG state.
// (cuDNN's ragged kernels, `_cudnn_attention_forward` with cumulative lengths, took any Dv but
// gave wrong gradients once several layers' calls interleaved, torch 2.11 on an H100: not used.)
struct VarlenAttention : public torch::autograd::Function<VarlenAttention> {
  static Tensor forward(AutogradContext *ctx, const Tensor &q, const Tensor &k, const Tensor &v, const Tensor &cu_seqlens,
                        int64_t max_len, double scale) {
    TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.dim() == 3 && v.size(0) == q.size(0) && v.size(1) == q.size(1) &&
                    v.size(2) <= q.size(2),
                "varlen_attention: q ", q.sizes(), ", k ", k.sizes(), " and v ", v.sizes(), " do not fit");
    TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.scalar_type() == at::kInt && cu_seqlens.device() == q.device(),
                "varlen_attention: cu_seqlens must be int32 [segments + 1] on the inputs' device");
    auto dqk = q.size(2), dv = v.size(2);
    ctx->saved_data["max_len"] = max_len;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dv"] = dv;
    auto vp = dv < dqk ? at::constant_pad_nd(v, {0, dqk - dv}) : v;
    auto r = at::_flash_attention_forward(q, k, vp, cu_seqlens, cu_seqlens, max_len, max_len, 0.0, true, false, scale);
    auto out = std::get<0>(r);
    ctx->save_for_backward({q, k, vp, out, std::get<1>(r), std::get<2>(r), std::get<3>(r), cu_seqlens});
    return dv < dqk ? out.narrow(-1, 0, dv).contiguous() : out;
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto &q = s[0], &k = s[1], &vp = s[2], &out = s[3], &lse = s[4], &rng = s[5], &unused = s[6], &cu = s[7];
    auto max_len = ctx->saved_data["max_len"].toInt();
    auto scale = ctx->saved_data["scale"].toDouble();
    auto dv = ctx->saved_data["dv"].toInt(), dqk = q.size(2);
    auto grad = grads[0].to(q.scalar_type()).contiguous();
    if (dv < dqk) grad = at::constant_pad_nd(grad, {0, dqk - dv});
    auto [dq, dk, dvp] = at::_flash_attention_backward(grad, q, k, vp, out, lse, cu, cu, max_len, max_len, 0.0, true, rng, unused, scale);
    return {dq, dk, dv < dqk ? dvp.narrow(-1, 0, dv) : dvp, Tensor(), Tensor(), Tensor()};
  }
};

#ifdef OSKERN_CUDA_GRAPHS
// A CUDA graph being captured or captured: ATen's CUDAGraph (its own memory pool in the caching
// allocator, so that the tensors the captured work allocates are kept for its replays), the side
// stream it is captured on and the stream that was current before, restored when capture ends.
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStream caller;
  explicit Graph(c10::DeviceIndex device)
      : side(c10::cuda::getStreamFromPool(false, device)), caller(c10::cuda::getCurrentCUDAStream(device)) {}
  void restore_caller() {
    if (c10::cuda::getCurrentCUDAStream(side.device_index()) == side) c10::cuda::setCurrentCUDAStream(caller);
  }
};
#endif

}  // namespace

#define GUARD(...)                          \
  try {                                     \
    __VA_ARGS__;                            \
    return nullptr;                         \
  } catch (const std::exception &e) {       \
    return error_of(e);                     \
  }

extern "C" {

// The L2 norm of every tensor (at::_foreach_norm, fp32 results), written to out[0..n] as new handles.
char *oskern_foreach_norm(Tensor *const *tensors, size_t n, Tensor **out) {
  GUARD({
    at::NoGradGuard no_grad;
    auto norms = at::_foreach_norm(list_of(tensors, n), 2, at::kFloat);
    for (size_t i = 0; i < n; i++) out[i] = new Tensor(norms[i]);
  })
}

// The current stream of the accelerator's device `device` (CUDA here): its id and native handle
// (cudaStream_t as an integer; 0 is the legacy default stream).
char *oskern_current_stream(int device, int64_t *id, uint64_t *handle) {
  GUARD({
    auto stream = at::accelerator::getCurrentStream(static_cast<c10::DeviceIndex>(device));
    *id = stream.id();
    *handle = reinterpret_cast<uint64_t>(stream.native_handle());
  })
}

// The caching allocator of device `device` (all pools): bytes allocated now and at the peak, bytes
// reserved from the driver now and at the peak, written to out[0..4].
char *oskern_memory_stats(int device, int64_t *out) {
  GUARD({
    auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
  })
}

// Give the caching allocator's unused blocks back to the driver, and start its peaks afresh.
char *oskern_release_cached_memory(int device) {
  GUARD({
    at::accelerator::emptyCache();
    at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  })
}

char *oskern_synchronize(int device) {
  GUARD(at::accelerator::synchronizeDevice(static_cast<c10::DeviceIndex>(device)))
}

// Causal attention within each segment of packed sequences (see VarlenAttention).
char *oskern_varlen_attention(Tensor *q, Tensor *k, Tensor *v, Tensor *cu_seqlens, int64_t max_len, double scale, Tensor **out) {
  GUARD(*out = new Tensor(VarlenAttention::apply(*q, *k, *v, *cu_seqlens, max_len, scale)))
}

char *oskern_swiglu(Tensor *h, SwiGluLauncher launcher, Tensor **out) {
  GUARD(*out = new Tensor(SwiGlu::apply(*h, reinterpret_cast<int64_t>(launcher))))
}

char *oskern_rope_query(Tensor *q, Tensor *cos, Tensor *sin, int64_t nope, bool inter, RopeLauncher launcher, Tensor **out) {
  GUARD(*out = new Tensor(RopeQuery::apply(*q, *cos, *sin, nope, inter, reinterpret_cast<int64_t>(launcher))))
}

char *oskern_rope_key(Tensor *kv, Tensor *pe, Tensor *cos, Tensor *sin, int64_t nope, bool inter, RopeLauncher launcher, Tensor **out) {
  GUARD({
    auto r = RopeKey::apply(*kv, *pe, *cos, *sin, nope, inter, reinterpret_cast<int64_t>(launcher));
    out[0] = new Tensor(r[0]);
    out[1] = new Tensor(r[1]);
  })
}

char *oskern_gather_rows(Tensor *x, Tensor *token, Tensor *rank, Tensor **out) {
  GUARD(*out = new Tensor(GatherRows::apply(*x, *token, *rank)))
}

char *oskern_combine_rows(Tensor *y, Tensor *w, Tensor *rank, Tensor *order, CombineLauncher launcher, Tensor **out) {
  GUARD(*out = new Tensor(CombineRows::apply(*y, *w, *rank, *order, reinterpret_cast<int64_t>(launcher))))
}

// out = accumulate * out + alpha * (m1 @ m2)[:rows of out] without autograd (m1 may have padding
// rows); without accumulate out's contents are not read (it may be uninitialised). On CUDA with
// 16-bit m1/m2 and an fp32 out: the scaled product in the inputs' dtype (alpha in the GEMM's
// epilogue), then one copy or add in fp32 (an fp32-output GEMM, addmm with out_dtype, ran 1.8x
// slower on an H100); elsewhere addmm_ in out's dtype.
char *oskern_addmm_acc(Tensor *out, Tensor *m1, Tensor *m2, double alpha, bool accumulate) {
  GUARD({
    at::NoGradGuard no_grad;
    auto rows = out->size(0);
    if (out->is_cuda() && m1->scalar_type() != out->scalar_type()) {
      auto product = at::addmm(at::zeros({}, m1->options()), *m1, *m2, 0, alpha).narrow(0, 0, rows);
      if (accumulate) {
        out->add_(product);
      } else {
        out->copy_(product);
      }
    } else {
      auto a = m1->narrow(0, 0, rows).to(out->scalar_type());
      out->addmm_(a, m2->to(out->scalar_type()), accumulate ? 1 : 0, alpha);
    }
  })
}

// CUDA graphs (CUDA builds only). oskern_graph_new makes a graph and a side stream of `device` the
// current stream, after the device's queued work; what runs next goes there (a warm-up, then the
// work to capture between capture_begin and capture_end, which makes the caller's stream current
// again). Replays run on the current stream. oskern_graph_free also restores the caller's stream
// if capture never ended.
#ifdef OSKERN_CUDA_GRAPHS
char *oskern_graph_new(int device, void **out) {
  GUARD({
    auto d = static_cast<c10::DeviceIndex>(device);
    at::accelerator::synchronizeDevice(d);
    auto g = new Graph(d);
    c10::cuda::setCurrentCUDAStream(g->side);
    *out = g;
  })
}

char *oskern_graph_capture_begin(void *g) {
  GUARD(static_cast<Graph *>(g)->graph.capture_begin())
}

char *oskern_graph_capture_end(void *g) {
  auto graph = static_cast<Graph *>(g);
  GUARD({
    try {
      graph->graph.capture_end();
    } catch (...) {
      graph->restore_caller();
      throw;
    }
    graph->restore_caller();
    at::accelerator::synchronizeDevice(graph->side.device_index());
  })
}

char *oskern_graph_replay(void *g) {
  GUARD(static_cast<Graph *>(g)->graph.replay())
}

void oskern_graph_free(void *g) {
  auto graph = static_cast<Graph *>(g);
  graph->restore_caller();
  delete graph;
}
#else
static char *no_graphs() {
  return strdup("CUDA graphs: this build has none (no CUDA headers beside the torch it was built against)");
}
char *oskern_graph_new(int, void **) { return no_graphs(); }
char *oskern_graph_capture_begin(void *) { return no_graphs(); }
char *oskern_graph_capture_end(void *) { return no_graphs(); }
char *oskern_graph_replay(void *) { return no_graphs(); }
void oskern_graph_free(void *) {}
#endif

// Set t's .grad to g (null: none, as zero_grad(set_to_none=True) leaves it).
char *oskern_set_grad(Tensor *t, Tensor *g) {
  GUARD({
    if (g) {
      t->mutable_grad() = *g;
    } else {
      t->mutable_grad().reset();
    }
  })
}

// Backward from tensors[i] with upstream gradients grads[i] (torch.autograd.backward).
char *oskern_backward(Tensor *const *tensors, Tensor *const *grads, size_t n) {
  GUARD(torch::autograd::backward(list_of(tensors, n), list_of(grads, n)))
}

// The Kineto profiler (CPU ops and CUDA kernels), as torch.profiler records it: start, then stop
// and write a Chrome trace to `path`.
char *oskern_profiler_start() {
  GUARD({
    using namespace torch::profiler::impl;
    ProfilerConfig config(ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  })
}

char *oskern_profiler_stop(const char *path) {
  GUARD(torch::autograd::profiler::disableProfiler()->save(path))
}

}  // extern "C"
