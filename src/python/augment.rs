//! `qs_attn._native.diff_augment` and `draw_augment_params`: the trainer's DiffAugment
//! (`crate::train::augment`) on any tensor, with explicit parameters, for tests and for use
//! outside the trainer.
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use super::{guard, parse, to_py};
use crate::rng::SplitMix64;
use crate::train::augment::{self, AugmentParams, Policy};

/// `policy(x)` with per-image parameters (each a list of length N).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn diff_augment(
    x: PyTensor,
    policy: &str,
    brightness: Vec<f64>,
    saturation: Vec<f64>,
    contrast: Vec<f64>,
    shift: Vec<(i64, i64)>,
    cutout_centre: Vec<(i64, i64)>,
) -> PyResult<PyTensor> {
    guard(|| {
        let policy: Policy = parse(policy)?;
        let n = brightness.len();
        if [saturation.len(), contrast.len(), shift.len(), cutout_centre.len()].iter().any(|&l| l != n) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "diff_augment: every parameter list needs one entry per image",
            ));
        }
        let params = AugmentParams { brightness, saturation, contrast, shift, cutout_centre };
        augment::diff_augment(&x.0, policy, &params).map(PyTensor).map_err(to_py)
    })
}

/// The parameters the trainer's stream seeded with `seed` draws for `n` images of `h × w`.
#[pyfunction]
fn draw_augment_params<'py>(
    py: Python<'py>,
    seed: u64,
    n: usize,
    height: i64,
    width: i64,
) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        let p = AugmentParams::draw(&mut SplitMix64::new(seed), n, height, width);
        let d = PyDict::new(py);
        d.set_item("brightness", p.brightness)?;
        d.set_item("saturation", p.saturation)?;
        d.set_item("contrast", p.contrast)?;
        d.set_item("shift", p.shift)?;
        d.set_item("cutout_centre", p.cutout_centre)?;
        Ok(d)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(diff_augment, m)?)?;
    m.add_function(wrap_pyfunction!(draw_augment_params, m)?)?;
    Ok(())
}
