//! The data pipeline (docs/algorithm.md §2, §12.1): dataset folders, decoding, the training
//! transform, the deterministic threaded loader, and PNG export with the reference's truncation.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{ImageBuffer, Luma, Rgb, RgbImage, Rgba};
use qs_attn::data::image_io::tensor_to_rgb;
use qs_attn::data::loader::epoch_batches_from;
use qs_attn::data::loader::unreadable_images;
use qs_attn::data::transform::{make_multiple_of_4, nearest_multiple_of_4, resize_bicubic};
use qs_attn::data::{
    epoch_batches, load_image, save_grid, save_image, Batch, Direction, LoaderConfig, TransformConfig, UnalignedDataset,
};
use qs_attn::error::message;
use tch::{Kind, Tensor};

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("qs_attn_data_{}_{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A deterministic RGB test pattern (the same formula as the Pillow oracle below).
fn pattern(w: u32, h: u32, salt: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([0, 1, 2].map(|c| ((x * 37 + y * 91 + c * 53 + (x * y * 7) % 23 + salt * 29) % 256) as u8))
    })
}

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b"x").unwrap();
}

fn save(img: &RgbImage, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// A dataset of `na` A-images and `nb` B-images, each w×h with distinct content.
fn make_dataset(dir: &Path, na: usize, nb: usize, w: u32, h: u32) -> Arc<UnalignedDataset> {
    for i in 0..na {
        save(&pattern(w, h, i as u32), &dir.join(format!("trainA/a{i:02}.png")));
    }
    for i in 0..nb {
        save(&pattern(w, h, 100 + i as u32), &dir.join(format!("trainB/b{i:02}.png")));
    }
    Arc::new(UnalignedDataset::open(dir, "train", Direction::AtoB).unwrap())
}

fn loader(batch_size: usize, seed: u64, workers: usize, serial: bool) -> LoaderConfig {
    LoaderConfig { batch_size, seed, workers, prefetch: 2, serial_batches: serial, shard: (0, 1) }
}

fn all_batches(ds: &Arc<UnalignedDataset>, t: TransformConfig, cfg: &LoaderConfig, epoch: u64) -> Vec<Batch> {
    epoch_batches(Arc::clone(ds), t, cfg, epoch).map(|b| b.unwrap()).collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap()
}

fn err_msg<T>(r: Result<T, tch::TchError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => message(&e),
    }
}

fn names(paths: &[PathBuf], root: &Path) -> Vec<String> {
    paths.iter().map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned()).collect()
}

// ------------------------------------------------------------------------------------ folders

#[test]
fn missing_or_empty_folder_is_an_error_naming_it() {
    let d = TempDir::new("missing");
    touch(&d.path().join("trainA/x.png"));
    let msg = err_msg(UnalignedDataset::open(d.path(), "train", Direction::AtoB));
    assert!(msg.contains(&d.path().join("trainB").display().to_string()) && msg.contains("does not exist"), "{msg}");

    // a folder holding no image (only other files, and an empty subfolder)
    touch(&d.path().join("trainB/readme.txt"));
    fs::create_dir_all(d.path().join("trainB/empty")).unwrap();
    let msg = err_msg(UnalignedDataset::open(d.path(), "train", Direction::AtoB));
    assert!(msg.contains(&d.path().join("trainB").display().to_string()) && msg.contains("no images"), "{msg}");

    // a file where the folder should be
    let d2 = TempDir::new("notdir");
    touch(&d2.path().join("trainA/x.png"));
    fs::write(d2.path().join("trainB"), b"x").unwrap();
    let msg = err_msg(UnalignedDataset::open(d2.path(), "train", Direction::AtoB));
    assert!(msg.contains("not a folder"), "{msg}");
}

#[test]
fn files_are_gathered_recursively_filtered_and_sorted_as_strings() {
    let d = TempDir::new("gather");
    let a = d.path().join("trainA");
    for f in [
        "b.png",
        "a.JPG",
        "a/z.png",
        "a-c.png",
        "sub/deep/c.jpeg",
        "x.Png",
        "y.webp",
        "z.TIFF",
        "w.bmp",
        "v.ppm",
        "u.tif",
    ] {
        touch(&a.join(f));
    }
    for f in ["notes.txt", "sub/img.gif", "png", "sub/noext"] {
        touch(&a.join(f));
    }
    touch(&d.path().join("trainB/only.jpg"));
    let ds = UnalignedDataset::open(d.path(), "train", Direction::AtoB).unwrap();
    // Python's sorted() on path strings: '-' < '.' < '/'
    assert_eq!(
        names(&ds.a, &a),
        [
            "a-c.png",
            "a.JPG",
            "a/z.png",
            "b.png",
            "sub/deep/c.jpeg",
            "u.tif",
            "v.ppm",
            "w.bmp",
            "x.Png",
            "y.webp",
            "z.TIFF"
        ]
    );
    assert_eq!(ds.b.len(), 1);
    assert_eq!(ds.len(), 11);
    assert!(!ds.is_empty());
}

#[test]
fn test_phase_falls_back_to_val_and_btoa_swaps() {
    let d = TempDir::new("valfallback");
    for f in ["valA/1.png", "valA/2.png", "valA/3.png", "valB/1.png"] {
        touch(&d.path().join(f));
    }
    let ds = UnalignedDataset::open(d.path(), "test", Direction::AtoB).unwrap();
    assert!(ds.a.iter().all(|p| p.starts_with(d.path().join("valA"))) && ds.a.len() == 3);
    assert!(ds.b[0].starts_with(d.path().join("valB")));
    assert_eq!(ds.len(), 3);
    // train has no fallback
    assert!(err_msg(UnalignedDataset::open(d.path(), "train", Direction::AtoB)).contains("trainA"));
    // testA present: used
    for f in ["testA/t.png", "testB/t.png", "testB/u.png"] {
        touch(&d.path().join(f));
    }
    let ds = UnalignedDataset::open(d.path(), "test", Direction::AtoB).unwrap();
    assert_eq!((ds.a.len(), ds.b.len(), ds.len()), (1, 2, 2));
    assert!(ds.a[0].starts_with(d.path().join("testA")));
    // BtoA: the B folder becomes the source domain
    let swapped = UnalignedDataset::open(d.path(), "test", Direction::BtoA).unwrap();
    assert_eq!(swapped.a, ds.b);
    assert_eq!(swapped.b, ds.a);
    assert_eq!(swapped.len(), 2);
}

#[test]
fn direction_parses() {
    assert_eq!("AtoB".parse::<Direction>().unwrap(), Direction::AtoB);
    assert_eq!("BtoA".parse::<Direction>().unwrap(), Direction::BtoA);
    assert_eq!(Direction::BtoA.to_string(), "BtoA");
    assert!(err_msg("atob".parse::<Direction>()).contains("AtoB"));
}

// ----------------------------------------------------------------------------------- decoding

/// Pixel (x, y) of a 1×3×H×W tensor in [-1, 1], back in 0..=255 (exact for 8-bit inputs).
fn pixel(t: &Tensor, x: i64, y: i64) -> [i64; 3] {
    [0, 1, 2].map(|c| ((t.double_value(&[0, c, y, x]) * 0.5 + 0.5) * 255.0).round() as i64)
}

#[test]
fn every_format_and_colour_type_loads_as_rgb() {
    let d = TempDir::new("formats");
    let p = d.path();
    // grey PNG: replicated
    ImageBuffer::from_fn(8, 4, |x, _| Luma([(x * 30) as u8])).save(p.join("grey.png")).unwrap();
    // RGBA PNG: alpha dropped, not composited
    ImageBuffer::from_fn(8, 4, |x, _| if x == 0 { Rgba([10u8, 20, 30, 0]) } else { Rgba([200, 100, 50, 128]) })
        .save(p.join("rgba.png"))
        .unwrap();
    // 16-bit RGB PNG: the high byte (as Pillow)
    ImageBuffer::from_fn(8, 4, |_, _| Rgb([0x8080u16, 0x01FF, 0xFFFF])).save(p.join("deep.png")).unwrap();
    // 16-bit grey PNG
    ImageBuffer::from_fn(8, 4, |_, _| Luma([0x4000u16])).save(p.join("deep_grey.png")).unwrap();
    let img = pattern(8, 4, 0);
    for f in ["rgb.bmp", "rgb.webp", "rgb.tiff", "rgb.ppm", "rgb.jpg"] {
        img.save(p.join(f)).unwrap();
    }
    // a PNG named .jpg: the content decides
    img.save_with_format(p.join("png_named.jpg"), image::ImageFormat::Png).unwrap();

    for f in [
        "grey.png",
        "rgba.png",
        "deep.png",
        "deep_grey.png",
        "rgb.bmp",
        "rgb.webp",
        "rgb.tiff",
        "rgb.ppm",
        "rgb.jpg",
        "png_named.jpg",
    ] {
        let t = load_image(&p.join(f), None).unwrap();
        assert_eq!(t.size(), [1, 3, 4, 8], "{f}");
        assert_eq!(t.kind(), Kind::Float, "{f}");
    }
    let grey = load_image(&p.join("grey.png"), None).unwrap();
    assert_eq!(pixel(&grey, 3, 1), [90, 90, 90]);
    let rgba = load_image(&p.join("rgba.png"), None).unwrap();
    assert_eq!(pixel(&rgba, 0, 0), [10, 20, 30]);
    assert_eq!(pixel(&rgba, 5, 2), [200, 100, 50]);
    let deep = load_image(&p.join("deep.png"), None).unwrap();
    assert_eq!(pixel(&deep, 0, 0), [0x80, 0x01, 0xFF]);
    assert_eq!(pixel(&load_image(&p.join("deep_grey.png"), None).unwrap(), 2, 2), [0x40; 3]);
    // lossless formats reproduce the pattern exactly
    for f in ["rgb.bmp", "rgb.webp", "rgb.tiff", "rgb.ppm", "png_named.jpg"] {
        let t = load_image(&p.join(f), None).unwrap();
        for (x, y) in [(0, 0), (7, 3), (3, 2)] {
            assert_eq!(pixel(&t, x, y), img.get_pixel(x as u32, y as u32).0.map(|v| v as i64), "{f} at {x},{y}");
        }
    }
    // JPEG: lossy, but close
    let jpg = load_image(&p.join("rgb.jpg"), None).unwrap();
    assert!(jpg.min().double_value(&[]) >= -1.0 && jpg.max().double_value(&[]) <= 1.0);
}

#[test]
fn unreadable_file_is_an_error_for_load_image() {
    let d = TempDir::new("badload");
    let bad = d.path().join("bad.png");
    fs::write(&bad, (0..200u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let msg = err_msg(load_image(&bad, None));
    assert!(msg.contains("bad.png"), "{msg}");
    assert!(err_msg(load_image(&d.path().join("nothing.png"), None)).contains("nothing.png"));
    assert!(load_image(&bad, Some(0)).is_err());
}

// --------------------------------------------------------------------------------- transform

/// Oracle: Pillow's `Image.fromarray(pattern).resize((ow, oh), Image.BICUBIC)`, row-major RGB,
/// computed with Pillow 13.0 on cases where it runs the classic horizontal-then-vertical passes
/// (Pillow 3.3–12; Pillow 13 runs the vertical pass first when the height shrinks much more than
/// the width, and then differs by a few levels; we keep the classic order of the reference's era).
#[test]
fn bicubic_resize_matches_pillow_bit_exactly() {
    let up: [u8; 216] = [
        0, 46, 99, 9, 62, 114, 34, 87, 141, 57, 109, 172, 81, 137, 200, 104, 168, 222, 130, 196, 248, 147, 212, 255,
        53, 104, 177, 68, 130, 203, 100, 171, 216, 139, 212, 111, 173, 172, 71, 197, 65, 110, 216, 68, 130, 227, 88,
        140, 142, 204, 124, 169, 166, 152, 191, 120, 170, 127, 154, 80, 112, 129, 51, 151, 47, 93, 170, 52, 121, 178,
        68, 136, 154, 224, 31, 189, 140, 56, 205, 31, 96, 63, 45, 124, 7, 83, 155, 56, 130, 185, 82, 156, 177, 96, 165,
        165, 13, 66, 119, 38, 91, 144, 78, 131, 184, 100, 153, 206, 121, 174, 236, 143, 196, 255, 168, 221, 119, 183,
        236, 14, 80, 132, 224, 97, 160, 136, 131, 206, 27, 173, 249, 48, 214, 194, 83, 235, 62, 107, 121, 72, 107, 32,
        101, 101, 173, 230, 124, 200, 180, 86, 217, 108, 40, 124, 136, 55, 96, 123, 90, 138, 69, 134, 85, 82, 169, 40,
        102, 187, 148, 207, 61, 181, 149, 93, 200, 62, 139, 83, 75, 161, 37, 110, 154, 81, 152, 127, 113, 174, 140,
        132, 184, 155, 22, 75, 140, 46, 104, 164, 86, 151, 204, 115, 171, 244, 139, 191, 172, 158, 211, 6, 182, 235, 7,
        196, 249, 33,
    ];
    let mixed: [u8; 144] = [
        0, 49, 102, 39, 91, 150, 81, 142, 207, 125, 198, 255, 182, 248, 91, 230, 42, 50, 34, 89, 158, 84, 153, 170,
        142, 147, 127, 188, 113, 182, 140, 168, 102, 153, 74, 113, 102, 153, 206, 149, 208, 182, 195, 142, 33, 247, 15,
        85, 85, 73, 132, 62, 131, 176, 185, 205, 81, 175, 75, 109, 58, 90, 91, 119, 83, 153, 90, 136, 207, 120, 203,
        77, 154, 174, 47, 148, 42, 116, 25, 102, 177, 88, 170, 172, 140, 140, 174, 195, 166, 42, 27, 79, 124, 85, 130,
        191, 117, 174, 247, 164, 235, 125, 208, 73, 47, 249, 39, 92, 68, 123, 168, 126, 196, 82, 191, 169, 139, 137,
        122, 112, 100, 76, 93, 148, 83, 151, 118, 171, 189, 165, 232, 0, 232, 153, 46, 107, 27, 109, 9, 89, 148, 64,
        136, 188,
    ];
    let down: [u8; 36] = [
        112, 130, 137, 139, 126, 133, 120, 127, 130, 134, 125, 124, 132, 138, 118, 125, 130, 131, 136, 115, 126, 129,
        123, 131, 122, 123, 132, 129, 120, 139, 127, 138, 131, 117, 117, 121,
    ];
    assert_eq!(resize_bicubic(&pattern(5, 7, 0), 8, 9).as_raw().as_slice(), &up[..]); // both up
    assert_eq!(resize_bicubic(&pattern(7, 5, 0), 6, 8).as_raw().as_slice(), &mixed[..]); // w down, h up
    assert_eq!(resize_bicubic(&pattern(13, 11, 0), 4, 3).as_raw().as_slice(), &down[..]); // both down
                                                                                          // vertical-only resize: first row of Pillow's 7×5 → 7×9
    let vert = resize_bicubic(&pattern(7, 5, 0), 7, 9);
    assert_eq!(
        &vert.as_raw()[..21],
        &[0, 46, 99, 29, 82, 135, 65, 118, 192, 102, 176, 229, 140, 214, 255, 197, 250, 27, 234, 10, 63]
    );
    // same size: unchanged
    assert_eq!(resize_bicubic(&pattern(6, 5, 1), 6, 5), pattern(6, 5, 1));
}

#[test]
fn multiple_of_4_rounds_like_python() {
    // Python round(): halves to even; never below 4
    for (side, want) in [(256, 256), (5, 4), (6, 8), (7, 8), (10, 8), (14, 16), (2, 4), (1, 4), (9, 8)] {
        assert_eq!(nearest_multiple_of_4(side), want, "side {side}");
    }
    assert_eq!(make_multiple_of_4(pattern(10, 6, 0)).dimensions(), (8, 8));
    let keep = pattern(8, 12, 0);
    assert_eq!(make_multiple_of_4(keep.clone()), keep);
}

#[test]
fn to_tensor_values_are_exact() {
    let d = TempDir::new("values");
    save(&RgbImage::from_pixel(4, 4, Rgb([255, 0, 128])), &d.path().join("trainA/a.png"));
    save(&RgbImage::from_pixel(4, 4, Rgb([1, 254, 127])), &d.path().join("trainB/b.png"));
    let ds = Arc::new(UnalignedDataset::open(d.path(), "train", Direction::AtoB).unwrap());
    let t = TransformConfig { load_size: 4, crop_size: 4, flip: true };
    let b = all_batches(&ds, t, &loader(1, 0, 0, false), 1).remove(0);
    assert_eq!(b.a.size(), [1, 3, 4, 4]);
    let a = to_vec(&b.a);
    assert!(a[..16].iter().all(|&v| v == 1.0));
    assert!(a[16..32].iter().all(|&v| v == -1.0));
    let mid = (128f32 / 255.0 - 0.5) / 0.5;
    assert!((mid - 0.003_921_6).abs() < 1e-6);
    assert!(a[32..].iter().all(|&v| v == mid));
    // bit-identical to torch's ToTensor + Normalize composition
    let raw = Tensor::from_slice(&[1u8, 254, 127]).to_kind(Kind::Float);
    let want = to_vec(&((raw / 255.0 - 0.5) / 0.5));
    let bv = to_vec(&b.b);
    assert_eq!([bv[0], bv[16], bv[32]], [want[0], want[1], want[2]]);
}

#[test]
fn decay_phase_rule() {
    let t = TransformConfig { load_size: 286, crop_size: 256, flip: true };
    assert_eq!(t.for_epoch(200, 200).load_size, 286);
    let d = t.for_epoch(201, 200);
    assert_eq!((d.load_size, d.crop_size, d.flip), (256, 256, true));
    assert!(TransformConfig { load_size: 4, crop_size: 8, flip: false }.validate().is_err());
    assert!(TransformConfig { load_size: 0, crop_size: 0, flip: false }.validate().is_err());
}

// ------------------------------------------------------------------------------------ loader

#[test]
fn tiny_images_are_resized_up_and_cropped() {
    let d = TempDir::new("tiny");
    let ds = make_dataset(d.path(), 2, 3, 5, 7);
    let t = TransformConfig { load_size: 18, crop_size: 12, flip: true };
    let batches = all_batches(&ds, t, &loader(3, 7, 2, false), 1);
    assert_eq!(batches.len(), 1);
    for x in [&batches[0].a, &batches[0].b] {
        assert_eq!(x.size(), [3, 3, 12, 12]);
        assert!(x.min().double_value(&[]) >= -1.0 && x.max().double_value(&[]) <= 1.0);
    }
    // a crop size that is not a multiple of 4 is rounded (13 → 12)
    let t = TransformConfig { load_size: 18, crop_size: 13, flip: false };
    assert_eq!(all_batches(&ds, t, &loader(1, 7, 1, false), 1)[0].a.size(), [1, 3, 12, 12]);
}

#[test]
fn same_seed_and_epoch_give_identical_batches_for_any_worker_count() {
    let d = TempDir::new("determinism");
    let ds = make_dataset(d.path(), 7, 4, 20, 16);
    let t = TransformConfig { load_size: 20, crop_size: 16, flip: true };
    let run =
        |workers, epoch| all_batches(&ds, t, &LoaderConfig { prefetch: 3, ..loader(2, 42, workers, false) }, epoch);
    let one = run(1, 3);
    assert_eq!(one.len(), 3); // 7 items, batches of 2, last dropped
    for other in [run(3, 3), run(0, 3), run(2, 3)] {
        assert_eq!(other.len(), one.len());
        for (x, y) in one.iter().zip(&other) {
            assert_eq!((&x.a_paths, &x.b_paths), (&y.a_paths, &y.b_paths));
            assert!(x.a.equal(&y.a) && x.b.equal(&y.b));
        }
    }
    // another epoch: another order and other draws
    let next = run(3, 4);
    let differs = one.iter().zip(&next).any(|(x, y)| x.a_paths != y.a_paths || !x.a.equal(&y.a) || !x.b.equal(&y.b));
    assert!(differs);
    // every A file appears at most once per epoch (a permutation of 0..len, here len = |A|)
    let mut seen: Vec<_> = one.iter().flat_map(|b| b.a_paths.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6);
}

#[test]
fn shards_of_a_data_parallel_run_split_the_single_process_batches() {
    // Two ranks with batch 2 each see, per step, exactly the two halves of the batch of 4 that
    // a single process sees; 9 items give 2 global batches (drop_last on W·B = 4).
    let d = TempDir::new("shards");
    let ds = make_dataset(d.path(), 9, 5, 20, 16);
    let t = TransformConfig { load_size: 20, crop_size: 16, flip: true };
    let single = all_batches(&ds, t, &loader(4, 7, 2, false), 2);
    let ranks: Vec<Vec<Batch>> =
        (0..2).map(|r| all_batches(&ds, t, &LoaderConfig { shard: (r, 2), ..loader(2, 7, 1, false) }, 2)).collect();
    assert_eq!(single.len(), 2);
    for (k, whole) in single.iter().enumerate() {
        for (r, rank) in ranks.iter().enumerate() {
            assert_eq!(rank.len(), 2);
            let half = whole.a.narrow(0, 2 * r as i64, 2);
            assert!(
                rank[k].a.equal(&half) && rank[k].b.equal(&whole.b.narrow(0, 2 * r as i64, 2)),
                "step {k} rank {r}"
            );
            assert_eq!(rank[k].a_paths[..], whole.a_paths[2 * r..2 * r + 2]);
        }
    }
    let bad = epoch_batches(Arc::clone(&ds), t, &LoaderConfig { shard: (2, 2), ..loader(1, 7, 1, false) }, 1)
        .collect::<Vec<_>>();
    assert!(err_msg(bad.into_iter().next().unwrap()).contains("rank 2"));
}

#[test]
fn a_resumed_epoch_starts_at_its_batch() {
    let d = TempDir::new("resume_epoch");
    let ds = make_dataset(d.path(), 8, 3, 20, 16);
    let t = TransformConfig { load_size: 20, crop_size: 16, flip: true };
    let all = all_batches(&ds, t, &loader(1, 3, 2, false), 5);
    for workers in [0, 1, 3] {
        let rest: Vec<Batch> =
            epoch_batches_from(Arc::clone(&ds), t, &loader(1, 3, workers, false), 5, 5).map(|b| b.unwrap()).collect();
        assert_eq!(rest.len(), 3, "{workers} workers");
        for (x, y) in all[5..].iter().zip(&rest) {
            assert!(x.a.equal(&y.a) && x.b.equal(&y.b));
        }
    }
    assert_eq!(epoch_batches_from(Arc::clone(&ds), t, &loader(1, 3, 2, false), 5, 99).count(), 0);
}

#[test]
fn serial_batches_pair_a_i_with_b_i_mod_b() {
    let d = TempDir::new("serial");
    let ds = make_dataset(d.path(), 5, 2, 8, 8);
    let t = TransformConfig { load_size: 8, crop_size: 8, flip: false };
    let batches = all_batches(&ds, t, &loader(1, 1, 2, true), 1);
    assert_eq!(batches.len(), 5);
    for (i, b) in batches.iter().enumerate() {
        assert_eq!(b.a_paths, [ds.a[i].clone()]);
        assert_eq!(b.b_paths, [ds.b[i % 2].clone()]);
        // no flip, load = crop: the image itself, as load_image gives it
        assert!(b.a.equal(&load_image(&ds.a[i], Some(8)).unwrap()));
    }
    // B larger than A: len = |B|, A cycles
    let d2 = TempDir::new("serial2");
    let ds2 = make_dataset(d2.path(), 2, 5, 8, 8);
    let batches = all_batches(&ds2, t, &loader(1, 1, 1, true), 1);
    assert_eq!(batches.len(), 5);
    assert_eq!(batches[3].a_paths, [ds2.a[1].clone()]);
    assert_eq!(batches[4].b_paths, [ds2.b[4].clone()]);
}

#[test]
fn flip_gives_flipped_and_unflipped_crops() {
    let d = TempDir::new("flip");
    // one asymmetric A image, load = crop so the only randomness is the flip
    let ds = make_dataset(d.path(), 1, 40, 12, 12);
    let plain = load_image(&ds.a[0], Some(12)).unwrap();
    let mirrored = plain.flip([3]);
    assert!(!plain.equal(&mirrored));
    let t = TransformConfig { load_size: 12, crop_size: 12, flip: true };
    let batches = all_batches(&ds, t, &loader(1, 5, 2, false), 1);
    assert_eq!(batches.len(), 40);
    let (mut flipped, mut unflipped) = (0, 0);
    for b in &batches {
        if b.a.equal(&plain) {
            unflipped += 1;
        } else if b.a.equal(&mirrored) {
            flipped += 1;
        } else {
            panic!("neither the image nor its mirror");
        }
    }
    assert!(flipped >= 5 && unflipped >= 5, "flipped {flipped}, unflipped {unflipped}");
    // flip off: always the plain image
    let t = TransformConfig { flip: false, ..t };
    assert!(all_batches(&ds, t, &loader(1, 5, 2, false), 1).iter().all(|b| b.a.equal(&plain)));
}

#[test]
fn corrupt_file_is_skipped_with_a_warning_and_replaced() {
    let d = TempDir::new("corrupt");
    let ds = make_dataset(d.path(), 3, 2, 8, 8);
    // replace a01.png by random bytes
    let bad = ds.a[1].clone();
    fs::write(&bad, (0..300u32).map(|i| ((i * 2654435761u32) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    let t = TransformConfig { load_size: 8, crop_size: 8, flip: false };
    for workers in [0, 2] {
        let batches = all_batches(&ds, t, &loader(1, 3, workers, true), 1);
        assert_eq!(batches.len(), 3);
        // serial: item 1 would be a01; it is replaced by the next readable file, a02
        let used: Vec<_> = batches.iter().map(|b| b.a_paths[0].clone()).collect();
        assert_eq!(used, [ds.a[0].clone(), ds.a[2].clone(), ds.a[2].clone()]);
    }
    assert!(unreadable_images().contains(&bad));
    // shuffled epochs still yield full batches
    let batches = all_batches(&ds, t, &loader(3, 9, 3, false), 2);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].a.size(), [3, 3, 8, 8]);
    assert!(!batches[0].a_paths.contains(&bad));

    // a domain with no readable image: an error per batch, no panic, no hang
    let d2 = TempDir::new("allbad");
    let ds2 = make_dataset(d2.path(), 1, 1, 8, 8);
    fs::write(&ds2.b[0], b"not an image").unwrap();
    let out: Vec<_> = epoch_batches(ds2, t, &loader(1, 0, 1, false), 1).collect();
    assert_eq!(out.len(), 1);
    assert!(out[0].as_ref().is_err_and(|e| message(e).contains("domain B")));
}

#[test]
fn drop_last_and_num_batches() {
    let d = TempDir::new("droplast");
    let ds = make_dataset(d.path(), 7, 3, 8, 8);
    let t = TransformConfig { load_size: 8, crop_size: 8, flip: false };
    for (bs, want) in [(1, 7), (2, 3), (3, 2), (7, 1), (8, 0)] {
        for workers in [0, 4] {
            let it = epoch_batches(Arc::clone(&ds), t, &loader(bs, 0, workers, false), 1);
            assert_eq!(it.num_batches(), want);
            assert_eq!(it.size_hint(), (want, Some(want)));
            let got: Vec<_> = it.map(|b| b.unwrap()).collect();
            assert_eq!(got.len(), want);
            assert!(got.iter().all(|b| b.a.size()[0] == bs as i64 && b.a_paths.len() == bs));
        }
    }
    // invalid configurations: a single error
    let out: Vec<_> = epoch_batches(Arc::clone(&ds), t, &loader(0, 0, 2, false), 1).collect();
    assert!(out.len() == 1 && err_msg(out.into_iter().next().unwrap()).contains("batch_size"));
    let bad_t = TransformConfig { load_size: 8, crop_size: 16, flip: false };
    let out: Vec<_> = epoch_batches(Arc::clone(&ds), bad_t, &loader(1, 0, 2, false), 1).collect();
    assert!(out.len() == 1 && err_msg(out.into_iter().next().unwrap()).contains("crop_size"));
}

#[test]
fn dropping_the_iterator_early_stops_the_workers_promptly() {
    let d = TempDir::new("dropearly");
    let ds = make_dataset(d.path(), 60, 4, 64, 64);
    let t = TransformConfig { load_size: 96, crop_size: 64, flip: true };
    let cfg = LoaderConfig { batch_size: 1, seed: 0, workers: 3, prefetch: 2, serial_batches: false, shard: (0, 1) };
    let start = Instant::now();
    let full = epoch_batches(Arc::clone(&ds), t, &cfg, 1).count();
    let full_time = start.elapsed();
    assert_eq!(full, 60);

    // one batch, then drop, on another thread so that a hang fails the test instead of blocking it
    let (tx, rx) = std::sync::mpsc::channel();
    let (ds2, cfg2) = (Arc::clone(&ds), cfg.clone());
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut it = epoch_batches(ds2, t, &cfg2, 1);
        let first = it.next().unwrap().is_ok();
        drop(it); // stops and joins the workers
        tx.send((first, start.elapsed())).unwrap();
    });
    let (first, early) = rx.recv_timeout(Duration::from_secs(30)).expect("dropping the iterator hung");
    assert!(first);
    assert!(early < Duration::from_secs(5), "dropping took {early:?}");
    assert!(early < full_time || early < Duration::from_millis(200), "early {early:?} vs full {full_time:?}");
    // never started: dropping right away is fine too
    drop(epoch_batches(ds, t, &cfg, 2));
}

// ---------------------------------------------------------------------------------- PNG out

#[test]
fn save_image_truncates_like_the_reference() {
    let d = TempDir::new("save");
    // v with (v + 1)/2·255 = 127.9 in f32 is saved as 127 (no rounding)
    let v = 127.9f32 / 255.0 * 2.0 - 1.0;
    assert!((((v + 1.0) / 2.0 * 255.0) - 127.9).abs() < 1e-3);
    let vals = [v, 1.0, -1.0, 2.0, -3.0, 0.999, f32::NAN];
    let t = Tensor::from_slice(&vals).view([1, 7]).expand([3, 1, 7], false).contiguous();
    let path = d.path().join("sub/dir/out.png");
    save_image(&t, &path).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    let row: Vec<u8> = (0..7).map(|x| back.get_pixel(x, 0).0[0]).collect();
    // 0.999 → 254.87 → 254; out of range clamped; NaN → 0
    assert_eq!(row, [127, 255, 0, 255, 0, 254, 0]);
    // a batch: the first image is saved
    let batch = Tensor::cat(&[t.unsqueeze(0), t.unsqueeze(0).zeros_like()], 0);
    assert_eq!(tensor_to_rgb(&batch).unwrap(), back);
    // bad shapes are errors
    assert!(save_image(&Tensor::zeros([2, 4, 4], (Kind::Float, tch::Device::Cpu)), &path).is_err());
    assert!(save_image(&Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu)), &path).is_err());
}

#[test]
fn save_then_load_round_trips_within_one_step() {
    let d = TempDir::new("roundtrip");
    let t = (Tensor::rand([1, 3, 12, 16], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0).set_requires_grad(true);
    let path = d.path().join("x.png");
    save_image(&t, &path).unwrap();
    let back = load_image(&path, None).unwrap();
    assert_eq!(back.size(), [1, 3, 12, 16]);
    let err = (back - t.detach()).abs().max().double_value(&[]);
    assert!(err <= 1.0 / 127.5 + 1e-6, "round-trip error {err}");
}

#[test]
fn load_image_sizes() {
    let d = TempDir::new("loadsizes");
    let p = d.path().join("x.png");
    save(&pattern(10, 7, 3), &p);
    // native size, sides rounded to multiples of 4 (10 → 8, 7 → 8)
    assert_eq!(load_image(&p, None).unwrap().size(), [1, 3, 8, 8]);
    assert_eq!(load_image(&p, Some(256)).unwrap().size(), [1, 3, 256, 256]);
    assert_eq!(load_image(&p, Some(10)).unwrap().size(), [1, 3, 8, 8]);
    // a multiple of 4 stays native and exact
    save(&pattern(12, 8, 3), &p);
    let t = load_image(&p, None).unwrap();
    assert_eq!(t.size(), [1, 3, 8, 12]);
    assert_eq!(pixel(&t, 5, 6), pattern(12, 8, 3).get_pixel(5, 6).0.map(|v| v as i64));
    // Some(s) is the Pillow bicubic resize
    let want = resize_bicubic(&pattern(12, 8, 3), 16, 16);
    let t = load_image(&p, Some(16)).unwrap();
    assert_eq!(pixel(&t, 9, 4), want.get_pixel(9, 4).0.map(|v| v as i64));
}

#[test]
fn save_grid_lays_out_rows_with_white_gaps() {
    let d = TempDir::new("grid");
    let img = |v: f64| Tensor::full([3, 4, 5], v, (Kind::Float, tch::Device::Cpu));
    let path = d.path().join("grid.png");
    save_grid(&[vec![img(-1.0), img(0.0), img(1.0)], vec![img(-1.0)]], &path).unwrap();
    let g = image::open(&path).unwrap().to_rgb8();
    assert_eq!(g.dimensions(), (3 * 5 + 2 * 2, 2 * 4 + 2));
    assert_eq!(g.get_pixel(0, 0).0, [0; 3]); // row 0, image 0 (black)
    assert_eq!(g.get_pixel(5, 0).0, [255; 3]); // gap
    assert_eq!(g.get_pixel(7, 3).0, [127; 3]); // image 1: (0+1)/2·255 = 127.5 → 127
    assert_eq!(g.get_pixel(18, 3).0, [255; 3]); // image 2 (white)
    assert_eq!(g.get_pixel(0, 4).0, [255; 3]); // gap between rows
    assert_eq!(g.get_pixel(2, 7).0, [0; 3]); // row 1, image 0
    assert_eq!(g.get_pixel(9, 8).0, [255; 3]); // short row padded white
                                               // mismatched sizes and empty input are errors
    assert!(save_grid(&[vec![img(0.0), Tensor::zeros([3, 2, 2], (Kind::Float, tch::Device::Cpu))]], &path).is_err());
    assert!(save_grid(&[], &path).is_err());
    assert!(save_grid(&[vec![]], &path).is_err());
}
