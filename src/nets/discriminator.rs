//! The PatchGAN discriminator of CUT (docs/algorithm.md §4), anti-aliased, instance norm, LeakyReLU
//! 0.2, no sigmoid. For `n_layers = 3`, `ndf = 64`, 256² input:
//!
//! | idx   | element                                   | output        |
//! |-------|-------------------------------------------|---------------|
//! | 0–2   | conv 3→64 k4 s1 p1, LReLU, Down           | 64 × 128²     |
//! | 3–6   | conv 64→128 k4 s1 p1, IN, LReLU, Down     | 128 × 64²     |
//! | 7–10  | conv 128→256 k4 s1 p1, IN, LReLU, Down    | 256 × 32²     |
//! | 11–13 | conv 256→512 k4 s1 p1, IN, LReLU          | 512 × 31²     |
//! | 14    | conv 512→1 k4 s1 p1                       | 1 × 30²       |
//!
//! Channel multipliers `min(2ⁿ, 8)`. `no_antialias`: "conv s1 (+ IN) + LReLU + Down" becomes
//! "conv k4 s2 p1 (+ IN) + LReLU" in the strided stages (indices shift down).
use tch::{nn, TchError, Tensor};

use super::resample::Down;
use super::{check_images, run, Conv, Layer};

const KERNEL: i64 = 4;
const PAD: i64 = 1;
const SLOPE: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct DiscriminatorConfig {
    pub input_nc: i64,
    pub ndf: i64,
    pub n_layers: usize,
    pub no_antialias: bool,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig { input_nc: 3, ndf: 64, n_layers: 3, no_antialias: false }
    }
}

pub struct Discriminator {
    layers: Vec<Layer>,
    input_nc: i64,
}

/// Channel multiplier of stage `n`: `min(2ⁿ, 8)`.
fn mult(n: usize) -> i64 {
    1 << n.min(3)
}

impl Discriminator {
    pub fn new(p: &nn::Path, cfg: &DiscriminatorConfig) -> Self {
        let model = p / "model";
        let mut layers: Vec<Layer> = Vec::new();
        let at = |layers: &Vec<Layer>| &model / layers.len();
        let ndf = cfg.ndf;

        // Strided stages, each halving the resolution; stage 0 has no norm and exists even for
        // n_layers = 0, as in the reference.
        let stages = cfg.n_layers.max(1);
        for n in 0..stages {
            let c_in = if n == 0 { cfg.input_nc } else { ndf * mult(n - 1) };
            let c_out = ndf * mult(n);
            let stride = if cfg.no_antialias { 2 } else { 1 };
            layers.push(Layer::Conv(Conv::new(at(&layers), c_in, c_out, KERNEL, stride, PAD)));
            if n > 0 {
                layers.push(Layer::InstanceNorm);
            }
            layers.push(Layer::LeakyRelu(SLOPE));
            if !cfg.no_antialias {
                layers.push(Layer::Down(Down::new(&at(&layers), c_out)));
            }
        }

        // Two stride-1 convs: to ndf·min(2^n_layers, 8) channels, then to one logit per patch.
        let c_in = ndf * mult(stages - 1);
        let c_out = ndf * mult(cfg.n_layers);
        layers.push(Layer::Conv(Conv::new(at(&layers), c_in, c_out, KERNEL, 1, PAD)));
        layers.extend([Layer::InstanceNorm, Layer::LeakyRelu(SLOPE)]);
        layers.push(Layer::Conv(Conv::new(at(&layers), c_out, 1, KERNEL, 1, PAD)));
        Discriminator { layers, input_nc: cfg.input_nc }
    }

    /// Patch logits `B × 1 × H' × W'` (30 × 30 for 256² input). Panics on a bad input, as
    /// tch's modules do; [`Discriminator::f_forward`] returns the error.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.f_forward(x).unwrap()
    }

    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        check_images("the discriminator", x, self.input_nc)?;
        run(&self.layers, x)
    }
}
