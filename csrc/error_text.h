// The text of a C++ exception for the Rust side (src/error.rs, `from_c`), used by the extern "C"
// entry points that return an error as text.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <exception>
#include <string>

// The message of the exception being handled (call inside a `catch (...)` block), without
// libtorch's C++ backtrace; valid until this thread's next call.
inline const char* qs_current_error_text() {
  static thread_local std::string message;
  try {
    throw;
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
    message = "unknown C++ exception";
  }
  return message.c_str();
}

// The tensor `make()` returns, as a new tensor the caller owns; nullptr with `*error` set if it
// throws. The contract of the entry points that src/error.rs's `tensor_from_c` calls.
template <typename F>
at::Tensor* qs_tensor_or_error(const char** error, F&& make) {
  try {
    return new at::Tensor(make());
  } catch (...) {
    *error = qs_current_error_text();
    return nullptr;
  }
}
