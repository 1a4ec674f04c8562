//! Anti-aliased resampling (docs/algorithm.md §3, Zhang 2019 as used by CUT), with fixed binomial
//! filters stored as non-trainable variables `filt` (saved and loaded with the weights, never
//! updated).
//!
//! * `Down(c)`: reflection pad 1 → depthwise conv, stride 2, kernel `b bᵀ / 16`, `b = [1,2,1]`;
//!   output side `⌊(n−1)/2⌋ + 1`.
//! * `Up(c)`: replication pad 1 → depthwise transposed conv, stride 2, padding 2, kernel
//!   `4·(a aᵀ)/64`, `a = [1,3,3,1]` (side `2n+2`) → drop the first and last row and column
//!   → side `2n`.
//!
//! Each runs as one autograd node (pad and filter together) that keeps no tensor for backward:
//! the filter is fixed and the pads and the convolutions are linear, so the input gradient is
//! the adjoint applied to the output gradient, which needs only the input's shape. Run as aten
//! ops, the convolution would keep its padded input (for the filter's gradient, which nothing
//! uses) and a native pad the input itself, an activation nothing else keeps: the output of a
//! norm + ReLU (generator) or of a LeakyReLU (discriminator) before Down, a residual sum or a
//! norm + ReLU before Up. The values are those of aten's ops (the same kernels run forward).
use tch::{nn, Kind, TchError, Tensor};

use super::pad::{native_pad, pad2d_backward, PadMode};
use crate::autograd::{apply, autocast_conv_input, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;
use crate::ops::check;

/// `c × 1 × k × k` copies of the normalised outer product `scale · (t tᵀ) / (Σt)²`.
fn binomial_filter(p: &nn::Path, taps: &[f64], scale: f64, channels: i64) -> Tensor {
    let k = taps.len() as i64;
    let t = Tensor::from_slice(taps);
    let kernel = t.outer(&t) * (scale / taps.iter().sum::<f64>().powi(2));
    let filt = kernel.view([1, 1, k, k]).expand([channels, 1, k, k], false).contiguous();
    p.add("filt", filt.to_kind(p.kind()).to_device(p.device()), false)
}

/// Blur-pool downsampling by 2.
pub struct Down {
    filt: Tensor,
    channels: i64,
}

impl Down {
    pub fn new(p: &nn::Path, channels: i64) -> Self {
        Down { filt: binomial_filter(p, &[1.0, 2.0, 1.0], 1.0, channels), channels }
    }

    /// `B × c × H × W` → `B × c × ⌊(H−1)/2⌋+1 × ⌊(W−1)/2⌋+1`. Panics on a bad input, as tch's
    /// modules do; [`Down::f_forward`] returns the error instead.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.f_forward(x).unwrap()
    }

    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let node = Resample {
            kind: ResampleKind::Down,
            filt: self.filt.shallow_clone(),
            channels: self.channels,
            input: None,
        };
        node.run(x)
    }
}

/// Anti-aliased upsampling by 2.
pub struct Up {
    filt: Tensor,
    channels: i64,
}

impl Up {
    pub fn new(p: &nn::Path, channels: i64) -> Self {
        Up { filt: binomial_filter(p, &[1.0, 3.0, 3.0, 1.0], 4.0, channels), channels }
    }

    /// `B × c × H × W` → `B × c × 2H × 2W`. Panics on a bad input, as tch's modules do;
    /// [`Up::f_forward`] returns the error instead.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.f_forward(x).unwrap()
    }

    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let node =
            Resample { kind: ResampleKind::Up, filt: self.filt.shallow_clone(), channels: self.channels, input: None };
        node.run(x)
    }
}

#[derive(Clone, Copy)]
enum ResampleKind {
    Down,
    Up,
}

/// The node of one resampling step: the fixed filter `filt` (`c × 1 × k × k`, depthwise).
struct Resample {
    kind: ResampleKind,
    filt: Tensor,
    channels: i64,
    /// The input's shape and dtype, set by forward.
    input: Option<(Vec<i64>, Kind)>,
}

impl Resample {
    /// The step on `x`: through the node when `x` needs a gradient, else the plain ops; in
    /// `x`'s dtype, or autocast's where autocast is on (as aten's convolution would).
    fn run(self, x: &Tensor) -> Result<Tensor, TchError> {
        let x = autocast_conv_input(x)?;
        if !x.requires_grad() {
            return self.forward_ops(&x);
        }
        Ok(apply(self, &[&x])?.remove(0))
    }

    // Down: y = K_s2 · R₁ x — reflection pad 1 (R₁), then the depthwise 3×3 blur at stride 2.
    // Up:   y = N · Kᵀ_s2,p2 · E₁ x — replication pad 1 (E₁), the depthwise 4×4 transposed
    //       convolution at stride 2 and padding 2 (side 2n+2), then N drops the first and last
    //       row and column (side 2n). A transposed convolution's padding p drops p rows and
    //       columns on each side of its full output, so N · Kᵀ_s2,p2 = Kᵀ_s2,p3: one op whose
    //       output is contiguous (a cropped view would be copied by the next convolution).
    fn forward_ops(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let (filt, c) = (self.filt.f_to_kind(x.kind())?, self.channels);
        match self.kind {
            ResampleKind::Down => {
                native_pad(x, PadMode::Reflection, 1)?.f_conv2d(&filt, None::<Tensor>, [2, 2], [0, 0], [1, 1], c)
            }
            ResampleKind::Up => native_pad(x, PadMode::Replication, 1)?.f_conv_transpose2d(
                &filt,
                None::<Tensor>,
                [2, 2],
                [3, 3],
                [0, 0],
                c,
                [1, 1],
            ),
        }
    }
}

impl AutogradOp for Resample {
    fn name(&self) -> &'static str {
        match self.kind {
            ResampleKind::Down => "downsample",
            ResampleKind::Up => "upsample",
        }
    }

    // forward_ops (filter in x's dtype), with grad mode off (x's shape and dtype kept; nothing
    // saved).
    fn forward(&mut self, _ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let x = &inputs[0];
        check::rank(self.name(), x, 4, "(B, C, H, W)")?;
        self.input = Some((x.size(), x.kind()));
        Ok(vec![self.forward_ops(x)?])
    }

    // The adjoints, in ȳ's dtype (bfloat16 under autocast), returned in x's:
    // Down: x̄ = R₁ᵀ · K_s2ᵀ ȳ, K_s2ᵀ being the transposed convolution with the same filter
    //       (output padding 0 or 1 restores the padded side n+2 from ⌊(n−1)/2⌋+1).
    // Up:   x̄ = E₁ᵀ · K_s2,p3 ȳ, the strided convolution being the transposed one's adjoint
    //       (output i reads ȳ's rows 2i−3 … 2i).
    // R₁ᵀ and E₁ᵀ are aten's pad backward kernels (pad2d_backward). All linear in ȳ, hence
    // differentiable (gradient penalties through the discriminator's Down).
    fn backward(&self, _ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dy) = &grads[0] else { return Ok(vec![None]) };
        let Some((input_shape, input_kind)) = &self.input else {
            return Err(invalid("resample: backward before forward"));
        };
        let (filt, c) = (self.filt.f_to_kind(dy.kind())?, self.channels);
        let dx = match self.kind {
            ResampleKind::Down => {
                let (padded_h, padded_w) = (input_shape[2] + 2, input_shape[3] + 2);
                let (out_h, out_w) = (dy.size()[2], dy.size()[3]);
                let output_padding = [padded_h - 2 * out_h - 1, padded_w - 2 * out_w - 1];
                let d_padded =
                    dy.f_conv_transpose2d(&filt, None::<Tensor>, [2, 2], [0, 0], output_padding, c, [1, 1])?;
                pad2d_backward(&d_padded, PadMode::Reflection, 1, input_shape)?
            }
            ResampleKind::Up => {
                let d_padded = dy.f_conv2d(&filt, None::<Tensor>, [2, 2], [3, 3], [1, 1], c)?;
                pad2d_backward(&d_padded, PadMode::Replication, 1, input_shape)?
            }
        };
        Ok(vec![Some(dx.f_to_kind(*input_kind)?)])
    }

    fn differentiable_backward(&self) -> bool {
        true
    }
}
