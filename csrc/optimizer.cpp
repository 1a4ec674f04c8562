// The optimiser's plumbing that tch has no binding for (src/train/adam.rs holds the maths):
// Adam's update of a list of parameters in one fused kernel (`at::_fused_adam_`, the kernel
// behind torch.optim.Adam(fused=True), on CPU and CUDA), and dropping gradients (zero_grad
// with set_to_none, torch.optim's default) without a kernel per parameter.
#include <ATen/ATen.h>
#include <ATen/ops/_fused_adam.h>
#include <c10/core/GradMode.h>

#include <vector>

#include "error_text.h"

extern "C" {
// One step over `n` parameters (all on one device, one dtype): `params[i]` is updated in place
// with `grads[i]`, its moments `exp_avgs[i]`, `exp_avg_sqs[i]` likewise; `step` is the step
// number after this update (1 for the first). Returns nullptr, or an error message that stays
// valid until this thread's next call.
const char* qs_fused_adam(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                          at::Tensor* const* exp_avg_sqs, int64_t n, double step, double lr, double beta1,
                          double beta2, double eps) {
  if (n == 0) return nullptr;
  try {
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> p, g, m, v;
    for (int64_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      // The kernel walks every list as flat memory: a gradient laid out unlike its parameter
      // (e.g. contiguous against a channels-last weight) is copied into the parameter's layout.
      const at::Tensor& grad = *grads[i];
      g.push_back(grad.strides() == params[i]->strides() ? grad : at::empty_like(*params[i]).copy_(grad));
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
    }
    // The kernel reads the step count from a float32 tensor on the parameters' device.
    at::Tensor step_count = at::full({}, step, p[0].options().dtype(at::kFloat));
    std::vector<at::Tensor> steps(static_cast<size_t>(n), step_count);
    at::_fused_adam_(p, g, m, v, {}, steps, lr, beta1, beta2, /*weight_decay=*/0.0, eps, /*amsgrad=*/false,
                     /*maximize=*/false);
    return nullptr;
  } catch (...) {
    return qs_current_error_text();
  }
}

// Drops the gradients of `n` parameters (`p.grad = None`): the next backward allocates fresh
// ones instead of accumulating, so no zero-filling kernel runs per parameter.
void qs_clear_grads(at::Tensor* const* params, int64_t n) {
  for (int64_t i = 0; i < n; ++i) params[i]->mutable_grad().reset();
}
}
