//! Helpers shared by the Rust test files (each includes it with `mod common;`).
#![allow(dead_code)] // each test file uses its own subset

use tch::{Kind, Tensor};

/// Runs `f` with torch's global RNG seeded, under a lock: libtorch's generator is global and
/// the tests of a file run on parallel threads.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max |diff| = {d:e} > {tol:e}");
}

/// `t` stored channels-last (NHWC memory, the same values and shape), a leaf requiring grad
/// if `t` does.
pub fn nhwc(t: &Tensor) -> Tensor {
    let stored = t.detach().permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    stored.set_requires_grad(t.requires_grad())
}

/// Whether `t` is stored channels-last (and not also NCHW-contiguous).
pub fn is_nhwc(t: &Tensor) -> bool {
    !t.is_contiguous() && t.permute([0, 2, 3, 1]).is_contiguous()
}
