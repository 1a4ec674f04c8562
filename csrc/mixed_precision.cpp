// The two switches of the opt-in CUDA fast path (src/train/precision.rs): autocast to
// bfloat16 for a scope, and the channels-last memory format. tch binds neither with a dtype or
// a memory format.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <exception>

namespace {
// What a bf16 autocast scope replaced, restored when it ends.
struct AutocastScope {
  at::DeviceType device_type;
  bool was_enabled;
  at::ScalarType previous_dtype;
};
}  // namespace

extern "C" {
// Autocast to bfloat16 on this thread for `cuda` (else CPU) tensors until qs_autocast_bf16_end
// is called with the returned scope: matrix products and convolutions run in bfloat16,
// reductions and losses in float32 (torch's autocast lists).
void* qs_autocast_bf16_begin(bool cuda) {
  const at::DeviceType device_type = cuda ? at::kCUDA : at::kCPU;
  auto* scope = new AutocastScope{device_type, at::autocast::is_autocast_enabled(device_type),
                                  at::autocast::get_autocast_dtype(device_type)};
  at::autocast::set_autocast_enabled(device_type, true);
  at::autocast::set_autocast_dtype(device_type, at::kBFloat16);
  at::autocast::increment_nesting();
  return scope;
}

void qs_autocast_bf16_end(void* scope_ptr) {
  auto* scope = static_cast<AutocastScope*>(scope_ptr);
  // The casts of the weights are cached for the scope's life only.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(scope->device_type, scope->was_enabled);
  at::autocast::set_autocast_dtype(scope->device_type, scope->previous_dtype);
  delete scope;
}

// Keeps autocast's cache of weight casts alive across the bf16 scopes begun until
// qs_autocast_cache_hold_end (scopes nest: the cache is cleared when the outermost ends), so
// a weight used in two scopes of one training step is cast once.
void qs_autocast_cache_hold_begin() { at::autocast::increment_nesting(); }

void qs_autocast_cache_hold_end() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

// A channels-last (NHWC in memory) copy of a 4-D tensor, or the tensor itself when it already
// is one; the caller owns the result. nullptr for a tensor that cannot be channels-last.
at::Tensor* qs_channels_last(const at::Tensor* t) {
  try {
    return new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast));
  } catch (const std::exception&) {
    return nullptr;
  }
}
}
