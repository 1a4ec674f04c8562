//! The opt-in fast path of the trainer (options `precision = "bf16"` and `channels_last`):
//!
//! * **bf16 autocast** around the forward passes of G and D: convolutions run in bfloat16, and
//!   so do the instance norms after them (in the input's dtype, their statistics accumulated
//!   in float32 as torch's batch-norm kernels do); what torch's autocast lists keep in float32
//!   (reductions, losses) stays float32. The projector F and
//!   the NCE loss run in float32 on the widened taps (the trainer turns autocast off there; a
//!   bfloat16 F measurably slowed the NCE loss's descent), and the QS-Attn and PatchNCE ops
//!   compute in float32 anyway, so attention, entropies, the selection and the NCE logits are
//!   float32 whatever the precision. Backward runs outside the scope (in the dtypes autocast
//!   chose), the parameters and Adam's moments stay float32, and bfloat16's float32 exponent
//!   range needs no loss scaling.
//! * **channels-last**: the 4-D parameters and the input images are stored NHWC, which cuDNN's
//!   bfloat16 convolutions read without layout transposes; the rest of the network follows
//!   the layout of its inputs: the pads, resampling steps and instance norms have
//!   channels-last paths (`nets::pad`, `nets::norm_relu`), as has the projector's sampling.
use std::ffi::c_void;

use tch::{Device, TchError, Tensor};
use torch_sys::C_tensor;

use crate::error::invalid;

crate::choice_enum! {
    /// The trainer's numeric precision for G and D (F and the NCE loss stay float32).
    pub enum Precision("precision") {
        Fp32 = "fp32",
        Bf16 = "bf16",
    }
}

/// While alive, autocast to bfloat16 is on for this thread's tensors of `device`'s type.
pub struct Bf16Autocast(*mut c_void);

impl Bf16Autocast {
    /// A bf16 autocast scope for `precision = Bf16`, nothing for `Fp32`.
    pub fn scope(precision: Precision, device: Device) -> Option<Self> {
        (precision == Precision::Bf16).then(|| Bf16Autocast(unsafe { qs_autocast_bf16_begin(device.is_cuda()) }))
    }
}

impl Drop for Bf16Autocast {
    fn drop(&mut self) {
        unsafe { qs_autocast_bf16_end(self.0) }
    }
}

/// While alive, autocast's cache of weight casts outlives the [`Bf16Autocast`] scopes in it
/// (cleared when the hold ends). Autocast caches the cast of a leaf that requires grad: a
/// weight used in two scopes is then cast once, and its two uses' bfloat16 gradients meet
/// at that one cast (summed there, then widened once) as uses within one scope always do. Only
/// for weights that no optimiser step changes while the hold lasts (a frozen network's weights
/// require no grad, so autocast neither caches nor looks up their casts).
pub struct AutocastCacheHold(());

impl AutocastCacheHold {
    /// A hold for `precision = Bf16`, nothing for `Fp32`.
    pub fn new(precision: Precision) -> Option<Self> {
        (precision == Precision::Bf16).then(|| {
            unsafe { qs_autocast_cache_hold_begin() };
            AutocastCacheHold(())
        })
    }
}

impl Drop for AutocastCacheHold {
    fn drop(&mut self) {
        unsafe { qs_autocast_cache_hold_end() }
    }
}

/// `t` in the channels-last memory format (a copy unless it already is; same values).
pub fn channels_last(t: &Tensor) -> Result<Tensor, TchError> {
    let p = unsafe { qs_channels_last(t.as_ptr()) };
    if p.is_null() {
        return Err(invalid(format!("a tensor of shape {:?} cannot be stored channels-last", t.size())));
    }
    Ok(unsafe { Tensor::from_ptr(p) })
}

/// Stores every 4-D tensor of `params` channels-last, in place (the same variables, so the
/// optimiser and the networks see the change).
pub fn params_to_channels_last(params: &[(String, Tensor)]) -> Result<(), TchError> {
    let _no_grad = tch::no_grad_guard();
    for (_, p) in params.iter().filter(|(_, p)| p.dim() == 4) {
        let mut var = p.shallow_clone();
        var.set_data(&channels_last(p)?);
    }
    Ok(())
}

extern "C" {
    fn qs_autocast_bf16_begin(cuda: bool) -> *mut c_void;
    fn qs_autocast_bf16_end(scope: *mut c_void);
    fn qs_autocast_cache_hold_begin();
    fn qs_autocast_cache_hold_end();
    fn qs_channels_last(t: *const C_tensor) -> *mut C_tensor;
}
