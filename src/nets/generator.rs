//! The ResNet generator of CUT (docs/algorithm.md §3): one flat sequence whose indices address the
//! NCE taps and name the variables (`model.{idx}.weight|bias`, `model.{idx}.filt`,
//! `model.{idx}.conv_block.{1,5}.weight|bias`).
//!
//! Default sequence (anti-aliased, 9 blocks; indices for `ngf = 64`, 256² input):
//!
//! | idx    | element                              | output          |
//! |--------|--------------------------------------|-----------------|
//! | 0      | reflection pad 3                     | 3 × 262²        |
//! | 1–3    | conv 3→64 k7, IN, ReLU               | 64 × 256²       |
//! | 4–7    | conv 64→128 k3 p1, IN, ReLU, Down    | 128 × 128²      |
//! | 8–11   | conv 128→256 k3 p1, IN, ReLU, Down   | 256 × 64²       |
//! | 12–20  | ResBlock(256) × 9                    | 256 × 64²       |
//! | 21–24  | Up, conv 256→128 k3 p1, IN, ReLU     | 128 × 128²      |
//! | 25–28  | Up, conv 128→64 k3 p1, IN, ReLU      | 64 × 256²       |
//! | 29–31  | reflection pad 3, conv 64→3 k7, tanh | 3 × 256²        |
//!
//! `no_antialias`: each "conv s1, IN, ReLU, Down" becomes "conv k3 s2 p1, IN, ReLU";
//! `no_antialias_up`: each "Up, conv, IN, ReLU" becomes "conv_transpose k3 s2 p1 op1, IN, ReLU".
//! Later indices shift down accordingly. Dropout is off (the reference default), so a ResBlock's
//! body is `pad 1, conv k3, IN, ReLU, pad 1, conv k3, IN` (indices 0–6) and `out = in + body(in)`.
use tch::{nn, TchError, Tensor};

use super::resample::{Down, Up};
use super::{check_images, run, run_with_outputs, Conv, Layer};
use crate::error::invalid;

/// Down/upsampling steps between the stem and the ResBlocks (the reference's `n_downsampling`).
const N_SAMPLING: u32 = 2;

#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub input_nc: i64,
    pub output_nc: i64,
    pub ngf: i64,
    pub n_blocks: usize,
    pub no_antialias: bool,
    pub no_antialias_up: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig { input_nc: 3, output_nc: 3, ngf: 64, n_blocks: 9, no_antialias: false, no_antialias_up: false }
    }
}

pub struct Generator {
    layers: Vec<Layer>,
    input_nc: i64,
}

/// The body of ResBlock(d): `pad 1, conv d→d k3, IN, ReLU, pad 1, conv d→d k3, IN`.
fn res_block(p: nn::Path, dim: i64) -> Layer {
    let body = p / "conv_block";
    Layer::Residual(vec![
        Layer::ReflectionPad(1),
        Layer::Conv(Conv::new(&body / 1, dim, dim, 3, 1, 0)),
        Layer::InstanceNorm,
        Layer::Relu,
        Layer::ReflectionPad(1),
        Layer::Conv(Conv::new(&body / 5, dim, dim, 3, 1, 0)),
        Layer::InstanceNorm,
    ])
}

impl Generator {
    pub fn new(p: &nn::Path, cfg: &GeneratorConfig) -> Self {
        let model = p / "model";
        let mut layers: Vec<Layer> = Vec::new();
        // The path of the element about to be pushed: its index in the flat sequence.
        let at = |layers: &Vec<Layer>| &model / layers.len();
        let ngf = cfg.ngf;

        layers.push(Layer::ReflectionPad(3));
        layers.push(Layer::Conv(Conv::new(at(&layers), cfg.input_nc, ngf, 7, 1, 0)));
        layers.extend([Layer::InstanceNorm, Layer::Relu]);

        for i in 0..N_SAMPLING {
            let c = ngf << i;
            if cfg.no_antialias {
                layers.push(Layer::Conv(Conv::new(at(&layers), c, 2 * c, 3, 2, 1)));
                layers.extend([Layer::InstanceNorm, Layer::Relu]);
            } else {
                layers.push(Layer::Conv(Conv::new(at(&layers), c, 2 * c, 3, 1, 1)));
                layers.extend([Layer::InstanceNorm, Layer::Relu]);
                layers.push(Layer::Down(Down::new(&at(&layers), 2 * c)));
            }
        }

        let dim = ngf << N_SAMPLING;
        for _ in 0..cfg.n_blocks {
            layers.push(res_block(at(&layers), dim));
        }

        for i in 0..N_SAMPLING {
            let c = dim >> i;
            if cfg.no_antialias_up {
                layers.push(Layer::Conv(Conv::transposed(at(&layers), c, c / 2, 3, 2, 1, 1)));
            } else {
                layers.push(Layer::Up(Up::new(&at(&layers), c)));
                layers.push(Layer::Conv(Conv::new(at(&layers), c, c / 2, 3, 1, 1)));
            }
            layers.extend([Layer::InstanceNorm, Layer::Relu]);
        }

        layers.push(Layer::ReflectionPad(3));
        layers.push(Layer::Conv(Conv::new(at(&layers), ngf, cfg.output_nc, 7, 1, 0)));
        layers.push(Layer::Tanh);
        Generator { layers, input_nc: cfg.input_nc }
    }

    /// The translation `N × input_nc × H × W` (in [−1, 1]) → `N × output_nc × H × W` (tanh).
    /// Panics on a bad input, as tch's modules do; [`Generator::f_forward`] returns the error.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.f_forward(x).unwrap()
    }

    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        check_images("the generator", x, self.input_nc)?;
        run(&self.layers, x)
    }

    /// The outputs of the sequence elements `layers` (indices, any order, repeats allowed), in
    /// that order. Runs the sequence only up to the largest requested index ("encode-only",
    /// docs/algorithm.md §3).
    pub fn encode(&self, x: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>, TchError> {
        let Some(&last) = layers.iter().max() else {
            check_images("the generator", x, self.input_nc)?;
            return Ok(Vec::new());
        };
        Ok(self.run(x, layers, last)?.1)
    }

    /// The translation and the taps `layers` of the same pass (what training needs: the taps
    /// of the real images are the source features of the NCE terms, docs/algorithm.md Q11).
    pub fn forward_with_taps(&self, x: &Tensor, layers: &[usize]) -> Result<(Tensor, Vec<Tensor>), TchError> {
        self.run(x, layers, self.layers.len() - 1)
    }

    /// Runs the flat sequence through index `last`, keeping the outputs of `layers` (in that
    /// order): `(output of last, taps)`.
    fn run(&self, x: &Tensor, layers: &[usize], last: usize) -> Result<(Tensor, Vec<Tensor>), TchError> {
        check_images("the generator", x, self.input_nc)?;
        if let Some(&bad) = layers.iter().chain([&last]).find(|&&i| i >= self.layers.len()) {
            return Err(invalid(format!(
                "layer index {bad} is out of range: the generator has {} layers (0..={})",
                self.layers.len(),
                self.layers.len() - 1
            )));
        }
        let mut taps: Vec<Option<Tensor>> = (0..=last).map(|_| None).collect();
        let h = run_with_outputs(
            &self.layers[..=last],
            x,
            |i| layers.contains(&i),
            |i, y| taps[i] = Some(y.shallow_clone()),
        )?;
        let taps = layers
            .iter()
            .map(|&i| taps.get(i).and_then(|t| t.as_ref().map(Tensor::shallow_clone)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid(format!("taps {layers:?} lie beyond layer {last}")))?;
        Ok((h, taps))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
