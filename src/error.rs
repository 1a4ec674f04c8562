//! Error helpers: every failure of an op is a `TchError` in Rust and a Python exception.
use std::ffi::{c_char, CStr};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

/// An invalid-argument error with a message meant for the user.
pub fn invalid(msg: impl Into<String>) -> TchError {
    TchError::Torch(msg.into())
}

/// The error reported by a C++ entry point of csrc/: `context: <its message>`.
///
/// # Safety
/// `msg` points to a NUL-terminated string (the entry points' thread-local error text).
pub unsafe fn from_c(context: &str, msg: *const c_char) -> TchError {
    invalid(format!("{context}: {}", CStr::from_ptr(msg).to_string_lossy()))
}

/// The tensor a C++ entry point of csrc/ returns, or its error as `context: <message>`: `call`
/// invokes the entry point with the address of its error text, which it sets when it returns
/// null.
///
/// # Safety
/// `call` returns a new tensor that the caller owns, or null with the error text set.
pub unsafe fn tensor_from_c(
    context: &str,
    call: impl FnOnce(*mut *const c_char) -> *mut C_tensor,
) -> Result<Tensor, TchError> {
    let mut error: *const c_char = std::ptr::null();
    let p = call(&mut error);
    if p.is_null() {
        return Err(from_c(context, error));
    }
    Ok(Tensor::from_ptr(p))
}

/// The message of an error without tch's variant prefix.
pub fn message(e: &TchError) -> String {
    match e {
        TchError::Torch(m) => m.clone(),
        other => other.to_string(),
    }
}
