// The divergence guard's test of a list of tensors (src/train/guard.rs): whether any element
// is NaN or infinite, as a 0-dim bool tensor on the tensors' device. `_foreach_norm` reads the
// whole list in one fused kernel per device and dtype on CUDA, so the check costs a few
// launches per step and no copy to the host.
#include <ATen/ATen.h>
#include <ATen/ops/_foreach_norm.h>
#include <c10/core/GradMode.h>

#include <vector>

#include "error_text.h"

extern "C" {
// `n` >= 1 tensors on one device. The L1 norms are summed: a NaN or inf anywhere makes the sum
// non-finite (as does a sum past the float range, itself a sign of divergence).
at::Tensor* qs_any_nonfinite(at::Tensor* const* tensors, int64_t n, const char** error) {
  return qs_tensor_or_error(error, [&] {
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> list;
    for (int64_t i = 0; i < n; ++i) list.push_back(*tensors[i]);
    std::vector<at::Tensor> norms;
    for (const at::Tensor& norm : at::_foreach_norm(list, 1)) norms.push_back(norm.to(at::kFloat));
    return at::stack(norms).sum().isfinite().logical_not();
  });
}
}
