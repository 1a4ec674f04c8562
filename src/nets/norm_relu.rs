//! Instance norm followed by ReLU as one autograd node that keeps only its input for backward.
//!
//! Run as two ops, autograd keeps the norm's input *and* the ReLU's output of every such pair.
//! The output is needed by nothing else wherever a pad follows (in the generator's residual
//! blocks and in each downsampling step), once the pad keeps no tensor either
//! ([`super::pad`], [`super::resample`]; aten's pad node would keep this very output). Recomputing the ReLU's mask
//! from the input in backward drops those tensors (measured with aten's pads: the training
//! step's CUDA peak at 256², batch 1, went from 2,293 to 2,239 MiB; docs/benchmarks.md). The
//! values are those of the two ops.
//!
//! Differentiable once (the bridge raises on `create_graph=True`); the trainer never needs more.
use std::ffi::c_char;

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::{from_c, invalid};
use crate::ops::check;

/// `max(instance_norm(x), 0)` for `x` of shape `B × C × H × W` (no affine parameters, biased
/// variance, `eps` in the root), in the input's dtype (statistics accumulated in float32 for
/// half / bfloat16 inputs, as torch's batch-norm kernels do).
pub fn instance_norm_relu(x: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    Ok(apply(InstanceNormRelu { eps }, &[x])?.remove(0))
}

struct InstanceNormRelu {
    eps: f64,
}

impl AutogradOp for InstanceNormRelu {
    fn name(&self) -> &'static str {
        "instance_norm_relu"
    }

    // Per image b and channel c, over the H·W positions:
    //   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  y = max(x̂, 0)
    // as batch norm of the (1, B·C, H, W) view (training statistics, no affine), then ReLU in
    // place. Saved: x as given, μ and r (B·C values each); not y.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let x = &inputs[0];
        check::compute_kind("instance_norm_relu input", x)?; // a floating-point input
        let (b, c, h, w) = x.size4()?;
        let flat = x.reshape([1, b * c, h, w]);
        let (normed, mean, invstd) = flat.f_native_batch_norm(None::<Tensor>, None, None, None, true, 0.0, self.eps)?;
        let y = normed.view([b, c, h, w]).f_relu_()?; // relu_ writes through the view
        ctx.save_for_backward([x.shallow_clone(), mean, invstd]);
        Ok(vec![y])
    }

    // g = dy·[x̂ > 0] (ReLU's gradient; x̂ > 0 ⟺ x − μ > 0, as r > 0), then batch norm's
    // input gradient per (b, c):  dx = r·(g − mean(g) − x̂·mean(g·x̂)).
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dy) = &grads[0] else { return Ok(vec![None]) };
        let [x, mean, invstd] = ctx.saved() else { return Err(invalid("instance_norm_relu: bad saved state")) };
        let (b, c, h, w) = x.size4()?;
        let flat = x.reshape([1, b * c, h, w]);
        let centred = &flat - mean.view([1, b * c, 1, 1]).to_kind(x.kind());
        let g = centred.f_threshold_backward(&dy.reshape([1, b * c, h, w]), 0.0)?;
        let dx = batch_norm_input_grad(&g, &flat, mean, invstd, self.eps)?;
        Ok(vec![Some(dx.reshape([b, c, h, w]))])
    }
}

/// `at::native_batch_norm_backward`'s input gradient (csrc/norm_relu.cpp).
fn batch_norm_input_grad(grad: &Tensor, input: &Tensor, mean: &Tensor, invstd: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    let mut error: *const c_char = std::ptr::null();
    let dx = unsafe { qs_batch_norm_input_grad(grad.as_ptr(), input.as_ptr(), mean.as_ptr(), invstd.as_ptr(), eps, &mut error) };
    if dx.is_null() {
        return Err(unsafe { from_c("instance_norm_relu backward", error) });
    }
    Ok(unsafe { Tensor::from_ptr(dx) })
}

extern "C" {
    fn qs_batch_norm_input_grad(
        grad: *const C_tensor,
        input: *const C_tensor,
        mean: *const C_tensor,
        invstd: *const C_tensor,
        eps: f64,
        error: *mut *const c_char,
    ) -> *mut C_tensor;
}
