//! The networks of CUT / QS-Attn (docs/algorithm.md §3, §4, §7) on tch. Variable names equal the
//! reference's PyTorch `state_dict` keys (`model.{idx}.weight`, `model.{idx}.filt`,
//! `mlp_{s}.0.weight`, …), so released weights map one to one.
//!
//! This file holds the layers the generator and the discriminator share; each network is a flat
//! sequence of [`Layer`]s whose positions are the reference's module indices.
pub mod discriminator;
pub mod generator;
pub mod init;
pub mod l2_normalize;
pub mod leaky_relu;
pub mod norm_relu;
pub mod pad;
pub mod projector;
pub mod resample;

pub use discriminator::{Discriminator, DiscriminatorConfig};
pub use generator::{Generator, GeneratorConfig};
pub use init::{init_weights, InitType};
pub use projector::{Projector, ProjectorConfig, SlotSample};
pub use resample::{Down, Up};

use tch::{nn, TchError, Tensor};

/// Instance-norm epsilon (PyTorch's default).
const IN_EPS: f64 = 1e-5;

/// A k×k convolution with bias (variables `weight`, `bias`), plain or transposed.
pub(crate) struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
    /// `Some(output_padding)` for a transposed convolution.
    transposed: Option<i64>,
}

impl Conv {
    /// `conv(in → out, k, stride, zero padding)`; weight `out × in × k × k`.
    pub(crate) fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        Self::build(p, [c_out, c_in, k, k], c_out, stride, padding, None)
    }

    /// `conv_transpose(in → out, k, stride, padding, output_padding)`; weight `in × out × k × k`.
    pub(crate) fn transposed(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        output_padding: i64,
    ) -> Self {
        Self::build(p, [c_in, c_out, k, k], c_out, stride, padding, Some(output_padding))
    }

    // PyTorch-like defaults (uniform, fan-in scaled weight); `init::init_weights` replaces them.
    fn build(p: nn::Path, dims: [i64; 4], c_out: i64, stride: i64, padding: i64, transposed: Option<i64>) -> Self {
        let weight = p.var("weight", &dims, nn::init::DEFAULT_KAIMING_UNIFORM);
        let bias = p.zeros("bias", &[c_out]);
        Conv { weight, bias, stride, padding, transposed }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let (s, p) = ([self.stride; 2], [self.padding; 2]);
        match self.transposed {
            None => x.f_conv2d(&self.weight, Some(&self.bias), s, p, [1, 1], 1),
            Some(op) => x.f_conv_transpose2d(&self.weight, Some(&self.bias), s, p, [op; 2], 1, [1, 1]),
        }
    }
}

/// One element of a network's flat sequence.
pub(crate) enum Layer {
    /// Reflection padding by `n` on every side (a node that keeps no tensor, [`pad`]).
    ReflectionPad(i64),
    Conv(Conv),
    /// Instance norm: per (b, c), `(x − mean) / sqrt(var + 1e-5)` over H·W, biased variance,
    /// no affine parameters, no running statistics. Keeps a channels-last input's layout.
    InstanceNorm,
    Relu,
    /// `max(x, 0) + slope · min(x, 0)`.
    LeakyRelu(f64),
    Tanh,
    Down(Down),
    Up(Up),
    /// `x + body(x)` (the generator's ResBlock, body = `conv_block`).
    Residual(Vec<Layer>),
}

impl Layer {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        match self {
            Layer::ReflectionPad(n) => pad::pad2d(x, pad::PadMode::Reflection, *n),
            Layer::Conv(conv) => conv.forward(x),
            // (aten's instance norm would turn a channels-last input into NCHW)
            Layer::InstanceNorm if is_channels_last(x) => norm_relu::instance_norm(x, IN_EPS),
            Layer::InstanceNorm => x.f_instance_norm(None::<Tensor>, None, None, None, true, 0.1, IN_EPS, true),
            Layer::Relu => x.f_relu(),
            Layer::LeakyRelu(slope) => leaky_relu::leaky_relu(x, *slope),
            Layer::Tanh => x.f_tanh(),
            Layer::Down(down) => down.f_forward(x),
            Layer::Up(up) => up.f_forward(x),
            Layer::Residual(body) => x.f_add(&run(body, x)?),
        }
    }
}

/// Runs a sequence of layers.
pub(crate) fn run(layers: &[Layer], x: &Tensor) -> Result<Tensor, TchError> {
    run_with_outputs(layers, x, |_| false, |_, _| {})
}

/// Runs a sequence of layers, handing `output(i, y)` the output of every element `i` whose
/// output is `wanted(i)` (others may be skipped). An instance norm directly followed by a ReLU
/// runs as one node that saves less for backward ([`norm_relu`]) unless the norm's own output
/// is wanted.
pub(crate) fn run_with_outputs(
    layers: &[Layer],
    x: &Tensor,
    wanted: impl Fn(usize) -> bool,
    mut output: impl FnMut(usize, &Tensor),
) -> Result<Tensor, TchError> {
    let mut h = x.shallow_clone();
    let mut i = 0;
    while i < layers.len() {
        let fused =
            matches!(layers[i], Layer::InstanceNorm) && matches!(layers.get(i + 1), Some(Layer::Relu)) && !wanted(i);
        if fused {
            h = norm_relu::instance_norm_relu(&h, IN_EPS)?;
            i += 1; // the ReLU's index: h is its output
        } else {
            h = layers[i].forward(&h)?;
        }
        if wanted(i) {
            output(i, &h);
        }
        i += 1;
    }
    Ok(h)
}

/// Whether `t` is a `B × C × H × W` tensor stored channels-last (NHWC in memory) and not
/// also contiguous (as it is when C = 1 or H·W = 1): ops that would otherwise convert it to NCHW
/// take a path that keeps the layout. Read from the strides (no op dispatched): C innermost,
/// then W, H and B, each dense over the ones inside it (a dimension of size 1 may have any
/// stride, as in torch's contiguity).
pub(crate) fn is_channels_last(t: &Tensor) -> bool {
    if t.dim() != 4 || t.is_contiguous() {
        return false;
    }
    let (size, stride) = (t.size(), t.stride());
    let mut dense = 1;
    for d in [1, 3, 2, 0] {
        if size[d] != 1 && stride[d] != dense {
            return false;
        }
        dense *= size[d];
    }
    true
}

/// Checks that `x` is a `B × channels × H × W` batch.
pub(crate) fn check_images(what: &str, x: &Tensor, channels: i64) -> Result<(), TchError> {
    let s = x.size();
    if s.len() != 4 || s[1] != channels {
        return Err(crate::error::invalid(format!("{what} expects a (B, {channels}, H, W) tensor, got shape {s:?}")));
    }
    Ok(())
}
