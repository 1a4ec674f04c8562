//! Reflection and replication padding as autograd nodes that keep no tensor for backward.
//!
//! aten's padding nodes save their input, although their backward reads only its shape. In
//! the generator every pad follows a layer whose output nothing else keeps (a norm + ReLU, a
//! residual sum), so each native pad holds one more activation alive until backward: two per
//! residual block and one before the last convolution, in the translation pass and in the NCE
//! encoder pass alike (the resampling steps pad inside their own node, [`super::resample`]).
//! These nodes keep the input's shape only; values and gradients are those of the native ops
//! (the same aten kernels run).
//!
//! A channels-last (NHWC) input is padded as the `(B, 1, H, W, C)` tensor its memory holds,
//! by aten's 3-D pad with no padding of the last axis, and the result is NHWC again: aten's
//! 2-D pads on CUDA read and write NCHW only, so each would cost a layout copy there and
//! another one at the next (channels-last) convolution, in both passes.
use tch::{TchError, Tensor};

use super::is_channels_last;
use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;
use crate::ops::check;

/// How the border is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// `x[-i] = x[i]` (the edge itself is not repeated).
    Reflection,
    /// `x[-i] = x[0]` (the edge is repeated).
    Replication,
}

/// `x` (`B × C × H × W`) padded by `n` on every side. A plain aten call when `x` needs no
/// gradient (nothing would be saved anyway).
pub fn pad2d(x: &Tensor, mode: PadMode, n: i64) -> Result<Tensor, TchError> {
    if !x.requires_grad() {
        return native_pad(x, mode, n);
    }
    Ok(apply(Pad2d { mode, n, input_shape: Vec::new() }, &[x])?.remove(0))
}

/// aten's padding op (its autograd node, where grad mode is on, saves `x`), in `x`'s layout.
pub(crate) fn native_pad(x: &Tensor, mode: PadMode, n: i64) -> Result<Tensor, TchError> {
    if is_channels_last(x) {
        let (bhwc, pad) = (nhwc_as_5d(x)?, pad_of_nhwc_as_5d(n));
        let padded = match mode {
            PadMode::Reflection => bhwc.f_reflection_pad3d(pad)?,
            PadMode::Replication => bhwc.f_replication_pad3d(pad)?,
        };
        return nchw_of_5d(&padded);
    }
    match mode {
        PadMode::Reflection => x.f_reflection_pad2d([n; 4]),
        PadMode::Replication => x.f_replication_pad2d([n; 4]),
    }
}

/// The `(B, 1, H, W, C)` contiguous view of a channels-last `B × C × H × W` tensor.
fn nhwc_as_5d(t: &Tensor) -> Result<Tensor, TchError> {
    t.f_permute([0, 2, 3, 1])?.f_unsqueeze(1)
}

/// The `B × C × H × W` (channels-last) view of a `(B, 1, H, W, C)` tensor.
fn nchw_of_5d(t: &Tensor) -> Result<Tensor, TchError> {
    t.f_squeeze_dim(1)?.f_permute([0, 3, 1, 2])
}

/// A 3-D pad's amounts (last axis first) that pad H and W of a `(B, 1, H, W, C)` tensor by `n`.
fn pad_of_nhwc_as_5d(n: i64) -> [i64; 6] {
    [0, 0, n, n, n, n]
}

/// x̄ = Pᵀ ȳ for `ȳ` of the padded shape and an input of `input_shape`: each input position
/// receives the sum of the gradients of all its copies. aten's pad backward kernels compute
/// exactly this and read only the input's shape, given here as a zero-stride view of `ȳ` (no
/// allocation; detached, as its values play no part). Differentiable in `ȳ`.
/// A channels-last `ȳ` gives a channels-last `x̄` (3-D kernels, as in forward).
pub(crate) fn pad2d_backward(dy: &Tensor, mode: PadMode, n: i64, input_shape: &[i64]) -> Result<Tensor, TchError> {
    if is_channels_last(dy) {
        let &[b, c, h, w] = input_shape else { return Err(invalid(format!("pad2d: input shape {input_shape:?}"))) };
        let (dy_5d, pad) = (nhwc_as_5d(dy)?, pad_of_nhwc_as_5d(n));
        let shape_only = dy_5d.f_detach()?.f_as_strided([b, 1, h, w, c], [0; 5], None)?;
        let dx = match mode {
            PadMode::Reflection => shape_only.f_reflection_pad3d_backward(&dy_5d, pad)?,
            PadMode::Replication => shape_only.f_replication_pad3d_backward(&dy_5d, pad)?,
        };
        return nchw_of_5d(&dx);
    }
    let shape_only = dy.f_detach()?.f_as_strided(input_shape, [0, 0, 0, 0], None)?;
    match mode {
        PadMode::Reflection => shape_only.f_reflection_pad2d_backward(dy, [n; 4]),
        PadMode::Replication => shape_only.f_replication_pad2d_backward(dy, [n; 4]),
    }
}

struct Pad2d {
    mode: PadMode,
    n: i64,
    /// The input's shape, set by forward.
    input_shape: Vec<i64>,
}

impl AutogradOp for Pad2d {
    fn name(&self) -> &'static str {
        "pad2d"
    }

    // y = P x, where P copies every input position to its own place and to the border
    // positions that mirror it (reflection) or repeat it (replication). Nothing is saved.
    fn forward(&mut self, _ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let x = &inputs[0];
        check::rank("pad2d input", x, 4, "(B, C, H, W)")?;
        self.input_shape = x.size();
        Ok(vec![native_pad(x, self.mode, self.n)?])
    }

    // x̄ = Pᵀ ȳ (pad2d_backward). Linear in ȳ, hence differentiable.
    fn backward(&self, _ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dy) = &grads[0] else { return Ok(vec![None]) };
        Ok(vec![Some(pad2d_backward(dy, self.mode, self.n, &self.input_shape)?)])
    }

    fn differentiable_backward(&self) -> bool {
        true
    }
}
