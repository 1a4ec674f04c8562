//! The `qs_attn._native` extension: thin pyo3 wrappers over `crate::ops`. Tensors cross as
//! `torch.Tensor` without copies (pyo3-tch), so the custom autograd nodes join the caller's
//! graph. The GIL is released while an op runs. The documented Python API is in
//! `python/qs_attn/`.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Device, TchError, Tensor};

use crate::error::message;
use crate::ops::{self, EntropyOf, LocalLayout, PatchSampler, QsMode, Reduction, Selection};

fn to_py(e: TchError) -> PyErr {
    PyValueError::new_err(message(&e))
}

fn parse<T: std::str::FromStr<Err = TchError>>(s: &str) -> PyResult<T> {
    s.parse().map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (feat_q, feat_k, tau, num_images, reduction, detach_keys))]
fn patch_nce_loss(
    py: Python<'_>,
    feat_q: PyTensor,
    feat_k: PyTensor,
    tau: f64,
    num_images: i64,
    reduction: &str,
    detach_keys: bool,
) -> PyResult<PyTensor> {
    let reduction: Reduction = parse(reduction)?;
    let (q, k) = (feat_q.0, feat_k.0);
    py.allow_threads(move || ops::patch_nce_loss(&q, &k, tau, num_images, reduction, detach_keys))
        .map(PyTensor)
        .map_err(to_py)
}

#[pyfunction]
fn qs_entropy(py: Python<'_>, feat: PyTensor, mode: &str, window: i64, local_layout: &str) -> PyResult<PyTensor> {
    let of = match mode {
        "global" => EntropyOf::Global,
        "local" => EntropyOf::Local(parse(local_layout)?),
        other => return Err(PyValueError::new_err(format!("mode must be 'global' or 'local', got '{other}'"))),
    };
    let feat = feat.0;
    py.allow_threads(move || ops::qs_entropy(&feat, of, window)).map(PyTensor).map_err(to_py)
}

/// Returns `(indices, attn, source or None, height, width)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn qs_select(
    py: Python<'_>,
    feat: PyTensor,
    num_patches: i64,
    mode: &str,
    window: i64,
    local_layout: &str,
    detach_attn: bool,
) -> PyResult<(PyTensor, PyTensor, Option<PyTensor>, i64, i64)> {
    let (mode, layout): (QsMode, LocalLayout) = (parse(mode)?, parse(local_layout)?);
    let feat = feat.0;
    let sel = py
        .allow_threads(move || ops::qs_select(&feat, num_patches, mode, window, layout, detach_attn).map(SendSelection))
        .map_err(to_py)?
        .0;
    Ok((PyTensor(sel.indices), PyTensor(sel.attn), sel.source.map(PyTensor), sel.height, sel.width))
}

/// `Selection` holds tensors, which are `Send`; this wrapper only moves it out of `allow_threads`.
struct SendSelection(Selection);

#[allow(clippy::too_many_arguments)]
fn selection(
    indices: Tensor,
    attn: Tensor,
    source: Option<Tensor>,
    mode: &str,
    window: i64,
    local_layout: &str,
    height: i64,
    width: i64,
) -> PyResult<Selection> {
    Ok(Selection { mode: parse(mode)?, indices, attn, source, height, width, window, layout: parse(local_layout)? })
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (feat, indices, attn, source, mode, window, local_layout, height, width))]
fn qs_route(
    py: Python<'_>,
    feat: PyTensor,
    indices: PyTensor,
    attn: PyTensor,
    source: Option<PyTensor>,
    mode: &str,
    window: i64,
    local_layout: &str,
    height: i64,
    width: i64,
) -> PyResult<PyTensor> {
    let sel = SendSelection(selection(indices.0, attn.0, source.map(|s| s.0), mode, window, local_layout, height, width)?);
    let feat = feat.0;
    py.allow_threads(move || ops::qs_route(&feat, &sel.0)).map(PyTensor).map_err(to_py)
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (feat_tgt, indices, attn, source, mode, window, local_layout, height, width))]
fn qs_cross_route(
    py: Python<'_>,
    feat_tgt: PyTensor,
    indices: PyTensor,
    attn: PyTensor,
    source: Option<PyTensor>,
    mode: &str,
    window: i64,
    local_layout: &str,
    height: i64,
    width: i64,
) -> PyResult<PyTensor> {
    let sel = SendSelection(selection(indices.0, attn.0, source.map(|s| s.0), mode, window, local_layout, height, width)?);
    let feat = feat_tgt.0;
    py.allow_threads(move || ops::qs_cross_route(&feat, &sel.0)).map(PyTensor).map_err(to_py)
}

/// Seedable generator of random patch ids (spec §7.2), independent of torch's RNG.
#[pyclass(name = "PatchSampler", module = "qs_attn._native")]
struct PyPatchSampler(PatchSampler);

#[pymethods]
impl PyPatchSampler {
    #[new]
    fn new(seed: u64) -> Self {
        PyPatchSampler(PatchSampler::new(seed))
    }
    /// `(min(N, P),)` ids shared by the batch, or `(num_images, min(N, P))` when `per_image`
    /// (int64, on the CPU).
    #[pyo3(signature = (num_positions, num_patches, num_images=1, per_image=false))]
    fn sample(&mut self, num_positions: i64, num_patches: i64, num_images: i64, per_image: bool) -> PyResult<PyTensor> {
        self.0.sample(num_positions, num_patches, num_images, per_image, Device::Cpu).map(PyTensor).map_err(to_py)
    }
    #[getter]
    fn state(&self) -> u64 {
        self.0.state()
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(patch_nce_loss, m)?)?;
    m.add_function(wrap_pyfunction!(qs_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(qs_select, m)?)?;
    m.add_function(wrap_pyfunction!(qs_route, m)?)?;
    m.add_function(wrap_pyfunction!(qs_cross_route, m)?)?;
    m.add_class::<PyPatchSampler>()?;
    Ok(())
}
