//! Anti-aliased resampling (spec §3, Zhang 2019 as used by CUT), with fixed binomial filters
//! stored as non-trainable variables `filt` (saved and loaded with the weights, never updated).
//!
//! * `Down(c)`: reflection pad 1 → depthwise conv, stride 2, kernel `b bᵀ / 16`, `b = [1,2,1]`;
//!   output side `⌊(n−1)/2⌋ + 1`.
//! * `Up(c)`: replication pad 1 → depthwise transposed conv, stride 2, padding 2, kernel
//!   `4·(a aᵀ)/64`, `a = [1,3,3,1]` (side `2n+2`) → drop the first and last row and column
//!   → side `2n`.
//!
//! The pads keep no tensor for backward ([`super::pad`]).
use tch::{nn, TchError, Tensor};

use super::pad::{pad2d, PadMode};

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
        pad2d(x, PadMode::Reflection, 1)?
            .f_conv2d(&self.filt, None::<Tensor>, [2, 2], [0, 0], [1, 1], self.channels)
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
        let y = pad2d(x, PadMode::Replication, 1)?.f_conv_transpose2d(
            &self.filt,
            None::<Tensor>,
            [2, 2],
            [2, 2],
            [0, 0],
            self.channels,
            [1, 1],
        )?;
        let (h, w) = (y.size()[2], y.size()[3]);
        y.f_narrow(2, 1, h - 2)?.f_narrow(3, 1, w - 2)
    }
}
