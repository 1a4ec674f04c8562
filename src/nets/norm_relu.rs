//! Instance norm followed by ReLU as one autograd node that keeps only its input for backward.
//!
//! Run as two ops, autograd keeps the norm's input *and* the ReLU's output of every such pair.
//! The output is needed by nothing else wherever a pad follows (in the generator's residual
//! blocks and in each downsampling step), once the pad keeps no tensor either ([`super::pad`],
//! [`super::resample`]; aten's pad node would keep this very output). Recomputing the ReLU's
//! mask from the input in backward drops those tensors (measured with aten's pads: the
//! training step's CUDA peak at 256², batch 1, went from 2,293 to 2,239 MiB;
//! docs/benchmarks.md). The values are those of the two ops.
//!
//! A batch of several channels-last (NHWC) images is normalised image by image, each a
//! `(1, C, H, W)` view that batch norm reads in place: the `(1, B·C, H, W)` view does not exist
//! for that layout (aten's instance norm copies it to NCHW, and its result costs another copy
//! at the next channels-last convolution). The same node without the ReLU serves instance norms
//! of channels-last inputs that no ReLU follows ([`instance_norm`]).
//!
//! Differentiable once (the bridge raises on `create_graph=True`); the trainer never needs more.
use std::ffi::c_char;

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use super::is_channels_last;
use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::{invalid, tensor_from_c};
use crate::ops::check;

/// `max(instance_norm(x), 0)` for `x` of shape `B × C × H × W` (no affine parameters, biased
/// variance, `eps` in the root), in the input's dtype (statistics accumulated in float32 for
/// half / bfloat16 inputs, as torch's batch-norm kernels do).
pub fn instance_norm_relu(x: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    Ok(apply(InstanceNormRelu { eps, relu: true }, &[x])?.remove(0))
}

/// `instance_norm(x)` alone, as [`instance_norm_relu`] computes it (for channels-last inputs;
/// aten's instance norm serves NCHW ones as well).
pub fn instance_norm(x: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    Ok(apply(InstanceNormRelu { eps, relu: false }, &[x])?.remove(0))
}

struct InstanceNormRelu {
    eps: f64,
    /// Whether the ReLU follows.
    relu: bool,
}

/// Whether `x` (a batch of several channels-last images) is normalised image by image.
fn by_image(x: &Tensor) -> bool {
    x.size()[0] > 1 && is_channels_last(x)
}

/// `(1, B·C, H, W)`-shaped batch norm inputs: the whole batch `t` as one view, or `by_image`
/// each image's `(1, C, H, W)` view.
fn batch_norm_views(t: &Tensor, by_image: bool) -> Result<Vec<Tensor>, TchError> {
    let (b, c, h, w) = t.size4()?;
    if by_image {
        return (0..b).map(|i| t.f_narrow(0, i, 1)).collect();
    }
    Ok(vec![t.f_reshape([1, b * c, h, w])?])
}

/// The parts (one per view of [`batch_norm_views`]) back as one `B × C × H × W` tensor.
fn joined(parts: &[Tensor], shape: (i64, i64, i64, i64)) -> Result<Tensor, TchError> {
    let (b, c, h, w) = shape;
    match parts {
        [whole] => whole.f_reshape([b, c, h, w]),
        per_image => Tensor::f_cat(per_image, 0),
    }
}

impl AutogradOp for InstanceNormRelu {
    fn name(&self) -> &'static str {
        if self.relu {
            "instance_norm_relu"
        } else {
            "instance_norm"
        }
    }

    // Per image b and channel c, over the H·W positions:
    //   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  y = max(x̂, 0)
    // as batch norm of the (1, B·C, H, W) view, or of each channels-last image (training
    // statistics, no affine), then ReLU in place. Saved: x as given, then μ and r of each view
    // (B·C values in all); not y.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let x = &inputs[0];
        check::compute_kind("instance_norm_relu input", x)?; // a floating-point input
        let (mut normed, mut stats) = (Vec::new(), vec![x.shallow_clone()]);
        for view in batch_norm_views(x, by_image(x))? {
            let (y, mean, invstd) = view.f_native_batch_norm(None::<Tensor>, None, None, None, true, 0.0, self.eps)?;
            normed.push(y);
            stats.extend([mean, invstd]);
        }
        let mut y = joined(&normed, x.size4()?)?;
        if self.relu {
            y = y.f_relu_()?;
        }
        ctx.save_for_backward(stats);
        Ok(vec![y])
    }

    // Per view: g = dy·[x̂ > 0] (ReLU's gradient; x̂ > 0 ⟺ x − μ > 0, as r > 0; g = dy
    // without the ReLU), then batch norm's input gradient per (b, c):
    //   dx = r·(g − mean(g) − x̂·mean(g·x̂)).
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dy) = &grads[0] else { return Ok(vec![None]) };
        let [x, stats @ ..] = ctx.saved() else { return Err(invalid("instance_norm_relu: bad saved state")) };
        let split = by_image(x);
        let (x_views, dy_views) = (batch_norm_views(x, split)?, batch_norm_views(dy, split)?);
        let dx = x_views
            .iter()
            .zip(&dy_views)
            .zip(stats.chunks(2))
            .map(|((x_view, dy_view), mean_invstd)| {
                let [mean, invstd] = mean_invstd else { return Err(invalid("instance_norm_relu: bad saved state")) };
                let g = if self.relu {
                    let centred = x_view - mean.f_view([1, -1, 1, 1])?.f_to_kind(x.kind())?;
                    centred.f_threshold_backward(dy_view, 0.0)?
                } else {
                    dy_view.shallow_clone()
                };
                batch_norm_input_grad(&in_layout_of(&g, x_view)?, x_view, mean, invstd, self.eps)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![Some(joined(&dx, x.size4()?)?)])
    }
}

/// `t` with the strides of `like` (a copy where they differ): batch norm's backward kernels
/// read the gradient in the input's layout.
fn in_layout_of(t: &Tensor, like: &Tensor) -> Result<Tensor, TchError> {
    if t.stride() == like.stride() {
        return Ok(t.shallow_clone());
    }
    let mut laid_out = Tensor::f_empty_like(like)?;
    laid_out.f_copy_(t)?;
    Ok(laid_out)
}

/// `at::native_batch_norm_backward`'s input gradient (csrc/norm_relu.cpp).
fn batch_norm_input_grad(grad: &Tensor, input: &Tensor, mean: &Tensor, invstd: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    unsafe {
        tensor_from_c("instance_norm_relu backward", |error| {
            qs_batch_norm_input_grad(grad.as_ptr(), input.as_ptr(), mean.as_ptr(), invstd.as_ptr(), eps, error)
        })
    }
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
