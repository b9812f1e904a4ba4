// The ATen operations the model and trainer need that tch 0.24 does not expose. Tensors cross
// the boundary as tch's handles (at::Tensor*); every function catches C++ exceptions and returns
// the message (malloc'd, freed by Rust) or null on success. No CUDA headers: streams go through
// the device-generic accelerator API, so this builds on a machine without CUDA.

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <cstdlib>
#include <cstring>
#include <vector>

using at::Tensor;

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

}  // namespace

#define GUARD(...)                          \
  try {                                     \
    __VA_ARGS__;                            \
    return nullptr;                         \
  } catch (const std::exception &e) {       \
    return error_of(e);                     \
  }

extern "C" {

// One AdamW step: state_steps += 1, then at::_fused_adamw_ (decoupled weight decay) on every
// parameter. All lists have n tensors; amsgrad is not supported (no max_exp_avg_sqs).
char *oskern_fused_adamw(Tensor *const *params, Tensor *const *grads, Tensor *const *exp_avgs, Tensor *const *exp_avg_sqs,
                         Tensor *const *state_steps, size_t n, double lr, double beta1, double beta2, double weight_decay,
                         double eps, bool maximize) {
  GUARD({
    at::NoGradGuard no_grad;
    auto steps = list_of(state_steps, n);
    at::_foreach_add_(steps, 1);
    at::_fused_adamw_(list_of(params, n), list_of(grads, n), list_of(exp_avgs, n), list_of(exp_avg_sqs, n), {}, steps,
                      lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false, maximize);
  })
}

// The L2 norm of every tensor (at::_foreach_norm, fp32 results), written to out[0..n] as new handles.
char *oskern_foreach_norm(Tensor *const *tensors, size_t n, Tensor **out) {
  GUARD({
    at::NoGradGuard no_grad;
    auto norms = at::_foreach_norm(list_of(tensors, n), 2, at::kFloat);
    for (size_t i = 0; i < n; i++) out[i] = new Tensor(norms[i]);
  })
}

// In-place tensors[i] *= scale (a 0-dim tensor), as torch.nn.utils.clip_grad_norm_ scales.
char *oskern_foreach_mul_(Tensor *const *tensors, size_t n, Tensor *scale) {
  GUARD({
    at::NoGradGuard no_grad;
    auto ts = list_of(tensors, n);
    at::_foreach_mul_(ts, *scale);
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

char *oskern_synchronize(int device) {
  GUARD(at::accelerator::synchronizeDevice(static_cast<c10::DeviceIndex>(device)))
}

// Varlen flash attention forward: q [total_q, H, D], k/v [total_k, H, D], cu_seqlens int32 [B+1].
// out[0..4] = output [total_q, H, Dv], logsumexp, philox seed, philox offset (what the backward needs).
// Autograd records it when the inputs require grad.
char *oskern_flash_attention_varlen(Tensor *q, Tensor *k, Tensor *v, Tensor *cu_q, Tensor *cu_k, int64_t max_q,
                                    int64_t max_k, double dropout_p, bool causal, double scale, Tensor **out) {
  GUARD({
    auto r = at::_flash_attention_forward(*q, *k, *v, *cu_q, *cu_k, max_q, max_k, dropout_p, causal, false, scale);
    out[0] = new Tensor(std::get<0>(r));
    out[1] = new Tensor(std::get<1>(r));
    out[2] = new Tensor(std::get<2>(r));
    out[3] = new Tensor(std::get<3>(r));
  })
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
