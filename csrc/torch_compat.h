// What differs between the torch releases of torch-matrix.txt that this C++ uses, in one place
// (the Rust side compiles unchanged against every tch version of the matrix).
#pragma once

#include <torch/version.h>

#include <memory>
#include <utility>

namespace qs_compat {

// torch 2.13 owns autograd nodes through c10::intrusive_ptr; earlier releases through
// std::shared_ptr. A new node for torch::autograd::set_history:
template <class NodeT, class... Args>
auto make_node(Args&&... args) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
  return c10::make_intrusive<NodeT>(std::forward<Args>(args)...);
#else
  return std::make_shared<NodeT>(std::forward<Args>(args)...);
#endif
}

}  // namespace qs_compat
