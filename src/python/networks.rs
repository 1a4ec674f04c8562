//! The built-in networks on their own (outside a trainer): the generator, the discriminator
//! and the projector, each with the tensors it owns. The documented API is `qs_attn.models`
//! and `qs_attn.nn.PatchSampleF` (`torch.nn.Module`s whose parameters are these very tensors).
use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use tch::{nn, Device, TchError, Tensor};

use super::ops::SelectionArgs;
use super::parts::take_error;
use super::{guard, parse, to_py};
use crate::nets::discriminator::{Discriminator, DiscriminatorConfig};
use crate::nets::generator::{Generator, GeneratorConfig};
use crate::nets::init::{init_weights, InitType};
use crate::nets::projector::{default_qs_slots, Projector, ProjectorConfig, SlotSample};
use crate::ops::PatchSampler;
use crate::train::options::Mode;
use crate::train::parts::{GeneratorPart, Named, Network, Owned};

/// A failure of a network or of the Rust loop as a Python exception: the exception a
/// user-supplied part raised, unchanged, when there was one.
pub(super) fn step_error(e: TchError) -> PyErr {
    take_error().unwrap_or_else(|| to_py(e))
}

pub(super) fn named_dict<'py>(py: Python<'py>, named: Vec<(String, Tensor)>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, t) in named {
        d.set_item(name, PyTensor(t))?;
    }
    Ok(d)
}

/// Copies `state` (name → tensor) into `vars`; every variable must be present with its shape.
pub(super) fn load_named(vars: Vec<(String, Tensor)>, state: HashMap<String, PyTensor>, what: &str) -> PyResult<()> {
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

/// Sizes that must be positive, by option name (a zero or negative width is no network).
fn check_sizes(sizes: &[(&str, i64)]) -> PyResult<()> {
    match sizes.iter().find(|(_, v)| *v < 1) {
        Some((name, v)) => Err(PyValueError::new_err(format!("{name} must be >= 1, got {v}"))),
        None => Ok(()),
    }
}

/// The projector with its tensors (its own variable store, or tensors it shares with a
/// trainer) and the generator of its random patch ids.
struct ProjectorNet {
    net: Projector,
    vs: Option<nn::VarStore>,
    state: Named,
    sampler: PatchSampler,
}

impl Network for ProjectorNet {
    fn parameters(&self) -> Result<Named, TchError> {
        Ok(self.state.iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n.clone(), t.shallow_clone())).collect())
    }

    fn state(&self) -> Result<Named, TchError> {
        Ok(self.state.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect())
    }
}

enum OwnedNet {
    G(Owned<Generator>),
    D(Owned<Discriminator>),
    F(ProjectorNet),
}

#[pyclass(name = "Network", module = "qs_attn._native", unsendable)]
pub struct PyNetwork(OwnedNet);

impl PyNetwork {
    fn network(&self) -> &dyn Network {
        match &self.0 {
            OwnedNet::G(g) => g,
            OwnedNet::D(d) => d,
            OwnedNet::F(f) => f,
        }
    }

    fn projector_mut(&mut self) -> PyResult<&mut ProjectorNet> {
        match &mut self.0 {
            OwnedNet::F(f) => Ok(f),
            _ => Err(PyValueError::new_err("not a projector")),
        }
    }
}

/// What a projector's target call reuses from its source call in one slot: the QS-Attn
/// selection (a `qs_attn.QSSelection`) or the random patch ids.
#[derive(FromPyObject)]
enum SampleArg {
    Qs(SelectionArgs),
    Ids(PyTensor),
}

#[pymethods]
impl PyNetwork {
    /// The ResNet generator (docs/algorithm.md §3) with tch's default initialisation, on the CPU.
    #[staticmethod]
    fn generator(ngf: i64, n_blocks: usize, no_antialias: bool, no_antialias_up: bool) -> PyResult<Self> {
        guard(|| {
            check_sizes(&[("ngf", ngf)])?;
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = GeneratorConfig { ngf, n_blocks, no_antialias, no_antialias_up, ..GeneratorConfig::default() };
            let net = Generator::new(&vs.root(), &cfg);
            Ok(PyNetwork(OwnedNet::G(Owned { vs, net })))
        })
    }

    /// The PatchGAN discriminator (docs/algorithm.md §4) with tch's default initialisation, on
    /// the CPU.
    #[staticmethod]
    fn discriminator(ndf: i64, n_layers: usize, no_antialias: bool) -> PyResult<Self> {
        guard(|| {
            check_sizes(&[("ndf", ndf)])?;
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = DiscriminatorConfig { ndf, n_layers, no_antialias, ..DiscriminatorConfig::default() };
            let net = Discriminator::new(&vs.root(), &cfg);
            Ok(PyNetwork(OwnedNet::D(Owned { vs, net })))
        })
    }

    /// The projector (docs/algorithm.md §7, §8) for maps of `channels` channels, on the CPU:
    /// its own MLPs (tch's default initialisation), or with `weights` the given tensors
    /// (`mlp_<s>.0/2.weight|bias`, shared). `qs_slots` None: every slot from the fourth on.
    /// `seed` seeds its random patch ids.
    #[staticmethod]
    #[pyo3(signature = (channels, nc, use_mlp, mode, qs_slots, window, local_layout, per_image_ids, detach_attn, seed, weights=None))]
    #[allow(clippy::too_many_arguments)]
    fn projector(
        channels: Vec<i64>,
        nc: i64,
        use_mlp: bool,
        mode: &str,
        qs_slots: Option<Vec<usize>>,
        window: i64,
        local_layout: &str,
        per_image_ids: bool,
        detach_attn: bool,
        seed: u64,
        weights: Option<HashMap<String, PyTensor>>,
    ) -> PyResult<Self> {
        guard(|| {
            check_sizes(&[("nc", nc)])?;
            if let Some((s, c)) = channels.iter().enumerate().find(|(_, &c)| c < 1) {
                return Err(PyValueError::new_err(format!("feature map {s} must have channels, got {c}")));
            }
            let cfg = ProjectorConfig {
                nc,
                use_mlp,
                mode: parse::<Mode>(mode)?.qs(),
                qs_slots: qs_slots.unwrap_or_else(|| default_qs_slots(channels.len())),
                window,
                layout: parse(local_layout)?,
                per_image_ids,
                detach_attn,
            };
            let sampler = PatchSampler::new(seed);
            let f = match weights {
                Some(w) => {
                    let mut state: Named = w.into_iter().map(|(k, t)| (k, t.0)).collect();
                    state.sort_by(|a, b| a.0.cmp(&b.0));
                    let net = Projector::with_weights(&channels, &state, &cfg).map_err(to_py)?;
                    ProjectorNet { net, vs: None, state, sampler }
                }
                None => {
                    let vs = nn::VarStore::new(Device::Cpu);
                    let net = Projector::new(&vs.root(), &channels, &cfg);
                    let mut state: Named = vs.variables().into_iter().collect();
                    state.sort_by(|a, b| a.0.cmp(&b.0));
                    ProjectorNet { net, vs: Some(vs), state, sampler }
                }
            };
            Ok(PyNetwork(OwnedNet::F(f)))
        })
    }

    /// The reference initialisation (docs/algorithm.md §3.1) from torch's global generator.
    fn init_weights(&self, init_type: &str, init_gain: f64) -> PyResult<()> {
        guard(|| {
            let vs = match &self.0 {
                OwnedNet::G(g) => &g.vs,
                OwnedNet::D(d) => &d.vs,
                OwnedNet::F(ProjectorNet { vs: Some(vs), .. }) => vs,
                OwnedNet::F(_) => {
                    return Err(PyValueError::new_err("a projector on shared tensors is initialised by their owner"))
                }
            };
            init_weights(vs, parse::<InitType>(init_type)?, init_gain).map_err(to_py)
        })
    }

    /// Parameters and buffers by the reference's key names (the network's own tensors).
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guard(|| named_dict(py, self.network().state().map_err(to_py)?))
    }

    fn parameter_names(&self) -> PyResult<Vec<String>> {
        guard(|| Ok(self.network().parameters().map_err(to_py)?.into_iter().map(|(n, _)| n).collect()))
    }

    /// Generator: the translation, or with `layers` the taps (`encode_only`) or
    /// `(translation, taps)`; discriminator: the patch logits.
    #[pyo3(signature = (x, layers=None, encode_only=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyTensor,
        layers: Option<Vec<usize>>,
        encode_only: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(|| match &self.0 {
            OwnedNet::G(g) => run_generator(py, g, &x.0, layers, encode_only),
            OwnedNet::D(d) => Ok(PyTensor(d.net.f_forward(&x.0).map_err(to_py)?).into_pyobject(py)?.into_any()),
            OwnedNet::F(_) => Err(PyValueError::new_err("call a projector with project_source / project_target")),
        })
    }

    /// The projector's source call on `feats`: per slot the projected, L2-normalised rows
    /// and what was sampled, the patch ids (random slots: `ids[s]` when given, else drawn) or
    /// the selection's `(indices, source, local_attn, height, width)` (QS slots).
    #[pyo3(signature = (feats, num_patches, ids=None))]
    fn project_source<'py>(
        &mut self,
        py: Python<'py>,
        feats: Vec<PyTensor>,
        num_patches: i64,
        ids: Option<Vec<Option<PyTensor>>>,
    ) -> PyResult<(Vec<PyTensor>, Vec<Bound<'py, PyAny>>)> {
        guard(|| {
            let f = self.projector_mut()?;
            let feats: Vec<Tensor> = feats.into_iter().map(|t| t.0).collect();
            let ids: Option<Vec<Option<Tensor>>> = ids.map(|l| l.into_iter().map(|t| t.map(|t| t.0)).collect());
            let (rows, samples) =
                f.net.sample_source(&feats, num_patches, &mut f.sampler, ids.as_deref()).map_err(to_py)?;
            let sampled = samples
                .into_iter()
                .map(|sample| match sample {
                    SlotSample::Random { ids, .. } => Ok(PyTensor(ids).into_pyobject(py)?.into_any()),
                    SlotSample::Qs(sel) => {
                        let fields = (
                            PyTensor(sel.indices),
                            PyTensor(sel.source),
                            sel.local_attn.map(PyTensor),
                            sel.height,
                            sel.width,
                        );
                        Ok(fields.into_pyobject(py)?.into_any())
                    }
                })
                .collect::<PyResult<Vec<_>>>()?;
            Ok((rows.into_iter().map(PyTensor).collect(), sampled))
        })
    }

    /// The projector's target call on the translated maps `feats`: per slot the source call's
    /// selection (a `QSSelection`) or patch ids (drawn when None), through the same MLPs.
    fn project_target(
        &mut self,
        feats: Vec<PyTensor>,
        num_patches: i64,
        samples: Vec<Option<SampleArg>>,
    ) -> PyResult<Vec<PyTensor>> {
        guard(|| {
            let f = self.projector_mut()?;
            let feats: Vec<Tensor> = feats.into_iter().map(|t| t.0).collect();
            let mut selections = Vec::with_capacity(samples.len());
            let mut ids = Vec::with_capacity(samples.len());
            for sample in samples {
                match sample {
                    Some(SampleArg::Qs(sel)) => {
                        selections.push(Some(sel.into_selection()?.0));
                        ids.push(None);
                    }
                    Some(SampleArg::Ids(t)) => {
                        selections.push(None);
                        ids.push(Some(t.0));
                    }
                    None => {
                        selections.push(None);
                        ids.push(None);
                    }
                }
            }
            let ids = f.net.slot_ids(&feats, num_patches, &mut f.sampler, Some(&ids)).map_err(to_py)?;
            let samples = selections
                .into_iter()
                .zip(ids)
                .zip(&feats)
                .enumerate()
                .map(|(s, ((sel, ids), feat))| match (sel, ids) {
                    (Some(sel), _) => Ok(SlotSample::Qs(sel)),
                    (None, Some(ids)) => Ok(SlotSample::Random { positions: feat.size()[2] * feat.size()[3], ids }),
                    (None, None) => Err(PyValueError::new_err(format!(
                        "slot {s} is a QS-Attn slot: pass the source call's selection"
                    ))),
                })
                .collect::<PyResult<Vec<_>>>()?;
            let rows = f.net.sample_target(&feats, &samples).map_err(to_py)?;
            Ok(rows.into_iter().map(PyTensor).collect())
        })
    }
}

/// The generator's reference call: `G(x)`, `G(x, layers, encode_only=True)` (taps) or
/// `G(x, layers)` (`(translation, taps)`).
pub(super) fn run_generator<'py>(
    py: Python<'py>,
    g: &dyn GeneratorPart,
    x: &Tensor,
    layers: Option<Vec<usize>>,
    encode_only: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let taps = |ts: Vec<Tensor>| ts.into_iter().map(PyTensor).collect::<Vec<_>>();
    match layers.filter(|l| !l.is_empty()) {
        None => Ok(PyTensor(g.translate(x).map_err(step_error)?).into_pyobject(py)?.into_any()),
        Some(layers) if encode_only => {
            Ok(taps(g.encode(x, &layers).map_err(step_error)?).into_pyobject(py)?.into_any())
        }
        Some(layers) => {
            let (fake, t) = g.forward_with_taps(x, &layers).map_err(step_error)?;
            Ok((PyTensor(fake), taps(t)).into_pyobject(py)?.into_any())
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNetwork>()
}
