//! Image files in and out: decoding to RGB (shared by the loader), `load_image` for inference,
//! and PNG export with the reference's conversion (docs/algorithm.md §12.1, Q20: truncation, no
//! rounding).
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{ImageFormat, ImageReader, RgbImage};
use tch::{Device, Kind, TchError, Tensor};

use super::completeness;
use super::transform::{make_multiple_of_4, resize_bicubic, rgb_to_tensor, to_rgb};
use crate::error::invalid;

/// Decodes an image file (format from its content, else its extension) to 8-bit RGB (grey
/// replicated, alpha dropped). A truncated JPEG or PNG (see `completeness`) or a decoder panic
/// on a malformed file is reported as an error.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, TchError> {
    let decode = || -> Result<image::DynamicImage, String> {
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        completeness::check(&bytes)?;
        let mut reader = ImageReader::new(std::io::Cursor::new(bytes));
        if let Ok(format) = ImageFormat::from_path(path) {
            reader.set_format(format);
        }
        let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
        reader.decode().map_err(|e| e.to_string())
    };
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(Ok(img)) if img.width() > 0 && img.height() > 0 => Ok(to_rgb(img)),
        Ok(Ok(_)) => Err(invalid(format!("cannot read image {}: it has no pixels", path.display()))),
        Ok(Err(e)) => Err(invalid(format!("cannot read image {}: {e}", path.display()))),
        Err(_) => Err(invalid(format!("cannot read image {}: the decoder failed", path.display()))),
    }
}

/// For inference: one image as a 1×3×H×W f32 CPU tensor in [−1, 1]. `Some(s)`: resized
/// (bicubic) to s×s, the reference's test-time transform (`load_size = crop_size`; followed,
/// as there, by the multiple-of-4 rounding, a no-op for s = 256). `None`: native size, each side
/// resized to the nearest multiple of 4 if it is not one.
pub fn load_image(path: &Path, size: Option<u32>) -> Result<Tensor, TchError> {
    let img = decode_rgb(path)?;
    let img = match size {
        Some(0) => return Err(invalid("load_image: size must be positive")),
        Some(s) => resize_bicubic(&img, s, s),
        None => img,
    };
    Ok(rgb_to_tensor(&make_multiple_of_4(img)).unsqueeze(0))
}

/// The reference's `tensor2im`: first image of a batch (3×H×W or N×3×H×W; one channel is
/// replicated), clamp to [−1, 1], `(v + 1)/2·255` in f32, truncated to u8 (docs/algorithm.md Q20).
pub fn tensor_to_rgb(t: &Tensor) -> Result<RgbImage, TchError> {
    let t = match t.dim() {
        3 => t.shallow_clone(),
        4 if t.size()[0] >= 1 => t.get(0),
        _ => return Err(invalid(format!("expected an image tensor of shape 3×H×W or N×3×H×W, got {:?}", t.size()))),
    };
    let (c, h, w) = match t.size()[..] {
        [c, h, w] if (c == 3 || c == 1) && h > 0 && w > 0 => (c as usize, h as usize, w as usize),
        ref s => return Err(invalid(format!("expected 1 or 3 channels and a non-empty image, got shape {s:?}"))),
    };
    if !matches!(t.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        return Err(invalid(format!("expected a floating-point image tensor, got {:?}", t.kind())));
    }
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).clamp(-1.0, 1.0).contiguous();
    let v = Vec::<f32>::try_from(t.view([-1]))?;
    let plane = h * w;
    let mut raw = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for ch in 0..3 {
            let x = v[if c == 1 { i } else { ch * plane + i }];
            // truncation toward zero, as numpy's astype(uint8); NaN → 0
            raw.push(((x + 1.0) / 2.0 * 255.0) as u8);
        }
    }
    RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| invalid("internal error: image buffer size"))
}

fn write_png(img: &RgbImage, path: &Path) -> Result<(), TchError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| invalid(format!("cannot create folder {}: {e}", parent.display())))?;
    }
    img.save_with_format(path, ImageFormat::Png)
        .map_err(|e| invalid(format!("cannot write image {}: {e}", path.display())))
}

/// Saves a 3×H×W (or N×3×H×W: the first image) tensor in [−1, 1] as a PNG with the reference's
/// conversion (`tensor_to_rgb`). Missing parent folders are created.
pub fn save_image(t: &Tensor, path: &Path) -> Result<(), TchError> {
    write_png(&tensor_to_rgb(t)?, path)
}

/// Width of the white gap between grid cells, in pixels.
pub const GRID_GAP: u32 = 2;

/// Saves rows of images (each 3×H×W in [−1, 1], all the same size) as one PNG, row by row,
/// with a 2-pixel white gap between images and between rows; shorter rows are padded white.
pub fn save_grid(rows: &[Vec<Tensor>], path: &Path) -> Result<(), TchError> {
    if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
        return Err(invalid("save_grid: every row needs at least one image"));
    }
    let cells: Vec<Vec<RgbImage>> =
        rows.iter().map(|r| r.iter().map(tensor_to_rgb).collect::<Result<_, _>>()).collect::<Result<_, _>>()?;
    let (w, h) = cells[0][0].dimensions();
    if let Some(bad) = cells.iter().flatten().find(|c| c.dimensions() != (w, h)) {
        return Err(invalid(format!(
            "save_grid: all images must have the same size, got {}×{} and {}×{}",
            w,
            h,
            bad.width(),
            bad.height()
        )));
    }
    let ncols = cells.iter().map(|r| r.len()).max().unwrap_or(1) as u32;
    let nrows = cells.len() as u32;
    let mut grid = RgbImage::from_pixel(
        ncols * w + (ncols - 1) * GRID_GAP,
        nrows * h + (nrows - 1) * GRID_GAP,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (x, y) = (c as u32 * (w + GRID_GAP), r as u32 * (h + GRID_GAP));
            image::imageops::replace(&mut grid, cell, x as i64, y as i64);
        }
    }
    write_png(&grid, path)
}
