//! Nothing lost, nothing crashes (issue 18), the Rust side: patch ids for huge position counts
//! without allocating them, checkpoint checksums, truncated image files, run-directory rules and
//! the divergence guard.
use std::collections::HashMap;
use std::path::Path;

use qs_attn::data::completeness;
use qs_attn::ops::PatchSampler;
use qs_attn::rng::SplitMix64;
use qs_attn::train::guard::OnNonFinite;
use qs_attn::train::{checkpoint, guard, run_dir};
use tch::{Device, Kind, Tensor};

/// The dense partial Fisher–Yates the sampler implements (docs/algorithm.md §7.2), written out here.
fn dense_ids(seed: u64, p: usize, k: usize) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed);
    let mut perm: Vec<i64> = (0..p as i64).collect();
    for i in 0..k {
        let j = i + rng.below(p - i);
        perm.swap(i, j);
    }
    perm.truncate(k);
    perm
}

#[test]
fn patch_ids_equal_the_dense_permutation_and_need_no_memory_of_p() {
    for (seed, p, k) in [(0u64, 1usize, 1usize), (3, 10, 10), (7, 4096, 256), (11, 100, 37), (5, 64, 200)] {
        let got = PatchSampler::new(seed).sample(p as i64, k as i64, 1, false, Device::Cpu).unwrap();
        let want = dense_ids(seed, p, k.min(p));
        assert_eq!(Vec::<i64>::try_from(&got).unwrap(), want, "seed {seed}, p {p}, k {k}");
    }
    // per image: consecutive draws of the same generator, row after row
    let got = PatchSampler::new(9).sample(50, 5, 3, true, Device::Cpu).unwrap();
    assert_eq!(got.size(), vec![3, 5]);
    let mut rng = SplitMix64::new(9);
    let mut want = Vec::new();
    for _ in 0..3 {
        let mut perm: Vec<i64> = (0..50).collect();
        for i in 0..5 {
            let j = i + rng.below(50 - i);
            perm.swap(i, j);
        }
        want.extend_from_slice(&perm[..5]);
    }
    assert_eq!(Vec::<i64>::try_from(&got.reshape([-1])).unwrap(), want);
    // 2^62 positions: four distinct ids in range, no 2^62-entry table
    let ids = Vec::<i64>::try_from(&PatchSampler::new(0).sample(1 << 62, 4, 1, false, Device::Cpu).unwrap()).unwrap();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|&i| (0..1 << 62).contains(&i)));
    let err = PatchSampler::new(0).sample(1 << 40, 1 << 20, 1 << 20, true, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("too many"), "{err}");
}

fn tiny_checkpoint(path: &Path) {
    let tensors = vec![
        ("w".to_string(), Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4])),
        ("n".to_string(), Tensor::from(5i64)),
    ];
    checkpoint::file::save(path, &tensors, HashMap::from([("format".to_string(), "test".to_string())])).unwrap();
}

#[test]
fn checkpoints_carry_a_checksum_that_catches_a_flipped_bit() {
    let dir = tempdir("checksum");
    let path = dir.join("c.safetensors");
    tiny_checkpoint(&path);
    let (tensors, meta) = checkpoint::file::load(&path).unwrap();
    assert!(meta["checksum"].starts_with("crc32:"));
    assert_eq!(Vec::<f32>::try_from(tensors["w"].reshape([-1])).unwrap()[11], 11.0);
    // one bit of the last tensor byte
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let err = checkpoint::file::load(&path).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("checksum"), "{err}");
}

#[test]
fn a_killed_save_leaves_a_temp_file_that_the_next_save_removes() {
    let dir = tempdir("temps");
    // a pid that no process has (above the kernel's pid_max of 2^22)
    let stale = dir.join(".c.safetensors.tmp-4999999");
    let other = dir.join(".d.safetensors.tmp-4999999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    std::fs::write(&other, b"another file's").unwrap();
    tiny_checkpoint(&dir.join("c.safetensors"));
    assert!(!stale.exists());
    assert!(other.exists(), "only the temp files of the file saved are touched");
}

/// A small RGB image encoded as `format` by the image crate.
fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x * y) % 251) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn truncated_or_corrupt_jpeg_and_png_files_are_caught() {
    for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png] {
        let whole = encoded(format);
        completeness::check(&whole).unwrap();
        for keep in [whole.len() / 2, whole.len() - 2, 20] {
            let err = completeness::check(&whole[..keep]).unwrap_err();
            assert!(err.contains("truncated"), "{format:?} cut to {keep}: {err}");
        }
    }
    // a byte flipped inside a PNG's pixel data: the chunk's CRC no longer matches
    let mut png = encoded(image::ImageFormat::Png);
    let at = png.windows(4).position(|w| w == b"IDAT").unwrap() + 10;
    png[at] ^= 0x10;
    assert!(completeness::check(&png).unwrap_err().contains("CRC"));
    // and the decoder path refuses the truncated JPEG (it decodes it with grey otherwise)
    let dir = tempdir("jpeg");
    let jpeg = encoded(image::ImageFormat::Jpeg);
    std::fs::write(dir.join("cut.jpg"), &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let err = qs_attn::data::image_io::decode_rgb(&dir.join("cut.jpg")).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn run_names_stay_inside_checkpoints_dir() {
    for ok in ["x", "group/run-1", "a.b"] {
        run_dir::check_name(ok).unwrap();
    }
    for bad in ["", "..", "../..", "a/../../b", "/tmp/x", "./x"] {
        let err = run_dir::check_name(bad).unwrap_err().to_string();
        assert!(err.contains("name must be a plain run name"), "{bad}: {err}");
    }
}

#[test]
fn a_new_run_refuses_an_old_run_directory_and_a_resumed_one_trims_its_log() {
    let dir = tempdir("rundir");
    run_dir::prepare(&dir, None, false).unwrap(); // empty: fine
    let log = dir.join("loss_log.jsonl");
    let rows: String = (1..=5).map(|i| format!("{{\"iter\": {i}, \"losses\": {{}}}}\n")).collect();
    std::fs::write(&log, &rows).unwrap();
    tiny_checkpoint(&dir.join("latest.safetensors"));
    let err = run_dir::prepare(&dir, None, false).unwrap_err().to_string();
    assert!(err.contains("resume(") && err.contains("overwrite=True"), "{err}");
    // resuming at iteration 3 keeps rows 1..=3
    run_dir::prepare(&dir, Some(3), false).unwrap();
    let iters: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iter"].as_u64().unwrap())
        .collect();
    assert_eq!(iters, vec![1, 2, 3]);
    // overwrite: the old checkpoints and log are gone
    run_dir::prepare(&dir, None, true).unwrap();
    assert!(!log.exists() && !dir.join("latest.safetensors").exists());
}

#[test]
fn the_guard_names_the_first_nonfinite_term_and_its_iteration() {
    let finite = Tensor::from(1.5f32);
    let nan = Tensor::from(f32::NAN);
    // immediate (CPU): the step that goes bad fails before its update
    let mut g = guard::DivergenceGuard::new(OnNonFinite::Stop, Device::Cpu);
    assert!(g.admit(1, [("D", &finite), ("D_real", &finite)], &[]).unwrap());
    let err = g.admit(2, [("D", &finite), ("G", &nan)], &[]).unwrap_err().to_string();
    assert!(err.contains("G became NaN or infinite at iteration 2"), "{err}");
    assert!(g.verify().is_err(), "a tripped guard stays tripped");
    // deferred (as on CUDA, exercised here with CPU tensors): recorded on the device, read by verify
    let mut g = guard::DivergenceGuard::new(OnNonFinite::Stop, Device::Cuda(0));
    assert!(g.admit(1, [("NCE", &finite)], &[]).unwrap());
    g.verify().unwrap();
    let inf = Tensor::from(f32::INFINITY);
    assert!(g.admit(4, [("NCE", &inf), ("G", &inf)], &[]).unwrap());
    assert!(g.admit(5, [("D", &nan)], &[]).unwrap());
    let err = g.verify().unwrap_err().to_string();
    assert!(err.contains("NCE, G became NaN or infinite at iteration 4"), "{err}");
    // skip: the bad update is refused, the run goes on
    let mut g = guard::DivergenceGuard::new(OnNonFinite::Skip, Device::Cpu);
    assert!(!g.admit(1, [("G", &nan)], &[]).unwrap());
    assert!(g.admit(2, [("G", &finite)], &[]).unwrap());
    assert_eq!(g.skipped, 1);
    let err = "ignore".parse::<OnNonFinite>().err().expect("an unknown policy is refused");
    assert!(err.to_string().contains("on_nonfinite"));
    // gradients: one NaN element among many tensors
    let grads = vec![Tensor::ones([3, 3], (Kind::Float, Device::Cpu)), Tensor::from_slice(&[0.0f32, f32::NAN])];
    assert_eq!(guard::any_nonfinite(&grads).unwrap().int64_value(&[]), 1);
    assert_eq!(guard::any_nonfinite(&grads[..1]).unwrap().int64_value(&[]), 0);
    let named =
        vec![("G.w".to_string(), grads[0].shallow_clone()), ("opt_G.exp_avg.w".to_string(), grads[1].shallow_clone())];
    let err = guard::ensure_finite(&named).unwrap_err().to_string();
    assert!(err.contains("opt_G.exp_avg.w"), "{err}");
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qs_attn_robust_{what}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
