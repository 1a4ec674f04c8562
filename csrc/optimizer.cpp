// The optimiser's plumbing that tch has no binding for (src/train/adam.rs holds the maths):
// Adam's update of a list of parameters in one fused kernel (`at::_fused_adam_`, the kernel
// behind torch.optim.Adam(fused=True), on CPU and CUDA), and dropping gradients (zero_grad
// with set_to_none, torch.optim's default) without a kernel per parameter. Adam's state on the
// device for CUDA graphs (qs_fused_adam_on_device).
#include <ATen/ATen.h>
#include <ATen/ops/_fused_adam.h>
#include <c10/core/GradMode.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace {
// The lists `_fused_adam_` takes, from `n` pointers each.
struct AdamLists {
  std::vector<at::Tensor> p, g, m, v;
};

AdamLists adam_lists(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                     at::Tensor* const* exp_avg_sqs, int64_t n) {
  AdamLists lists;
  for (int64_t i = 0; i < n; ++i) {
    lists.p.push_back(*params[i]);
    // The kernel walks every list as flat memory: a gradient laid out unlike its parameter
    // (e.g. contiguous against a channels-last weight) is copied into the parameter's layout.
    const at::Tensor& grad = *grads[i];
    lists.g.push_back(grad.strides() == params[i]->strides() ? grad : at::empty_like(*params[i]).copy_(grad));
    lists.m.push_back(*exp_avgs[i]);
    lists.v.push_back(*exp_avg_sqs[i]);
  }
  return lists;
}

template <typename F>
const char* guarded(F&& body) {
  static thread_local std::string error;
  try {
    c10::NoGradGuard no_grad;
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    error = e.what();
  }
  return error.c_str();
}
}  // namespace

extern "C" {
// One step over `n` parameters (all on one device, one dtype): `params[i]` is updated in place
// with `grads[i]`, its moments `exp_avgs[i]`, `exp_avg_sqs[i]` likewise; `step` is the step
// number after this update (1 for the first). Returns nullptr, or an error message that stays
// valid until this thread's next call.
const char* qs_fused_adam(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                          at::Tensor* const* exp_avg_sqs, int64_t n, double step, double lr, double beta1,
                          double beta2, double eps) {
  if (n == 0) return nullptr;
  return guarded([&] {
    AdamLists l = adam_lists(params, grads, exp_avgs, exp_avg_sqs, n);
    // The kernel reads the step count from a float32 tensor on the parameters' device.
    at::Tensor step_count = at::full({}, step, l.p[0].options().dtype(at::kFloat));
    std::vector<at::Tensor> steps(static_cast<size_t>(n), step_count);
    at::_fused_adam_(l.p, l.g, l.m, l.v, {}, steps, lr, beta1, beta2, /*weight_decay=*/0.0, eps,
                     /*amsgrad=*/false, /*maximize=*/false);
  });
}

// The same step with the step count and the learning rate held in float32 scalar tensors on
// the parameters' device (`step_count` is incremented here, on the device): nothing is read
// from or baked in by the host, so the step can be captured in a CUDA graph and replayed.
const char* qs_fused_adam_on_device(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                                    at::Tensor* const* exp_avg_sqs, int64_t n, at::Tensor* step_count,
                                    const at::Tensor* lr, double beta1, double beta2, double eps) {
  if (n == 0) return nullptr;
  return guarded([&] {
    AdamLists l = adam_lists(params, grads, exp_avgs, exp_avg_sqs, n);
    step_count->add_(1);
    std::vector<at::Tensor> steps(static_cast<size_t>(n), *step_count);
    at::_fused_adam_(l.p, l.g, l.m, l.v, {}, steps, *lr, beta1, beta2, /*weight_decay=*/0.0, eps,
                     /*amsgrad=*/false, /*maximize=*/false);
  });
}

// Drops the gradients of `n` parameters (`p.grad = None`): the next backward allocates fresh
// ones instead of accumulating, so no zero-filling kernel runs per parameter.
void qs_clear_grads(at::Tensor* const* params, int64_t n) {
  for (int64_t i = 0; i < n; ++i) params[i]->mutable_grad().reset();
}
}
