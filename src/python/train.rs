//! Python bindings of the trainer, the generator for inference, checkpoints and image I/O.
//! The documented API is `python/qs_attn/train.py` and `python/qs_attn/models.py`.
use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use tch::{nn, Device, TchError, Tensor};

use super::to_py;
use crate::data::image_io;
use crate::nets::discriminator::{Discriminator, DiscriminatorConfig};
use crate::nets::generator::{Generator, GeneratorConfig};
use crate::nets::init::{init_weights, InitType};
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use super::parts::{take_error, PyGradientSync, PyPart};
use crate::train::parts::{DiscriminatorPart, GeneratorPart, Network, Owned};
use crate::train::run::{Progress, Summary};
use crate::train::trainer::{InjectedIds, Parts, Trainer};

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
    d.set_item("losses", p.losses.as_ref().map(|l| l.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>()))?;
    d.set_item("epoch_end", p.epoch_end)?;
    Ok(d)
}

fn named_dict<'py>(py: Python<'py>, named: Vec<(String, Tensor)>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, t) in named {
        d.set_item(name, PyTensor(t))?;
    }
    Ok(d)
}

/// Copies `state` (name → tensor) into `vars`; every variable must be present with its shape.
fn load_named(vars: Vec<(String, Tensor)>, state: HashMap<String, PyTensor>, what: &str) -> PyResult<()> {
    let missing: Vec<&String> = vars.iter().map(|(k, _)| k).filter(|k| !state.contains_key(*k)).collect();
    let unexpected: Vec<&String> = state.keys().filter(|k| !vars.iter().any(|(n, _)| n == *k)).collect();
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

/// A failure of the Rust loop as a Python exception: the exception a user-supplied part
/// raised, unchanged, when there was one.
fn step_error(e: TchError) -> PyErr {
    take_error().unwrap_or_else(|| to_py(e))
}

/// The user-supplied parts from a dict with the keys "G", "D", "F", "gan_loss", "nce_loss".
fn parts(given: Option<HashMap<String, PyObject>>) -> PyResult<Parts> {
    let mut out = Parts::default();
    for (key, obj) in given.unwrap_or_default() {
        match key.as_str() {
            "G" => out.g = Some(Box::new(PyPart::new(obj, "generator"))),
            "D" => out.d = Some(Box::new(PyPart::new(obj, "discriminator"))),
            "F" => out.f = Some(Box::new(PyPart::new(obj, "projector"))),
            "gan_loss" => out.gan_loss = Some(Box::new(PyPart::new(obj, "GAN loss"))),
            "nce_loss" => out.nce_loss = Some(Box::new(PyPart::new(obj, "NCE loss"))),
            other => return Err(PyValueError::new_err(format!("unknown part '{other}'"))),
        }
    }
    Ok(out)
}

/// The Rust trainer. The documented API is `qs_attn.Trainer` (python/qs_attn/trainer.py).
#[pyclass(name = "Trainer", module = "qs_attn._native", unsendable)]
pub struct PyTrainer(Trainer);

impl PyTrainer {
    fn network(&self, net: &str) -> PyResult<&dyn Network> {
        let nets = &self.0.nets;
        match net {
            "G" => Ok(nets.g.as_ref() as &dyn Network),
            "D" => Ok(nets.d.as_ref() as &dyn Network),
            "F" => Ok(nets.f.as_ref() as &dyn Network),
            other => Err(PyValueError::new_err(format!("network must be 'G', 'D' or 'F', got '{other}'"))),
        }
    }
}

#[pymethods]
impl PyTrainer {
    /// A fresh run from a JSON object of options (see `TrainConfig`) and optional
    /// user-supplied parts (dict: "G", "D", "F", "gan_loss", "nce_loss").
    #[new]
    #[pyo3(signature = (config_json, parts=None))]
    fn new(py: Python<'_>, config_json: &str, parts: Option<HashMap<String, PyObject>>) -> PyResult<Self> {
        let cfg = TrainConfig::from_json(config_json).map_err(to_py)?;
        let parts = self::parts(parts)?;
        py.allow_threads(move || Trainer::with_parts(cfg, parts)).map(PyTrainer).map_err(step_error)
    }

    /// Continues from a checkpoint, with optional option overrides (JSON object) and parts.
    #[staticmethod]
    #[pyo3(signature = (path, overrides_json=None, parts=None))]
    fn resume(py: Python<'_>, path: PathBuf, overrides_json: Option<String>, parts: Option<HashMap<String, PyObject>>) -> PyResult<Self> {
        let parts = self::parts(parts)?;
        py.allow_threads(move || Trainer::resume_with_parts(&path, overrides_json.as_deref(), parts))
            .map(PyTrainer)
            .map_err(step_error)
    }

    /// One iteration of the schedule (loading data, logging, writing samples and checkpoints
    /// when due): a progress dict, or None once the schedule is complete.
    fn advance<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let trainer = &mut self.0;
        let progress = py.allow_threads(|| trainer.advance()).map_err(step_error)?;
        progress.map(|p| progress_dict(py, &p)).transpose()
    }

    /// Ends the run: a last sample grid and the latest checkpoint; returns the summary dict.
    #[pyo3(signature = (interrupted=false))]
    fn finish<'py>(&mut self, py: Python<'py>, interrupted: bool) -> PyResult<Bound<'py, PyDict>> {
        let trainer = &mut self.0;
        let summary = py.allow_threads(|| trainer.finish(interrupted)).map_err(step_error)?;
        summary_dict(py, &summary)
    }

    /// Makes this trainer rank `rank` of `world_size` data-parallel processes;
    /// `sync(net, grads)` averages gradients across them in place (see `qs_attn.distributed`).
    fn distribute(&mut self, rank: usize, world_size: usize, sync: PyObject) -> PyResult<()> {
        let sync = Box::new(PyGradientSync(PyPart::new(sync, "gradient averaging")));
        self.0.distribute(rank, world_size, sync).map_err(to_py)
    }

    /// The loss terms of the last scheduled iteration as floats (None before the first).
    fn last_losses(&self) -> Option<HashMap<String, f64>> {
        self.0.last_losses().map(|l| l.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// The images of the last iteration (detached): real_A, fake_B, real_B and idt_B when the
    /// identity term is on.
    fn visuals(&self) -> Option<HashMap<String, PyTensor>> {
        self.0.visuals.as_ref().map(|v| v.named().into_iter().map(|(name, t)| (name.to_string(), PyTensor(t))).collect())
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
        .map_err(step_error)
    }

    /// Parameters and buffers of "G", "D" or "F" by the reference's key names (shared storage).
    fn state_dict<'py>(&self, py: Python<'py>, net: &str) -> PyResult<Bound<'py, PyDict>> {
        named_dict(py, self.network(net)?.state().map_err(step_error)?)
    }

    /// The names of the trainable parameters of "G", "D" or "F".
    fn parameter_names(&self, net: &str) -> PyResult<Vec<String>> {
        Ok(self.network(net)?.parameters().map_err(step_error)?.into_iter().map(|(n, _)| n).collect())
    }

    fn load_state_dict(&mut self, net: &str, state: HashMap<String, PyTensor>) -> PyResult<()> {
        load_named(self.network(net)?.state().map_err(step_error)?, state, net)
    }

    /// Current gradients of the trainable parameters of a network (None where none).
    fn gradients(&self, net: &str) -> PyResult<HashMap<String, Option<PyTensor>>> {
        Ok(self
            .network(net)?
            .parameters()
            .map_err(step_error)?
            .into_iter()
            .map(|(name, t)| {
                let g = t.grad();
                (name, g.defined().then(|| PyTensor(g)))
            })
            .collect())
    }

    /// The generator on `x`: the translation, or with `layers` the taps (`encode_only`) or
    /// `(translation, taps)` — the reference's call.
    #[pyo3(signature = (x, layers=None, encode_only=false))]
    fn generator<'py>(&self, py: Python<'py>, x: PyTensor, layers: Option<Vec<usize>>, encode_only: bool) -> PyResult<Bound<'py, PyAny>> {
        // (the networks are shared, not Sync: the GIL stays held, as for any nn.Module call)
        run_generator(py, self.0.nets.g.as_ref(), &x.0, layers, encode_only)
    }

    /// The discriminator's patch logits on `x`.
    fn discriminator(&self, x: PyTensor) -> PyResult<PyTensor> {
        self.0.nets.d.forward(&x.0).map(PyTensor).map_err(step_error)
    }

    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.0.save(&path).map_err(step_error)
    }

    /// Exchanges G's weights and their moving average (`ema_decay`); False when off.
    fn swap_ema(&mut self) -> PyResult<bool> {
        self.0.swap_ema().map_err(step_error)
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
    fn finished(&self) -> bool {
        self.0.finished()
    }
    #[getter]
    fn run_dir(&self) -> String {
        self.0.run_dir().to_string_lossy().to_string()
    }
}

/// A built-in network on its own (outside a trainer): the generator or the discriminator with
/// the variable store that owns its tensors. The documented API is `qs_attn.models`
/// (`torch.nn.Module`s whose parameters are these very tensors).
enum OwnedNet {
    G(Owned<Generator>),
    D(Owned<Discriminator>),
}

#[pyclass(name = "Network", module = "qs_attn._native", unsendable)]
pub struct PyNetwork(OwnedNet);

impl PyNetwork {
    fn network(&self) -> &dyn Network {
        match &self.0 {
            OwnedNet::G(g) => g,
            OwnedNet::D(d) => d,
        }
    }
}

#[pymethods]
impl PyNetwork {
    /// The ResNet generator (spec §3) with tch's default initialisation, on the CPU.
    #[staticmethod]
    fn generator(ngf: i64, n_blocks: usize, no_antialias: bool, no_antialias_up: bool) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GeneratorConfig { ngf, n_blocks, no_antialias, no_antialias_up, ..GeneratorConfig::default() };
        let net = Generator::new(&vs.root(), &cfg);
        PyNetwork(OwnedNet::G(Owned { vs, net }))
    }

    /// The PatchGAN discriminator (spec §4) with tch's default initialisation, on the CPU.
    #[staticmethod]
    fn discriminator(ndf: i64, n_layers: usize, no_antialias: bool) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DiscriminatorConfig { ndf, n_layers, no_antialias, ..DiscriminatorConfig::default() };
        let net = Discriminator::new(&vs.root(), &cfg);
        PyNetwork(OwnedNet::D(Owned { vs, net }))
    }

    /// The reference initialisation (spec §3.1) from torch's global generator.
    fn init_weights(&self, init_type: &str, init_gain: f64) -> PyResult<()> {
        let vs = match &self.0 {
            OwnedNet::G(g) => &g.vs,
            OwnedNet::D(d) => &d.vs,
        };
        init_weights(vs, init_type.parse::<InitType>().map_err(to_py)?, init_gain).map_err(to_py)
    }

    /// Parameters and buffers by the reference's key names (the network's own tensors).
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named_dict(py, self.network().state().map_err(to_py)?)
    }

    fn parameter_names(&self) -> PyResult<Vec<String>> {
        Ok(self.network().parameters().map_err(to_py)?.into_iter().map(|(n, _)| n).collect())
    }

    /// Generator: the translation, or with `layers` the taps (`encode_only`) or
    /// `(translation, taps)`; discriminator: the patch logits.
    #[pyo3(signature = (x, layers=None, encode_only=false))]
    fn forward<'py>(&self, py: Python<'py>, x: PyTensor, layers: Option<Vec<usize>>, encode_only: bool) -> PyResult<Bound<'py, PyAny>> {
        match &self.0 {
            OwnedNet::G(g) => run_generator(py, g, &x.0, layers, encode_only),
            OwnedNet::D(d) => Ok(PyTensor(d.forward(&x.0).map_err(to_py)?).into_pyobject(py)?.into_any()),
        }
    }
}

/// The generator's reference call: `G(x)`, `G(x, layers, encode_only=True)` (taps) or
/// `G(x, layers)` (`(translation, taps)`).
fn run_generator<'py>(py: Python<'py>, g: &dyn GeneratorPart, x: &Tensor, layers: Option<Vec<usize>>, encode_only: bool) -> PyResult<Bound<'py, PyAny>> {
    let taps = |ts: Vec<Tensor>| ts.into_iter().map(PyTensor).collect::<Vec<_>>();
    match layers.filter(|l| !l.is_empty()) {
        None => Ok(PyTensor(g.translate(x).map_err(step_error)?).into_pyobject(py)?.into_any()),
        Some(layers) if encode_only => Ok(taps(g.encode(x, &layers).map_err(step_error)?).into_pyobject(py)?.into_any()),
        Some(layers) => {
            let (fake, t) = g.forward_with_taps(x, &layers).map_err(step_error)?;
            Ok((PyTensor(fake), taps(t)).into_pyobject(py)?.into_any())
        }
    }
}

/// Reads a checkpoint: (tensors by name, metadata).
#[pyfunction]
pub fn read_checkpoint(path: PathBuf) -> PyResult<(HashMap<String, PyTensor>, HashMap<String, String>)> {
    let (tensors, meta) = checkpoint::load(&path).map_err(to_py)?;
    Ok((tensors.into_iter().map(|(k, v)| (k, PyTensor(v))).collect(), meta))
}

/// Reads only a checkpoint's metadata (the run's config, position, …), not its tensors.
#[pyfunction]
pub fn read_checkpoint_metadata(path: PathBuf) -> PyResult<HashMap<String, String>> {
    checkpoint::load_metadata(&path).map_err(to_py)
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
    m.add_class::<PyNetwork>()?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(read_checkpoint_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(image_files, m)?)?;
    m.add_function(wrap_pyfunction!(save_image, m)?)?;
    Ok(())
}
