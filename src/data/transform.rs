//! The per-image training transform (docs/algorithm.md §2) and the small RNG that drives its random
//! draws.
//!
//! Pipeline, each step a function below:
//! 1. `to_rgb` — any decoded image → 8-bit RGB (grey replicated, alpha dropped);
//! 2. `resize_bicubic` to `load_size × load_size` (Pillow's bicubic, bit-exact);
//! 3. random `crop_size × crop_size` crop;
//! 4. `make_multiple_of_4` — a side not a multiple of 4 is resized (bicubic) to the nearest one;
//! 5. random horizontal flip with p = 0.5 when `flip`;
//! 6. `push_chw` — u8 → f32 `(v/255 − 0.5)/0.5` ∈ [−1, 1], channel-major.
use image::{imageops, DynamicImage, RgbImage};
use tch::{TchError, Tensor};

use crate::error::invalid;
use crate::rng::SplitMix64;

/// Sizes and augmentation of the training transform. The trainer applies the decay-phase rule
/// (docs/algorithm.md §2, Q21) by passing `load_size = crop_size` for epochs `> n_epochs`
/// (see `for_epoch`).
#[derive(Clone, Copy, Debug)]
pub struct TransformConfig {
    pub load_size: u32,
    pub crop_size: u32,
    pub flip: bool,
}

impl TransformConfig {
    /// Both sizes positive and the crop no larger than the resized image.
    pub fn validate(&self) -> Result<(), TchError> {
        if self.load_size == 0 || self.crop_size == 0 {
            return Err(invalid(format!(
                "load_size and crop_size must be positive, got {} and {}",
                self.load_size, self.crop_size
            )));
        }
        if self.crop_size > self.load_size {
            return Err(invalid(format!(
                "crop_size ({}) must not exceed load_size ({})",
                self.crop_size, self.load_size
            )));
        }
        Ok(())
    }

    /// The decay-phase rule (docs/algorithm.md Q21): for `epoch > n_epochs` the image is resized
    /// straight to `crop_size` (no resize/crop jitter; the flip stays).
    pub fn for_epoch(&self, epoch: u64, n_epochs: u64) -> TransformConfig {
        if epoch > n_epochs {
            TransformConfig { load_size: self.crop_size, ..*self }
        } else {
            *self
        }
    }
}

/// Step 1, PIL's `convert('RGB')`: 8-bit RGB kept; grey replicated to three channels; alpha
/// dropped (not composited); 16-bit samples keep their high byte (as Pillow's `RGB;16B`
/// unpacker does for 16-bit RGB PNGs); float images are clamped to [0, 1] and scaled.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(im) => im,
        DynamicImage::ImageRgba8(im) => from_fn(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma8(im) => from_fn(&|x, y| [im.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(im) => from_fn(&|x, y| [im.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageRgb16(im) => from_fn(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(im) => from_fn(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageLuma16(im) => from_fn(&|x, y| [(im.get_pixel(x, y).0[0] >> 8) as u8; 3]),
        DynamicImage::ImageLumaA16(im) => from_fn(&|x, y| [(im.get_pixel(x, y).0[0] >> 8) as u8; 3]),
        other => other.to_rgb8(),
    }
}

// ---------------------------------------------------------------------------------------------
// Bicubic resampling, a transcription of Pillow's `ImagingResample` for 8-bit images
// (libImaging/Resample.c, Pillow 3.3–12.x): Keys cubic with a = −0.5, support 2 widened by the
// scale factor when shrinking (antialiasing), weights normalised then rounded to 22-bit fixed
// point, a horizontal pass into an 8-bit intermediate image, then a vertical pass, each output
// rounded and clipped. Bit-exact with those Pillow versions. Pillow 13 runs the vertical pass
// first when the height shrinks much more than the width; there it differs by a few levels.
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output index: first input index and the fixed-point weights of its window.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i32>>,
}

fn precompute_coeffs(in_size: u32, out_size: u32) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut weights = Vec::with_capacity(out_size as usize);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero, as `as` does
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut k: Vec<f64> = (0..n).map(|x| bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|w| *w /= ww);
        }
        let one = (1u32 << PRECISION_BITS) as f64;
        let fixed = k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
        bounds.push((xmin as usize, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow-exact `img.resize((width, height), Image.BICUBIC)` of an RGB image.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if (w0, h0) == (width, height) {
        return img.clone(); // Pillow returns a copy
    }
    if width == 0 || height == 0 || w0 == 0 || h0 == 0 {
        return RgbImage::new(width, height); // nothing to sample (callers reject empty images)
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    // horizontal pass (rows of the source) into an 8-bit intermediate image
    let tmp = if width != w0 {
        let c = precompute_coeffs(w0, width);
        let mut out = RgbImage::new(width, h0);
        for y in 0..h0 {
            for xx in 0..width {
                let (xmin, n) = c.bounds[xx as usize];
                let k = &c.weights[xx as usize];
                let mut acc = [half; 3];
                for (x, &kx) in k.iter().enumerate().take(n) {
                    let p = img.get_pixel((xmin + x) as u32, y).0;
                    for ch in 0..3 {
                        acc[ch] += p[ch] as i64 * kx as i64;
                    }
                }
                out.put_pixel(xx, y, image::Rgb([clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]));
            }
        }
        out
    } else {
        img.clone()
    };
    if height == h0 {
        return tmp;
    }
    // vertical pass
    let c = precompute_coeffs(h0, height);
    let mut out = RgbImage::new(width, height);
    for yy in 0..height {
        let (ymin, n) = c.bounds[yy as usize];
        let k = &c.weights[yy as usize];
        for x in 0..width {
            let mut acc = [half; 3];
            for (y, &ky) in k.iter().enumerate().take(n) {
                let p = tmp.get_pixel(x, (ymin + y) as u32).0;
                for ch in 0..3 {
                    acc[ch] += p[ch] as i64 * ky as i64;
                }
            }
            out.put_pixel(x, yy, image::Rgb([clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]));
        }
    }
    out
}

/// The nearest multiple of 4 to `side` with Python's `round` (halves to even), at least 4.
pub fn nearest_multiple_of_4(side: u32) -> u32 {
    ((side as f64 / 4.0).round_ties_even() as u32 * 4).max(4)
}

/// Step 4 (the reference's `__make_power_2(img, base=4)`): a side that is not a multiple of 4
/// is resized (bicubic) to the nearest one; otherwise the image is returned unchanged.
pub fn make_multiple_of_4(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = (nearest_multiple_of_4(w), nearest_multiple_of_4(h));
    if (nw, nh) == (w, h) {
        img
    } else {
        resize_bicubic(&img, nw, nh)
    }
}

/// Steps 2–5 on an RGB image: resize, random crop, multiple-of-4, random flip. Draws from `rng`:
/// crop left, crop top, then the flip (when enabled).
pub fn augment(img: &RgbImage, cfg: &TransformConfig, rng: &mut SplitMix64) -> Result<RgbImage, TchError> {
    cfg.validate()?;
    if img.width() == 0 || img.height() == 0 {
        return Err(invalid("cannot transform an empty (0-pixel) image"));
    }
    // 2. resize to load_size × load_size, bicubic
    let resized = resize_bicubic(img, cfg.load_size, cfg.load_size);
    // 3. random crop crop_size × crop_size (left/top uniform over all valid offsets)
    let room = (cfg.load_size - cfg.crop_size) as usize + 1;
    let (left, top) = (rng.below(room) as u32, rng.below(room) as u32);
    let cropped = if cfg.crop_size == cfg.load_size {
        resized
    } else {
        imageops::crop_imm(&resized, left, top, cfg.crop_size, cfg.crop_size).to_image()
    };
    // 4. sides to multiples of 4
    let mut out = make_multiple_of_4(cropped);
    // 5. random horizontal flip, p = 0.5
    if cfg.flip && rng.next_f64() < 0.5 {
        imageops::flip_horizontal_in_place(&mut out);
    }
    Ok(out)
}

/// Step 6, torchvision's `ToTensor` then `Normalize(0.5, 0.5)`: appends the image to `out` as
/// f32 C×H×W, each value `(v/255 − 0.5)/0.5` computed in f32 in that order.
pub fn push_chw(img: &RgbImage, out: &mut Vec<f32>) {
    let raw = img.as_raw();
    out.reserve(raw.len());
    for c in 0..3 {
        out.extend(raw.iter().skip(c).step_by(3).map(|&v| (v as f32 / 255.0 - 0.5) / 0.5));
    }
}

/// An RGB image as a 3×H×W f32 CPU tensor in [−1, 1] (step 6).
pub fn rgb_to_tensor(img: &RgbImage) -> Tensor {
    let mut values = Vec::with_capacity(img.as_raw().len());
    push_chw(img, &mut values);
    Tensor::from_slice(&values).view([3, img.height() as i64, img.width() as i64])
}

/// The whole training transform on a decoded image: steps 1–6, 3×H×W f32 in [−1, 1].
pub fn transform(img: DynamicImage, cfg: &TransformConfig, rng: &mut SplitMix64) -> Result<Tensor, TchError> {
    Ok(rgb_to_tensor(&augment(&to_rgb(img), cfg, rng)?))
}
