//! Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al.,
//! NeurIPS 2020), the remedy when D overfits a few hundred training images: every image D
//! sees, real or translated, in its loss and in G's adversarial loss alike, is first passed
//! through random colour, translation and cutout transforms built from differentiable tensor
//! ops, so G's gradient flows back through them. Off unless `diff_augment` names a policy.
//!
//! Per image n, with parameters drawn uniformly (`AugmentParams::draw`), on images in [−1, 1]:
//!
//! - colour: brightness `x + (b − ½)`, then saturation `(x − x̄_c)·2s + x̄_c` with `x̄_c` the
//!   image's per-pixel mean over channels, then contrast `(x − x̄)·(c + ½) + x̄` with `x̄` the
//!   image's mean over channels and pixels; `b, s, c ∈ [0, 1)`;
//! - translation: `out[i, j] = x[i − tᵧ, j − tₓ]`, 0 where that lies outside the image, with
//!   integer shifts `tᵧ, tₓ ∈ [−r, r]`, `r = ⌊H/8 + ½⌋` (resp. W);
//! - cutout: `out = x · m`, `m = 0` on the square of side `k = ⌊H/2 + ½⌋` whose top-left corner
//!   is `(cᵧ − ⌊k/2⌋, cₓ − ⌊k/2⌋)` (clipped to the image), 1 elsewhere; centres
//!   `cᵧ ∈ [0, H + 1 − k mod 2)`, resp. W.
//!
//! All are elementwise or index maps, so the derivative is the same map applied to the
//! incoming gradient (translation routes it back by the opposite shift, cutout masks it).
//!
//! One D evaluation augments its real and its translated images with the same parameters
//! (image n of each half shares them), so D is never told which half is which by the
//! augmentation itself; parameters come from the trainer's seeded generator, stored in
//! checkpoints, so runs resume exactly.
use tch::{Kind, TchError, Tensor};

use crate::error::invalid;
use crate::rng::SplitMix64;

/// Which transforms a policy applies, in this order. Written as the option `diff_augment`:
/// `""` (off) or a comma-separated subset of [`Policy::NAMES`]; parsed once, when the options
/// are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub color: bool,
    pub translation: bool,
    pub cutout: bool,
}

impl Policy {
    /// The transforms' names, in the order they are applied.
    pub const NAMES: [&'static str; 3] = ["color", "translation", "cutout"];

    pub fn is_on(&self) -> bool {
        self.color || self.translation || self.cutout
    }

    fn flags(&self) -> [bool; 3] {
        [self.color, self.translation, self.cutout]
    }
}

impl std::str::FromStr for Policy {
    type Err = TchError;
    fn from_str(s: &str) -> Result<Policy, TchError> {
        let mut p = Policy::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "color" => p.color = true,
                "translation" => p.translation = true,
                "cutout" => p.cutout = true,
                other => {
                    return Err(invalid(format!(
                        "diff_augment is a comma-separated list of {} (or empty), got '{other}'",
                        Policy::NAMES.join(", ")
                    )))
                }
            }
        }
        Ok(p)
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<&str> =
            Policy::NAMES.iter().zip(self.flags()).filter_map(|(name, on)| on.then_some(*name)).collect();
        f.write_str(&on.join(","))
    }
}

crate::serde_as_text!(Policy);

/// The random parameters of one augmentation, per image (length `n` each).
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentParams {
    pub brightness: Vec<f64>,
    pub saturation: Vec<f64>,
    pub contrast: Vec<f64>,
    /// Shifts (rows, columns), each in `[−r, r]`.
    pub shift: Vec<(i64, i64)>,
    /// Cutout centres (row, column).
    pub cutout_centre: Vec<(i64, i64)>,
}

/// Translation range `r = ⌊side/8 + ½⌋`.
fn shift_range(side: i64) -> i64 {
    (side as f64 * 0.125 + 0.5) as i64
}

/// Cutout side `k = ⌊side/2 + ½⌋`.
fn cutout_side(side: i64) -> i64 {
    (side as f64 * 0.5 + 0.5) as i64
}

impl AugmentParams {
    /// Draws parameters for `n` images of `height × width` (every field is drawn whatever the
    /// policy, so the stream does not depend on it).
    pub fn draw(rng: &mut SplitMix64, n: usize, height: i64, width: i64) -> AugmentParams {
        let mut p = AugmentParams {
            brightness: Vec::with_capacity(n),
            saturation: Vec::with_capacity(n),
            contrast: Vec::with_capacity(n),
            shift: Vec::with_capacity(n),
            cutout_centre: Vec::with_capacity(n),
        };
        let (ry, rx) = (shift_range(height), shift_range(width));
        let (ky, kx) = (cutout_side(height), cutout_side(width));
        for _ in 0..n {
            p.brightness.push(rng.next_f64());
            p.saturation.push(rng.next_f64());
            p.contrast.push(rng.next_f64());
            let ty = rng.below((2 * ry + 1) as usize) as i64 - ry;
            let tx = rng.below((2 * rx + 1) as usize) as i64 - rx;
            p.shift.push((ty, tx));
            let cy = rng.below((height + 1 - ky % 2) as usize) as i64;
            let cx = rng.below((width + 1 - kx % 2) as usize) as i64;
            p.cutout_centre.push((cy, cx));
        }
        p
    }

    pub fn len(&self) -> usize {
        self.brightness.len()
    }

    pub fn is_empty(&self) -> bool {
        self.brightness.is_empty()
    }

    /// The same parameters twice in a row: for a batch `[fake; real]` whose halves share them.
    pub fn repeated(&self) -> AugmentParams {
        let twice = |v: &Vec<f64>| [v.as_slice(), v.as_slice()].concat();
        let twice_pairs = |v: &Vec<(i64, i64)>| [v.as_slice(), v.as_slice()].concat();
        AugmentParams {
            brightness: twice(&self.brightness),
            saturation: twice(&self.saturation),
            contrast: twice(&self.contrast),
            shift: twice_pairs(&self.shift),
            cutout_centre: twice_pairs(&self.cutout_centre),
        }
    }
}

/// A per-image factor as an `n × 1 × 1 × 1` tensor in `x`'s dtype and device.
fn per_image(values: &[f64], like: &Tensor) -> Tensor {
    Tensor::from_slice(values).to_kind(like.kind()).to_device(like.device()).view([-1, 1, 1, 1])
}

/// Colour: brightness, saturation, contrast (module comment).
fn color(x: &Tensor, p: &AugmentParams) -> Tensor {
    let half: Vec<f64> = p.brightness.iter().map(|b| b - 0.5).collect();
    let x = x + per_image(&half, x);
    let mean_c = x.mean_dim(&[1i64][..], true, None);
    let twice: Vec<f64> = p.saturation.iter().map(|s| 2.0 * s).collect();
    let x = (&x - &mean_c) * per_image(&twice, &x) + &mean_c;
    let mean = x.mean_dim(&[1i64, 2, 3][..], true, None);
    let factor: Vec<f64> = p.contrast.iter().map(|c| c + 0.5).collect();
    (&x - &mean) * per_image(&factor, &x) + &mean
}

/// Translation with zero fill: image n is read from a zero-padded copy at offset
/// `(r − tᵧ, r − tₓ)`.
fn translation(x: &Tensor, p: &AugmentParams) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let (ry, rx) = (shift_range(h), shift_range(w));
    let padded = x.constant_pad_nd([rx, rx, ry, ry]);
    let images: Vec<Tensor> = p
        .shift
        .iter()
        .enumerate()
        .map(|(n, &(ty, tx))| padded.narrow(0, n as i64, 1).narrow(2, ry - ty, h).narrow(3, rx - tx, w))
        .collect();
    Tensor::cat(&images, 0)
}

/// Cutout: zero on one square per image.
fn cutout(x: &Tensor, p: &AugmentParams) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let (ky, kx) = (cutout_side(h), cutout_side(w));
    let device = x.device();
    let inside = |starts: Vec<i64>, side: i64, len: i64| -> Tensor {
        let start = Tensor::from_slice(&starts).to_device(device).view([-1, 1]);
        let pos = Tensor::arange(len, (Kind::Int64, device)).view([1, -1]);
        pos.ge_tensor(&start).logical_and(&pos.lt_tensor(&(start + side)))
    };
    let rows = inside(p.cutout_centre.iter().map(|c| c.0 - ky / 2).collect(), ky, h);
    let cols = inside(p.cutout_centre.iter().map(|c| c.1 - kx / 2).collect(), kx, w);
    let cut = rows.unsqueeze(2).logical_and(&cols.unsqueeze(1)); // n × H × W
    let keep = cut.logical_not().to_kind(x.kind()).unsqueeze(1);
    x * keep
}

/// Applies `policy` to the batch `x` (`n × C × H × W`) with per-image parameters `p`.
pub fn diff_augment(x: &Tensor, policy: Policy, p: &AugmentParams) -> Result<Tensor, TchError> {
    if x.dim() != 4 || !x.is_floating_point() {
        return Err(invalid(format!(
            "diff_augment needs a floating-point (N, C, H, W) batch, got {:?} of {:?}",
            x.size(),
            x.kind()
        )));
    }
    if p.len() as i64 != x.size()[0] {
        return Err(invalid(format!(
            "diff_augment has parameters for {} images, the batch has {}",
            p.len(),
            x.size()[0]
        )));
    }
    let mut out = x.shallow_clone();
    if policy.color {
        out = color(&out, p);
    }
    if policy.translation {
        out = translation(&out, p);
    }
    if policy.cutout {
        out = cutout(&out, p);
    }
    Ok(out)
}

/// The trainer's augmenter: a policy and its seeded parameter stream.
pub struct Augmenter {
    pub policy: Policy,
    pub rng: SplitMix64,
}

impl Augmenter {
    /// `None` when the policy is empty (the reference's behaviour).
    pub fn new(policy: Policy, seed: u64) -> Option<Augmenter> {
        policy.is_on().then(|| Augmenter { policy, rng: SplitMix64::new(seed) })
    }

    /// Augments `x` whose first `n` images and (when `halves`) next `n` share fresh
    /// parameters: `halves = true` for D's `[fake; real]` batch, false for G's `fake` alone.
    pub fn apply(&mut self, x: &Tensor, halves: bool) -> Result<Tensor, TchError> {
        let size = x.size();
        let n = if halves { size[0] / 2 } else { size[0] } as usize;
        let drawn = AugmentParams::draw(&mut self.rng, n, size[2], size[3]);
        diff_augment(x, self.policy, &if halves { drawn.repeated() } else { drawn })
    }
}
