//! Error helpers: every failure of an op is a `TchError` in Rust and a Python exception.
use std::ffi::{c_char, CStr};

use tch::TchError;

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

/// The message of an error without tch's variant prefix.
pub fn message(e: &TchError) -> String {
    match e {
        TchError::Torch(m) => m.clone(),
        other => other.to_string(),
    }
}
