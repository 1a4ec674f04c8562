//! Leaky ReLU with the discriminator's slope, as aten's `leaky_relu` (csrc/leaky_relu.cpp);
//! tch binds that op with the default slope 0.01 only.
//!
//! Forward: `y = x` where `x > 0`, `slope · x` elsewhere. Backward (aten's node, which keeps
//! `x`): `dx = dy` where `x > 0`, `slope · dy` elsewhere, and it is differentiable again.
//! Not `prelu` with a one-element slope tensor: it computes the same, but also fills that tensor
//! and reduces a gradient for it in every backward pass.
use std::ffi::c_char;

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use crate::error::tensor_from_c;

/// `leaky_relu(x, slope)`, recorded for autograd.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor, TchError> {
    unsafe { tensor_from_c("leaky_relu", |error| qs_leaky_relu(x.as_ptr(), slope, error)) }
}

extern "C" {
    fn qs_leaky_relu(x: *const C_tensor, slope: f64, error: *mut *const c_char) -> *mut C_tensor;
}
