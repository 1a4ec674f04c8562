//! Bindings of the ops (`crate::ops`): PatchNCE, the QS-Attn selection and routing, the patch
//! sampler. The GIL is released while an op runs. The documented API is `python/qs_attn/_ops.py`.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Device;

use super::{guard, parse, to_py};
use crate::ops::{self, EntropyOf, LocalLayout, PatchSampler, QsMode, Reduction, Selection};

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
    guard(|| {
        let reduction: Reduction = parse(reduction)?;
        let (q, k) = (feat_q.0, feat_k.0);
        py.allow_threads(move || ops::patch_nce_loss(&q, &k, tau, num_images, reduction, detach_keys))
            .map(PyTensor)
            .map_err(to_py)
    })
}

#[pyfunction]
fn qs_entropy(py: Python<'_>, feat: PyTensor, mode: &str, window: i64, local_layout: &str) -> PyResult<PyTensor> {
    guard(|| {
        let of = match parse::<QsMode>(mode) {
            Ok(QsMode::Global) => EntropyOf::Global,
            Ok(QsMode::Local) => EntropyOf::Local(parse(local_layout)?),
            _ => return Err(PyValueError::new_err(format!("mode must be 'global' or 'local', got '{mode}'"))),
        };
        let feat = feat.0;
        py.allow_threads(move || ops::qs_entropy(&feat, of, window)).map(PyTensor).map_err(to_py)
    })
}

/// Returns `(indices, source, local_attn or None, height, width)`.
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
    guard(|| {
        let (mode, layout): (QsMode, LocalLayout) = (parse(mode)?, parse(local_layout)?);
        let feat = feat.0;
        let sel = py
            .allow_threads(move || {
                ops::qs_select(&feat, num_patches, mode, window, layout, detach_attn).map(SendSelection)
            })
            .map_err(to_py)?
            .0;
        Ok((PyTensor(sel.indices), PyTensor(sel.source), sel.local_attn.map(PyTensor), sel.height, sel.width))
    })
}

/// `Selection` holds tensors, which are `Send`; this wrapper only moves it across `allow_threads`.
pub(super) struct SendSelection(pub(super) Selection);

/// A selection rebuilt from the fields the Python `QSSelection` keeps.
#[derive(FromPyObject)]
pub(super) struct SelectionArgs {
    indices: PyTensor,
    source: PyTensor,
    local_attn: Option<PyTensor>,
    mode: String,
    window: i64,
    local_layout: String,
    height: i64,
    width: i64,
}

impl SelectionArgs {
    pub(super) fn into_selection(self) -> PyResult<SendSelection> {
        Ok(SendSelection(Selection {
            mode: parse(&self.mode)?,
            indices: self.indices.0,
            source: self.source.0,
            local_attn: self.local_attn.map(|a| a.0),
            height: self.height,
            width: self.width,
            window: self.window,
            layout: parse(&self.local_layout)?,
        }))
    }
}

/// `selection` is any object with the attributes of `SelectionArgs` (the Python QSSelection).
#[pyfunction]
fn qs_route(py: Python<'_>, feat: PyTensor, selection: SelectionArgs) -> PyResult<PyTensor> {
    guard(|| {
        let sel = selection.into_selection()?;
        let feat = feat.0;
        py.allow_threads(move || ops::qs_route(&feat, &sel.0)).map(PyTensor).map_err(to_py)
    })
}

#[pyfunction]
fn qs_cross_route(py: Python<'_>, feat_tgt: PyTensor, selection: SelectionArgs) -> PyResult<PyTensor> {
    guard(|| {
        let sel = selection.into_selection()?;
        let feat = feat_tgt.0;
        py.allow_threads(move || ops::qs_cross_route(&feat, &sel.0)).map(PyTensor).map_err(to_py)
    })
}

/// The selection's reduced attention (differentiable).
#[pyfunction]
fn qs_attention(py: Python<'_>, selection: SelectionArgs) -> PyResult<PyTensor> {
    guard(|| {
        let sel = selection.into_selection()?;
        py.allow_threads(move || sel.0.attn()).map(PyTensor).map_err(to_py)
    })
}

/// Seedable generator of random patch ids (docs/algorithm.md §7.2), independent of torch's RNG.
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
        guard(|| {
            self.0.sample(num_positions, num_patches, num_images, per_image, Device::Cpu).map(PyTensor).map_err(to_py)
        })
    }
    #[getter]
    fn state(&self) -> u64 {
        self.0.state()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(patch_nce_loss, m)?)?;
    m.add_function(wrap_pyfunction!(qs_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(qs_select, m)?)?;
    m.add_function(wrap_pyfunction!(qs_route, m)?)?;
    m.add_function(wrap_pyfunction!(qs_cross_route, m)?)?;
    m.add_function(wrap_pyfunction!(qs_attention, m)?)?;
    m.add_class::<PyPatchSampler>()?;
    Ok(())
}
