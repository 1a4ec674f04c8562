// Leaky ReLU with a slope: aten's own op, which tch binds only with the default slope 0.01.
// Forward: y = x where x > 0, slope · x elsewhere. aten records its autograd node
// (LeakyReluBackward0, which keeps x): dx = dy where x > 0, slope · dy elsewhere (slope at 0),
// itself differentiable for second derivatives (WGAN-GP). The slope is applied in the op's
// compute type, as torch.nn.LeakyReLU does.
#include <ATen/ATen.h>

#include "error_text.h"

extern "C" {
// leaky_relu(x, slope); nullptr with `error` set on failure. The caller owns the result.
at::Tensor* qs_leaky_relu(const at::Tensor* x, double slope, const char** error) {
  return qs_tensor_or_error(error, [&] { return at::leaky_relu(*x, slope); });
}
}  // extern "C"
