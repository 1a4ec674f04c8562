// The backward of batch norm's normalisation (its input gradient), which tch does not bind
// (`at::native_batch_norm_backward`; src/nets/norm_relu.rs holds the maths and the op using it).
#include <ATen/ATen.h>
#include <ATen/ops/native_batch_norm_backward.h>

#include "error_text.h"

extern "C" {
// dx of `y = (x − mean) · invstd` per channel of `input` (N × C × …, training statistics, no
// affine parameters) for the upstream gradient `grad`; a new tensor the caller owns, or
// nullptr with `*error` set (valid until this thread's next call).
at::Tensor* qs_batch_norm_input_grad(const at::Tensor* grad, const at::Tensor* input, const at::Tensor* mean,
                                     const at::Tensor* invstd, double eps, const char** error) {
  return qs_tensor_or_error(error, [&] {
    auto grads = at::native_batch_norm_backward(*grad, *input, {}, {}, {}, *mean, *invstd, /*train=*/true, eps,
                                                {true, false, false});
    return std::get<0>(grads);
  });
}
}
