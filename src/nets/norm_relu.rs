//! Instance norm followed by ReLU as one autograd node that keeps only its input for backward.
//!
//! Run as two ops, autograd keeps the norm's input *and* the ReLU's output of every such pair.
//! The output is needed by nothing else wherever a pad follows (in the generator's residual
//! blocks and in each downsampling step), once the pad keeps no tensor either ([`super::pad`],
//! [`super::resample`]; aten's pad node would keep this very output). Recomputing the ReLU's
//! mask from the input in backward drops those tensors. The values are those of the two ops.
//!
//! A batch of several channels-last (NHWC) images is normalised image by image, each a
//! `(1, C, H, W)` view that batch norm reads in place and writes into its slice of one NHWC
//! output (`native_batch_norm.out`, no join): the `(1, B·C, H, W)` view does not exist for that
//! layout (aten's instance norm copies it to NCHW, and its result costs another copy at the
//! next channels-last convolution). Backward masks the gradient for the whole batch at once
//! and runs batch norm's backward per image. The same node without the ReLU serves instance
//! norms of channels-last inputs that no ReLU follows ([`instance_norm`]).
//!
//! Differentiable once (the bridge raises on `create_graph=True`); the trainer never needs more.
use std::collections::HashMap;
use std::ffi::c_char;
use std::sync::{Mutex, OnceLock};

use tch::{Device, Kind, TchError, Tensor};
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

/// The statistics (`B × C` means or inverse deviations) of each view of
/// [`batch_norm_views`]: row `i` for image `i`, or all of them flattened for the whole batch.
fn stats_views(stats: &Tensor, by_image: bool) -> Result<Vec<Tensor>, TchError> {
    if by_image {
        return (0..stats.size()[0]).map(|i| stats.f_select(0, i)).collect();
    }
    Ok(vec![stats.f_view([-1])?])
}

/// The dtype of the statistics batch norm computes for inputs of `x`'s device and dtype:
/// float32 for a bfloat16 input on CUDA (its accumulation type), the input's own dtype on the
/// CPU. `native_batch_norm.out` must be handed statistics of exactly that dtype, so aten is
/// asked once per (device, dtype), with a two-value input, rather than the rule copied here.
fn batch_norm_stats_kind(x: &Tensor) -> Result<Kind, TchError> {
    static KINDS: OnceLock<Mutex<HashMap<(Device, Kind), Kind>>> = OnceLock::new();
    let key = (x.device(), x.kind());
    let kinds = KINDS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(kind) = kinds.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(*kind);
    }
    let probe = Tensor::f_zeros([1, 1, 1, 2], (key.1, key.0))?;
    let (_, mean, _) = probe.f_native_batch_norm(None::<Tensor>, None, None, None, true, 0.0, 1e-5)?;
    kinds.lock().unwrap_or_else(|e| e.into_inner()).insert(key, mean.kind());
    Ok(mean.kind())
}

/// The parts (one per view of [`batch_norm_views`]) back as one `B × C × H × W` tensor.
fn joined(parts: &[Tensor], shape: (i64, i64, i64, i64)) -> Result<Tensor, TchError> {
    let (b, c, h, w) = shape;
    match parts {
        [whole] => whole.f_reshape([b, c, h, w]),
        per_image => Tensor::f_cat(per_image, 0),
    }
}

/// Batch norm's normalisation (training statistics, no affine) of each view of `x`, as
/// `(x̂, μ, r)` with `x̂` shaped and laid out like `x` and `μ`, `r` of shape `B × C`. Image by
/// image, each image's output is written into its slice of one tensor.
fn normalised(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor), TchError> {
    let (b, c, h, w) = x.size4()?;
    if !by_image(x) {
        let (y, mean, invstd) =
            x.f_reshape([1, b * c, h, w])?.f_native_batch_norm(None::<Tensor>, None, None, None, true, 0.0, eps)?;
        return Ok((y.f_reshape([b, c, h, w])?, mean.f_view([b, c])?, invstd.f_view([b, c])?));
    }
    let y = x.f_empty_like()?; // channels-last, as x
    let stats_kind = batch_norm_stats_kind(x)?;
    let mean = Tensor::f_empty([b, c], (stats_kind, x.device()))?;
    let invstd = Tensor::f_empty([b, c], (stats_kind, x.device()))?;
    for i in 0..b {
        let (x_image, y_image) = (x.f_narrow(0, i, 1)?, y.f_narrow(0, i, 1)?);
        let (mean_image, invstd_image) = (mean.f_select(0, i)?, invstd.f_select(0, i)?);
        // returns the three out tensors themselves
        let _ = x_image.f_native_batch_norm_out(
            &y_image,
            &mean_image,
            &invstd_image,
            None::<Tensor>,
            None,
            None,
            None,
            true,
            0.0,
            eps,
        )?;
    }
    Ok((y, mean, invstd))
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
    // statistics, no affine), then ReLU in place. Saved: x as given, μ and r (B × C each); not y.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let x = &inputs[0];
        check::compute_kind("instance_norm_relu input", x)?; // a floating-point input
        let (mut y, mean, invstd) = normalised(x, self.eps)?;
        if self.relu {
            y = y.f_relu_()?;
        }
        ctx.save_for_backward(vec![x.shallow_clone(), mean, invstd]);
        Ok(vec![y])
    }

    // g = dy·[x̂ > 0] for the whole batch (ReLU's gradient; x̂ > 0 ⟺ x − μ > 0, as r > 0,
    // with μ in x's dtype; g = dy without the ReLU), then per view batch norm's input gradient
    // per (b, c):
    //   dx = r·(g − mean(g) − x̂·mean(g·x̂)).
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dy) = &grads[0] else { return Ok(vec![None]) };
        let [x, mean, invstd] = ctx.saved() else { return Err(invalid("instance_norm_relu: bad saved state")) };
        let (b, c, _, _) = x.size4()?;
        let g = if self.relu {
            let centred = x - mean.f_view([b, c, 1, 1])?.f_to_kind(x.kind())?;
            centred.f_threshold_backward(dy, 0.0)?
        } else {
            dy.shallow_clone()
        };
        let split = by_image(x);
        let g = in_layout_of(&g, x)?;
        let (x_views, g_views) = (batch_norm_views(x, split)?, batch_norm_views(&g, split)?);
        let (mean_views, invstd_views) = (stats_views(mean, split)?, stats_views(invstd, split)?);
        let dx = x_views
            .iter()
            .zip(&g_views)
            .zip(mean_views.iter().zip(&invstd_views))
            .map(|((x_view, g_view), (mean, invstd))| batch_norm_input_grad(g_view, x_view, mean, invstd, self.eps))
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
fn batch_norm_input_grad(
    grad: &Tensor,
    input: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    eps: f64,
) -> Result<Tensor, TchError> {
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
