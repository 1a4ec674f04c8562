// The one custom-autograd mechanism of qs_attn.
//
// `RustFunction` is a torch::autograd::Function whose forward and backward are implemented by a
// Rust object (a `Box<dyn AutogradOp>`, see src/autograd.rs) reached through an opaque pointer.
// Any number of tensor inputs and outputs are supported; Rust reports outputs, tensors to save
// for backward and non-differentiable outputs through a `QsSink`, and errors as a message in it.
//
// Ownership:
// * the Rust op object is owned by a `QsOpHolder`, kept in the autograd context's saved_data
//   (as an IValue capsule), so it lives exactly as long as the graph node and is dropped once;
// * tensors crossing the boundary are heap `at::Tensor*` (what tch calls `C_tensor*`): borrowed
//   when passed to Rust, owned (moved out and deleted here) when Rust hands them over.
//
// By default backward is first-order only: Rust computes gradients under no-grad and, when a
// higher-order graph is requested (create_graph=True), the returned gradients get an Error
// node, so differentiating them again fails loudly instead of silently giving zero. An op whose
// backward is built from differentiable tensor operations (a linear op's adjoint) says so; its
// backward then runs in the engine's grad mode and its gradients carry their own graph.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include "torch_compat.h"

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "error_text.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct QsSink {
  std::vector<at::Tensor> tensors;  // forward: outputs; backward: input gradients
  std::vector<at::Tensor> saved;    // forward only: tensors saved for backward
  std::vector<int64_t> non_differentiable;  // forward only: output indices
  std::string error;
  bool failed = false;
};

extern "C" {
// Implemented in Rust (src/autograd.rs). Both return false on error (message in the sink).
bool qs_rs_op_forward(void* op, const at::Tensor* const* inputs, int64_t n_inputs, QsSink* sink);
bool qs_rs_op_backward(void* op, const at::Tensor* const* saved, int64_t n_saved,
                       const at::Tensor* const* grads, int64_t n_grads,
                       const bool* needs_input_grad, int64_t n_inputs, QsSink* sink);
void qs_rs_op_drop(void* op);
bool qs_rs_op_backward_is_differentiable(void* op);
const char* qs_rs_op_name(void* op);

QsSink* qs_sink_new() { return new QsSink(); }
void qs_sink_free(QsSink* s) { delete s; }
// Takes ownership of `t` (nullptr = undefined tensor, i.e. "no gradient").
void qs_sink_push(QsSink* s, at::Tensor* t) {
  if (t == nullptr) {
    s->tensors.emplace_back();
  } else {
    s->tensors.push_back(std::move(*t));
    delete t;
  }
}
void qs_sink_push_saved(QsSink* s, at::Tensor* t) {
  s->saved.push_back(std::move(*t));
  delete t;
}
void qs_sink_mark_non_differentiable(QsSink* s, int64_t output_index) {
  s->non_differentiable.push_back(output_index);
}
void qs_sink_set_error(QsSink* s, const char* msg) {
  s->failed = true;
  s->error = msg ? msg : "unknown error";
}
const char* qs_sink_error(const QsSink* s) { return s->failed ? s->error.c_str() : nullptr; }
int64_t qs_sink_len(const QsSink* s) { return static_cast<int64_t>(s->tensors.size()); }
// A new heap tensor moved out of slot i (nullptr when undefined).
at::Tensor* qs_sink_take(QsSink* s, int64_t i) {
  at::Tensor& t = s->tensors.at(static_cast<size_t>(i));
  if (!t.defined()) return nullptr;
  return new at::Tensor(std::move(t));
}
}

namespace {

struct QsOpHolder : torch::CustomClassHolder {
  void* op;
  explicit QsOpHolder(void* op) : op(op) {}
  ~QsOpHolder() override { qs_rs_op_drop(op); }
  QsOpHolder(const QsOpHolder&) = delete;
  QsOpHolder& operator=(const QsOpHolder&) = delete;
};

std::vector<const at::Tensor*> pointers(const std::vector<at::Tensor>& ts) {
  std::vector<const at::Tensor*> ps;
  ps.reserve(ts.size());
  for (const auto& t : ts) ps.push_back(&t);
  return ps;
}

struct RustFunction : public torch::autograd::Function<RustFunction> {
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<QsOpHolder> holder,
                               at::TensorList inputs) {
    ctx->saved_data["op"] = c10::IValue::make_capsule(holder);
    ctx->saved_data["n_inputs"] = static_cast<int64_t>(inputs.size());
    // Gradients of unused or non-differentiable outputs arrive undefined (Rust sees None).
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> in(inputs.begin(), inputs.end());
    auto in_ptrs = pointers(in);
    QsSink sink;
    if (!qs_rs_op_forward(holder->op, in_ptrs.data(), static_cast<int64_t>(in_ptrs.size()), &sink)) {
      throw std::runtime_error(sink.error);
    }
    ctx->save_for_backward(sink.saved);
    variable_list non_diff;
    for (int64_t i : sink.non_differentiable) non_diff.push_back(sink.tensors.at(static_cast<size_t>(i)));
    if (!non_diff.empty()) ctx->mark_non_differentiable(non_diff);
    return sink.tensors;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<QsOpHolder>(ctx->saved_data["op"].toCapsule());
    auto saved = ctx->get_saved_variables();
    const bool higher_order = torch::autograd::GradMode::is_enabled();
    const bool differentiable = qs_rs_op_backward_is_differentiable(holder->op);
    // needs_input_grad counts tensor inputs only (the holder argument has no edge).
    const int64_t n_inputs = ctx->saved_data["n_inputs"].toInt();
    std::unique_ptr<bool[]> needs(new bool[static_cast<size_t>(n_inputs)]);
    for (int64_t i = 0; i < n_inputs; ++i) needs[i] = ctx->needs_input_grad(static_cast<size_t>(i));

    std::vector<const at::Tensor*> grad_ptrs;
    for (const auto& g : grad_outputs) grad_ptrs.push_back(g.defined() ? &g : nullptr);
    auto saved_ptrs = pointers(saved);
    QsSink sink;
    {
      std::optional<at::NoGradGuard> no_grad;
      if (!differentiable) no_grad.emplace();
      if (!qs_rs_op_backward(holder->op, saved_ptrs.data(), static_cast<int64_t>(saved_ptrs.size()),
                             grad_ptrs.data(), static_cast<int64_t>(grad_ptrs.size()), needs.get(),
                             n_inputs, &sink)) {
        throw std::runtime_error(std::string("qs_attn ") + qs_rs_op_name(holder->op) +
                                 " backward: " + sink.error);
      }
    }
    TORCH_CHECK(static_cast<int64_t>(sink.tensors.size()) == n_inputs, "qs_attn ",
                qs_rs_op_name(holder->op), " backward returned ", sink.tensors.size(),
                " gradients for ", n_inputs, " inputs");
    variable_list grads = std::move(sink.tensors);
    if (higher_order && !differentiable) {
      // create_graph=True: the gradients computed above carry no graph of their own, so
      // differentiating them again would silently give zero. Give each an Error node instead.
      auto err = qs_compat::make_node<torch::autograd::Error>(
          std::string("qs_attn ") + qs_rs_op_name(holder->op) +
              " supports first-order gradients only (its backward is not differentiable)",
          torch::autograd::edge_list{});
      for (auto& g : grads) {
        if (!g.defined()) continue;
        g = g.detach();
        torch::autograd::set_history(g, err);
      }
    }
    variable_list result;
    result.reserve(grads.size() + 1);
    result.emplace_back();  // the holder argument
    for (auto& g : grads) result.push_back(std::move(g));
    return result;
  }
};

}  // namespace

extern "C" {
// Autocast off for the current thread while the returned guard lives (the ops choose their own
// compute dtype, fp32 for half/bf16 inputs); released with qs_autocast_guard_end.
void* qs_autocast_guard_begin() { return new c10::impl::ExcludeDispatchKeyGuard(c10::autocast_dispatch_keyset); }
void qs_autocast_guard_end(void* guard) { delete static_cast<c10::impl::ExcludeDispatchKeyGuard*>(guard); }

// `t` as autocast hands it to a convolution: cast (differentiably) to autocast's dtype when
// autocast is on for t's device on this thread and t is eligible (floating, not float64), else
// t itself. For nodes that wrap a convolution, whose own passes run with autocast off.
// nullptr with `error` set on failure; the caller owns the result.
at::Tensor* qs_autocast_conv_input(const at::Tensor* t, const char** error) {
  return qs_tensor_or_error(error, [&] {
    const at::DeviceType device_type = t->device().type();
    const bool on = at::autocast::is_autocast_available(device_type) &&
                    at::autocast::is_autocast_enabled(device_type) &&
                    !c10::impl::tls_is_dispatch_key_excluded(
                        at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
    return on ? at::autocast::cached_cast(at::autocast::get_autocast_dtype(device_type), *t, device_type) : *t;
  });
}

// Runs `op` (a Rust `Box<Box<dyn AutogradOp>>`, owned from here on) as an autograd node.
// On success the outputs are in `out`; on failure `out` carries the error message.
void qs_autograd_apply(void* op, const at::Tensor* const* inputs, int64_t n_inputs, QsSink* out) {
  auto holder = c10::make_intrusive<QsOpHolder>(op);
  try {
    std::vector<at::Tensor> in;
    in.reserve(static_cast<size_t>(n_inputs));
    for (int64_t i = 0; i < n_inputs; ++i) in.push_back(*inputs[i]);
    auto outputs = RustFunction::apply(holder, at::TensorList(in));
    out->tensors = std::move(outputs);
  } catch (const c10::Error& e) {
    qs_sink_set_error(out, e.what_without_backtrace());
  } catch (const std::exception& e) {
    qs_sink_set_error(out, e.what());
  }
}
}
