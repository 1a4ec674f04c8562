//! The trainer and its schedule (`train::run::Run`) as `qs_attn._native.Trainer`. The
//! documented API is `qs_attn.Trainer` (python/qs_attn/trainer.py).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use tch::Tensor;

use super::networks::{load_named, named_dict, run_generator, step_error};
use super::parts::{PyGradientSync, PyPart};
use super::{guard, to_py};
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::train::networks::Parts;
use crate::train::parts::Network;
use crate::train::run::{Progress, Run, Summary};
use crate::train::samples::SamplePairs;
use crate::train::step::InjectedIds;
use crate::train::trainer::Trainer;

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
    d.set_item(
        "losses",
        p.losses.as_ref().map(|l| l.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>()),
    )?;
    d.set_item("epoch_end", p.epoch_end)?;
    Ok(d)
}

/// Per-slot injected patch ids (None entries: draw / QS slot).
fn ids(list: Option<Vec<Option<PyTensor>>>) -> Option<Vec<Option<Tensor>>> {
    list.map(|l| l.into_iter().map(|t| t.map(|t| t.0)).collect())
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
pub struct PyTrainer(Run);

impl PyTrainer {
    fn network(&self, net: &str) -> PyResult<&dyn Network> {
        let nets = &self.0.trainer.nets;
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
        guard(|| {
            let cfg = TrainConfig::from_json(config_json).map_err(to_py)?;
            let parts = self::parts(parts)?;
            py.allow_threads(move || Trainer::with_parts(cfg, parts))
                .map(|t| PyTrainer(Run::new(t)))
                .map_err(step_error)
        })
    }

    /// Continues from a checkpoint, with optional option overrides (JSON object) and parts.
    #[staticmethod]
    #[pyo3(signature = (path, overrides_json=None, parts=None))]
    fn resume(
        py: Python<'_>,
        path: PathBuf,
        overrides_json: Option<String>,
        parts: Option<HashMap<String, PyObject>>,
    ) -> PyResult<Self> {
        guard(|| {
            let parts = self::parts(parts)?;
            py.allow_threads(move || checkpoint::resume(&path, overrides_json.as_deref(), parts))
                .map(|t| PyTrainer(Run::new(t)))
                .map_err(step_error)
        })
    }

    /// One iteration of the schedule (loading data, logging, writing samples and checkpoints
    /// when due): a progress dict, or None once the schedule is complete.
    fn advance<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        guard(|| {
            let run = &mut self.0;
            let progress = py.allow_threads(|| run.advance()).map_err(step_error)?;
            progress.map(|p| progress_dict(py, &p)).transpose()
        })
    }

    /// Ends the run: a last sample grid and the latest checkpoint; returns the summary dict.
    #[pyo3(signature = (interrupted=false))]
    fn finish<'py>(&mut self, py: Python<'py>, interrupted: bool) -> PyResult<Bound<'py, PyDict>> {
        guard(|| {
            let run = &mut self.0;
            let summary = py.allow_threads(|| run.finish(interrupted)).map_err(step_error)?;
            summary_dict(py, &summary)
        })
    }

    /// Makes this trainer rank `rank` of `world_size` data-parallel processes;
    /// `sync(net, grads)` averages gradients across them in place (see `qs_attn.distributed`).
    fn distribute(&mut self, rank: usize, world_size: usize, sync: PyObject) -> PyResult<()> {
        guard(|| {
            let sync = Box::new(PyGradientSync(PyPart::new(sync, "gradient averaging")));
            self.0.distribute(rank, world_size, sync).map_err(to_py)
        })
    }

    /// The loss terms of the last scheduled iteration as floats (None before the first).
    fn last_losses(&self) -> PyResult<Option<HashMap<String, f64>>> {
        guard(|| Ok(self.0.last_losses().map(|l| l.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect())))
    }

    /// The images of the last iteration (detached): real_A, fake_B, real_B and idt_B when the
    /// identity term is on.
    fn visuals(&self) -> PyResult<Option<HashMap<String, PyTensor>>> {
        guard(|| {
            Ok(self
                .0
                .trainer
                .visuals
                .as_ref()
                .map(|v| v.named().into_iter().map(|(name, t)| (name.to_string(), PyTensor(t))).collect()))
        })
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
        guard(|| {
            let (ids_x, ids_y) = (ids(ids_x), ids(ids_y));
            if ids_x.is_some() != ids_y.is_some() {
                return Err(PyValueError::new_err("give both ids_x and ids_y, or neither"));
            }
            let trainer = &mut self.0.trainer;
            let (a, b) = (a.0, b.0);
            py.allow_threads(move || {
                let injected = ids_x.as_deref().zip(ids_y.as_deref()).map(|(x, y)| InjectedIds { x, y });
                let losses = trainer.step_with(&a, &b, update, injected)?;
                Ok(losses.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            })
            .map_err(step_error)
        })
    }

    /// Parameters and buffers of "G", "D" or "F" by the reference's key names (shared storage).
    fn state_dict<'py>(&self, py: Python<'py>, net: &str) -> PyResult<Bound<'py, PyDict>> {
        guard(|| named_dict(py, self.network(net)?.state().map_err(step_error)?))
    }

    /// The names of the trainable parameters of "G", "D" or "F".
    fn parameter_names(&self, net: &str) -> PyResult<Vec<String>> {
        guard(|| Ok(self.network(net)?.parameters().map_err(step_error)?.into_iter().map(|(n, _)| n).collect()))
    }

    fn load_state_dict(&mut self, net: &str, state: HashMap<String, PyTensor>) -> PyResult<()> {
        guard(|| load_named(self.network(net)?.state().map_err(step_error)?, state, net))
    }

    /// Current gradients of the trainable parameters of a network (None where none).
    fn gradients(&self, net: &str) -> PyResult<HashMap<String, Option<PyTensor>>> {
        guard(|| {
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
        })
    }

    /// The generator on `x`: the translation, or with `layers` the taps (`encode_only`) or
    /// `(translation, taps)` — the reference's call.
    #[pyo3(signature = (x, layers=None, encode_only=false))]
    fn generator<'py>(
        &self,
        py: Python<'py>,
        x: PyTensor,
        layers: Option<Vec<usize>>,
        encode_only: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(|| {
            // (the networks are shared, not Sync: the GIL stays held, as for any nn.Module call)
            run_generator(py, self.0.trainer.nets.g.as_ref(), &x.0, layers, encode_only)
        })
    }

    /// The discriminator's patch logits on `x`.
    fn discriminator(&self, x: PyTensor) -> PyResult<PyTensor> {
        guard(|| self.0.trainer.nets.d.forward(&x.0).map(PyTensor).map_err(step_error))
    }

    fn save(&self, path: PathBuf) -> PyResult<()> {
        guard(|| checkpoint::save(&self.0.trainer, &path).map_err(step_error))
    }

    /// Exchanges G's weights and their moving average (`ema_decay`); False when off.
    fn swap_ema(&mut self) -> PyResult<bool> {
        guard(|| self.0.trainer.swap_ema().map_err(step_error))
    }

    #[getter]
    fn config_json(&self) -> String {
        self.0.trainer.cfg.to_json()
    }
    #[getter]
    fn total_iters(&self) -> u64 {
        self.0.trainer.total_iters
    }
    #[getter]
    fn epoch(&self) -> i64 {
        self.0.trainer.epoch
    }
    #[getter]
    fn finished(&self) -> bool {
        self.0.finished()
    }
    #[getter]
    fn run_dir(&self) -> String {
        self.0.run_dir().to_string_lossy().to_string()
    }

    /// The rows of a sample grid of the first `n` test pairs (see `train::samples`):
    /// source | translation | target-domain image | identity, each `3 × H × W` in [−1, 1]; by
    /// the averaged G when `ema_decay` is on.
    fn sample_rows(&mut self, n: usize) -> PyResult<Vec<Vec<PyTensor>>> {
        guard(|| {
            let t = &mut self.0.trainer;
            let pairs =
                SamplePairs::open(Path::new(&t.cfg.dataroot), t.cfg.direction, n, t.cfg.crop_size).map_err(to_py)?;
            let rows = t.with_averaged_g(|t| pairs.rows(t.nets.g.as_ref(), t.device)).map_err(step_error)?;
            Ok(rows.into_iter().map(|r| r.into_iter().map(PyTensor).collect()).collect())
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()
}
