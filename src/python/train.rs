//! Python bindings of the trainer, the generator for inference, checkpoints and image I/O.
//! The documented API is `python/qs_attn/train.py` and `python/qs_attn/models.py`.
use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use tch::{nn, Device, Tensor};

use super::to_py;
use crate::data::image_io;
use crate::nets::generator::{Generator, GeneratorConfig};
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::train::trainer::{parse_device, InjectedIds, Progress, Summary, Trainer};

fn summary_dict<'py>(py: Python<'py>, s: &Summary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run_dir", s.run_dir.to_string_lossy().to_string())?;
    d.set_item("latest_checkpoint", s.latest_checkpoint.as_ref().map(|p| p.to_string_lossy().to_string()))?;
    d.set_item("samples", s.samples.iter().map(|p| p.to_string_lossy().to_string()).collect::<Vec<_>>())?;
    d.set_item("log", s.log.to_string_lossy().to_string())?;
    d.set_item("final_losses", s.final_losses.iter().cloned().collect::<HashMap<_, _>>())?;
    d.set_item("total_iters", s.total_iters)?;
    d.set_item("interrupted", s.interrupted)?;
    Ok(d)
}

fn progress_dict<'py>(py: Python<'py>, p: &Progress) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", p.epoch)?;
    d.set_item("last_epoch", p.last_epoch)?;
    d.set_item("epoch_iter", p.epoch_iter)?;
    d.set_item("iters_per_epoch", p.iters_per_epoch)?;
    d.set_item("total_iters", p.total_iters)?;
    d.set_item("losses", p.losses.map(|l| l.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>()))?;
    Ok(d)
}

fn named_tensors<'py>(py: Python<'py>, vs: &nn::VarStore) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        d.set_item(name, PyTensor(t))?;
    }
    Ok(d)
}

/// Copies `state` (name → tensor) into the store; every variable must be present with its shape.
fn load_named(vs: &nn::VarStore, state: HashMap<String, PyTensor>, what: &str) -> PyResult<()> {
    let vars = vs.variables();
    let missing: Vec<&String> = vars.keys().filter(|k| !state.contains_key(*k)).collect();
    let unexpected: Vec<&String> = state.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(PyValueError::new_err(format!(
            "{what} state_dict does not match: missing keys {missing:?}, unexpected keys {unexpected:?}"
        )));
    }
    for (name, mut var) in vars {
        let src = &state[&name].0;
        if src.size() != var.size() {
            return Err(PyValueError::new_err(format!(
                "{what} state_dict: '{name}' has shape {:?}, expected {:?}",
                src.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.f_copy_(src)).map_err(to_py)?;
    }
    Ok(())
}

/// Per-slot injected patch ids (None entries: draw / QS slot).
fn ids(list: Option<Vec<Option<PyTensor>>>) -> Option<Vec<Option<Tensor>>> {
    list.map(|l| l.into_iter().map(|t| t.map(|t| t.0)).collect())
}

#[pyclass(name = "Trainer", module = "qs_attn._native", unsendable)]
pub struct PyTrainer(Trainer);

impl PyTrainer {
    fn store(&self, net: &str) -> PyResult<&nn::VarStore> {
        let nets = &self.0.nets;
        match net {
            "G" => Ok(&nets.g_vs),
            "D" => Ok(&nets.d_vs),
            "F" => Ok(&nets.f_vs),
            other => Err(PyValueError::new_err(format!("network must be 'G', 'D' or 'F', got '{other}'"))),
        }
    }
}

#[pymethods]
impl PyTrainer {
    /// A fresh run from a JSON object of options (see `TrainConfig`).
    #[new]
    fn new(py: Python<'_>, config_json: &str) -> PyResult<Self> {
        let cfg = TrainConfig::from_json(config_json).map_err(to_py)?;
        py.allow_threads(move || Trainer::new(cfg)).map(PyTrainer).map_err(to_py)
    }

    /// Continues from a checkpoint, with optional option overrides (JSON object).
    #[staticmethod]
    #[pyo3(signature = (path, overrides_json=None))]
    fn resume(py: Python<'_>, path: PathBuf, overrides_json: Option<String>) -> PyResult<Self> {
        py.allow_threads(move || Trainer::resume(&path, overrides_json.as_deref())).map(PyTrainer).map_err(to_py)
    }

    /// Trains to the end of the schedule (or max_iters). `callback(progress: dict) -> bool` is
    /// called after every iteration (return False to stop). Ctrl-C stops after the current
    /// iteration; in every case the latest checkpoint is written. Returns a summary dict.
    #[pyo3(signature = (callback=None))]
    fn fit(&mut self, py: Python<'_>, callback: Option<PyObject>) -> PyResult<Py<PyDict>> {
        let trainer = &mut self.0;
        let mut callback_error: Option<PyErr> = None;
        let result = py.allow_threads(|| {
            trainer.fit(&mut |p: &Progress| {
                Python::with_gil(|py| {
                    if let Err(e) = py.check_signals() {
                        callback_error = Some(e);
                        return false;
                    }
                    let Some(cb) = &callback else { return true };
                    match progress_dict(py, p).and_then(|d| cb.call1(py, (d,))) {
                        Ok(v) => v.is_none(py) || v.is_truthy(py).unwrap_or(true),
                        Err(e) => {
                            callback_error = Some(e);
                            false
                        }
                    }
                })
            })
        });
        let summary = result.map_err(to_py)?;
        let d = summary_dict(py, &summary)?;
        if let Some(e) = callback_error {
            d.set_item("stopped_by", e.value(py).repr()?.to_string())?;
            if !e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
                return Err(e);
            }
        }
        Ok(d.unbind())
    }

    /// One iteration on a batch; `update=False` computes the gradients without changing any
    /// parameter. `ids_x` / `ids_y` inject the random patch ids of the two NCE terms.
    /// Returns the loss terms as floats.
    #[pyo3(signature = (a, b, update=true, ids_x=None, ids_y=None))]
    fn step(
        &mut self,
        py: Python<'_>,
        a: PyTensor,
        b: PyTensor,
        update: bool,
        ids_x: Option<Vec<Option<PyTensor>>>,
        ids_y: Option<Vec<Option<PyTensor>>>,
    ) -> PyResult<HashMap<String, f64>> {
        let (ids_x, ids_y) = (ids(ids_x), ids(ids_y));
        if ids_x.is_some() != ids_y.is_some() {
            return Err(PyValueError::new_err("give both ids_x and ids_y, or neither"));
        }
        let trainer = &mut self.0;
        let (a, b) = (a.0, b.0);
        py.allow_threads(move || {
            let injected = ids_x.as_deref().zip(ids_y.as_deref()).map(|(x, y)| InjectedIds { x, y });
            let losses = trainer.step_with(&a, &b, update, injected)?;
            Ok(losses.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        })
        .map_err(to_py)
    }

    /// Parameters and buffers of "G", "D" or "F" by the reference's key names (shared storage).
    fn state_dict<'py>(&self, py: Python<'py>, net: &str) -> PyResult<Bound<'py, PyDict>> {
        named_tensors(py, self.store(net)?)
    }

    fn load_state_dict(&mut self, net: &str, state: HashMap<String, PyTensor>) -> PyResult<()> {
        load_named(self.store(net)?, state, net)
    }

    /// Current gradients of the trainable parameters of a network (None where none).
    fn gradients(&self, net: &str) -> PyResult<HashMap<String, Option<PyTensor>>> {
        Ok(self
            .store(net)?
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| {
                let g = t.grad();
                (name, g.defined().then(|| PyTensor(g)))
            })
            .collect())
    }

    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.0.save(&path).map_err(to_py)
    }

    #[getter]
    fn config_json(&self) -> String {
        self.0.cfg.to_json()
    }
    #[getter]
    fn total_iters(&self) -> u64 {
        self.0.total_iters
    }
    #[getter]
    fn epoch(&self) -> i64 {
        self.0.epoch
    }
    #[getter]
    fn run_dir(&self) -> String {
        self.0.run_dir().to_string_lossy().to_string()
    }
}

/// The generator alone, for inference and weight conversion.
#[pyclass(name = "Generator", module = "qs_attn._native", unsendable)]
pub struct PyGenerator {
    vs: nn::VarStore,
    net: Generator,
}

#[pymethods]
impl PyGenerator {
    /// A generator with default (reference) initialisation-free zero weights of the given
    /// shape options; load weights with `load_state_dict`.
    #[new]
    #[pyo3(signature = (ngf=64, n_blocks=9, no_antialias=false, no_antialias_up=false, device="cpu"))]
    fn new(ngf: i64, n_blocks: usize, no_antialias: bool, no_antialias_up: bool, device: &str) -> PyResult<Self> {
        let vs = nn::VarStore::new(parse_device(device).map_err(to_py)?);
        let cfg = GeneratorConfig { ngf, n_blocks, no_antialias, no_antialias_up, ..GeneratorConfig::default() };
        let net = Generator::new(&vs.root(), &cfg);
        Ok(PyGenerator { vs, net })
    }

    /// `N × 3 × H × W` in [−1, 1] → translation (H, W divisible by 4).
    fn forward(&self, x: PyTensor) -> PyResult<PyTensor> {
        let x = x.0;
        if x.dim() != 4 || x.size()[1] != 3 {
            return Err(PyValueError::new_err(format!("expected an N×3×H×W tensor, got shape {:?}", x.size())));
        }
        if x.size()[2] % 4 != 0 || x.size()[3] % 4 != 0 {
            return Err(PyValueError::new_err(format!("height and width must be divisible by 4, got {:?}", x.size())));
        }
        if x.device() != self.vs.device() {
            return Err(PyValueError::new_err(format!(
                "input is on {:?} but the generator is on {:?}: move one with .to(device)",
                x.device(),
                self.vs.device()
            )));
        }
        Ok(PyTensor(self.net.forward(&x)))
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named_tensors(py, &self.vs)
    }

    fn load_state_dict(&mut self, state: HashMap<String, PyTensor>) -> PyResult<()> {
        load_named(&self.vs, state, "generator")
    }

    fn to(&mut self, device: &str) -> PyResult<()> {
        self.vs.set_device(parse_device(device).map_err(to_py)?);
        Ok(())
    }

    #[getter]
    fn device(&self) -> String {
        match self.vs.device() {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        }
    }
}

/// Reads a checkpoint: (tensors by name, metadata).
#[pyfunction]
pub fn read_checkpoint(path: PathBuf) -> PyResult<(HashMap<String, PyTensor>, HashMap<String, String>)> {
    let (tensors, meta) = checkpoint::load(&path).map_err(to_py)?;
    Ok((tensors.into_iter().map(|(k, v)| (k, PyTensor(v))).collect(), meta))
}

/// Decodes an image to `1 × 3 × H × W` in [−1, 1]: resized to `size × size`, or native size
/// rounded to multiples of 4 when `size` is None.
#[pyfunction]
#[pyo3(signature = (path, size=None))]
pub fn load_image(path: PathBuf, size: Option<u32>) -> PyResult<PyTensor> {
    image_io::load_image(&path, size).map(PyTensor).map_err(to_py)
}

/// The image files under a folder, recursively and sorted (the dataset loader's rule);
/// an error if there are none.
#[pyfunction]
pub fn image_files(folder: PathBuf) -> PyResult<Vec<PathBuf>> {
    crate::data::dataset::image_files(&folder).map_err(to_py)
}

/// Saves `3 × H × W` (or the first of `N × 3 × H × W`) in [−1, 1] as PNG (truncating, as the
/// reference does).
#[pyfunction]
pub fn save_image(tensor: PyTensor, path: PathBuf) -> PyResult<()> {
    image_io::save_image(&tensor.0, &path).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()?;
    m.add_class::<PyGenerator>()?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(image_files, m)?)?;
    m.add_function(wrap_pyfunction!(save_image, m)?)?;
    Ok(())
}
