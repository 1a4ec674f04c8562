//! Argument checks shared by the ops: every violation is a clear `TchError`, never a panic.
use tch::{Device, Kind, TchError, Tensor};

use crate::error::invalid;

/// The dtype an op computes in: float32 for half/bfloat16/float32 inputs, float64 for float64.
pub fn compute_kind(what: &str, t: &Tensor) -> Result<Kind, TchError> {
    match t.kind() {
        Kind::Half | Kind::BFloat16 | Kind::Float => Ok(Kind::Float),
        Kind::Double => Ok(Kind::Double),
        k => Err(invalid(format!(
            "{what} must be a floating-point tensor (float16/bfloat16/float32/float64), got {k:?}"
        ))),
    }
}

pub fn rank(what: &str, t: &Tensor, expected: usize, layout: &str) -> Result<(), TchError> {
    if t.dim() != expected {
        return Err(invalid(format!("{what} must be a {expected}-D tensor {layout}, got shape {:?}", t.size())));
    }
    Ok(())
}

pub fn same_device(what_a: &str, a: &Tensor, what_b: &str, b: &Tensor) -> Result<Device, TchError> {
    if a.device() != b.device() {
        return Err(invalid(format!(
            "{what_a} and {what_b} must be on the same device, got {:?} and {:?}",
            a.device(),
            b.device()
        )));
    }
    Ok(a.device())
}

pub fn same_kind(what_a: &str, a: &Tensor, what_b: &str, b: &Tensor) -> Result<(), TchError> {
    if a.kind() != b.kind() {
        return Err(invalid(format!(
            "{what_a} and {what_b} must have the same dtype, got {:?} and {:?}",
            a.kind(),
            b.kind()
        )));
    }
    Ok(())
}

/// Only dense tensors on the CPU or CUDA are supported. The layout is checked first: a sparse
/// or MKL-DNN tensor fails most later calls. (tch cannot name the other devices: it reports a
/// meta tensor's device as `Mps`, so the message names none.)
pub fn supported_device(what: &str, t: &Tensor) -> Result<(), TchError> {
    if t.is_sparse() || t.is_mkldnn() {
        let layout = if t.is_sparse() { "sparse" } else { "MKL-DNN" };
        return Err(invalid(format!("{what} is a {layout} tensor; the ops take dense (strided) tensors")));
    }
    match t.device() {
        Device::Cpu | Device::Cuda(_) => Ok(()),
        _ => Err(invalid(format!("{what} must be a CPU or CUDA tensor, got one on another device (meta, MPS, …)"))),
    }
}

/// Casts a gradient back to the dtype of the input it belongs to.
pub fn grad_as(g: Tensor, input_kind: Kind) -> Tensor {
    if g.kind() == input_kind {
        g
    } else {
        g.to_kind(input_kind)
    }
}
