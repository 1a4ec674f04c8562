//! User-written PyTorch parts inside the Rust training loop: the traits of
//! `crate::train::parts` implemented over Python objects, called through pyo3 with the GIL
//! taken only for the call. Tensors cross without copies, so the Python modules' operations
//! join the loop's autograd graph and their parameters receive gradients and optimiser updates
//! exactly as the built-in ones do.
//!
//! The call conventions are the reference's (CUT / QS-Attn):
//! * generator: `G(x)` → translation; `G(x, layers=[...], encode_only=True)` → the outputs of
//!   the listed layers; `G(x, layers=[...])` → `(translation, taps)` of one pass;
//! * discriminator: `D(x)` → patch logits;
//! * projector: `F(feats_src, num_patches, patch_ids, None)` → `(keys, ids, attn)`, then
//!   `F(feats_tgt, num_patches, ids, attn)` → `(queries, _, _)` (as `qs_attn.nn.PatchSampleF`);
//! * GAN loss: `gan_loss(prediction, target_is_real: bool)` → scalar;
//! * NCE loss: `nce_loss(queries, keys, num_images)` → per-row losses or a scalar (the trainer
//!   takes its mean).
//!
//! A Python exception inside a part is kept (see [`take_error`]) and re-raised unchanged by
//! the binding that started the step.
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3_tch::PyTensor;
use tch::{TchError, Tensor};

use crate::error::invalid;
use crate::ops::PatchSampler;
use crate::train::parts::{DiscriminatorPart, GanLossPart, GeneratorPart, Named, NceLossPart, Network, ProjectorPart};
use crate::train::trainer::GradientSync;

/// The exception a Python part raised during the current binding call.
static PENDING: Mutex<Option<PyErr>> = Mutex::new(None);

/// The exception a Python part raised since the last call (if any).
pub fn take_error() -> Option<PyErr> {
    PENDING.lock().ok().and_then(|mut e| e.take())
}

/// A Python object playing one part (`what` names it in errors).
pub struct PyPart {
    obj: PyObject,
    what: &'static str,
}

impl PyPart {
    pub fn new(obj: PyObject, what: &'static str) -> Self {
        PyPart { obj, what }
    }

    /// Runs `f` on the object with the GIL; a Python exception is kept for re-raising.
    fn call<R>(&self, f: impl for<'py> FnOnce(&Bound<'py, PyAny>) -> PyResult<R>) -> Result<R, TchError> {
        Python::with_gil(|py| {
            f(self.obj.bind(py)).map_err(|e| {
                let msg = format!("the user-supplied {} raised {}", self.what, e);
                if let Ok(mut slot) = PENDING.lock() {
                    *slot = Some(e);
                }
                invalid(msg)
            })
        })
    }
}

fn tensor(obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    Ok(obj.extract::<PyTensor>()?.0)
}

fn tensors(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Tensor>> {
    obj.try_iter()?.map(|item| tensor(&item?)).collect()
}

fn py_tensors<'py>(py: Python<'py>, ts: &[Tensor]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, ts.iter().map(|t| PyTensor(t.shallow_clone())))
}

/// `(name, tensor)` pairs from an iterable of 2-tuples (`named_parameters()`, `state_dict().items()`).
fn named(items: &Bound<'_, PyAny>, trainable_only: bool) -> PyResult<Named> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let (name, t): (String, PyTensor) = item?.extract()?;
        if !trainable_only || t.0.requires_grad() {
            out.push((name, t.0));
        }
    }
    Ok(out)
}

impl Network for PyPart {
    fn parameters(&self) -> Result<Named, TchError> {
        self.call(|m| named(&m.call_method0("named_parameters")?, true))
    }

    fn state(&self) -> Result<Named, TchError> {
        self.call(|m| {
            let kwargs = PyDict::new(m.py());
            kwargs.set_item("keep_vars", true)?;
            named(&m.call_method("state_dict", (), Some(&kwargs))?.call_method0("items")?, false)
        })
    }
}

/// `G(x, layers=[...], encode_only=...)`.
fn call_with_layers<'py>(
    m: &Bound<'py, PyAny>,
    x: &Tensor,
    layers: &[usize],
    encode_only: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(m.py());
    kwargs.set_item("layers", layers.to_vec())?;
    kwargs.set_item("encode_only", encode_only)?;
    m.call((PyTensor(x.shallow_clone()),), Some(&kwargs))
}

impl GeneratorPart for PyPart {
    fn translate(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.call(|m| tensor(&m.call1((PyTensor(x.shallow_clone()),))?))
    }

    fn forward_with_taps(&self, x: &Tensor, layers: &[usize]) -> Result<(Tensor, Vec<Tensor>), TchError> {
        self.call(|m| {
            let out = call_with_layers(m, x, layers, false)?;
            let (fake, taps): (Bound<PyAny>, Bound<PyAny>) = out.extract()?;
            Ok((tensor(&fake)?, tensors(&taps)?))
        })
    }

    fn encode(&self, x: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>, TchError> {
        self.call(|m| tensors(&call_with_layers(m, x, layers, true)?))
    }
}

impl DiscriminatorPart for PyPart {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.call(|m| tensor(&m.call1((PyTensor(x.shallow_clone()),))?))
    }
}

impl ProjectorPart for PyPart {
    fn keys_and_queries(
        &self,
        feat_k: &[Tensor],
        feat_q: &[Tensor],
        num_patches: i64,
        _sampler: &mut PatchSampler,
        ids: Option<&[Option<Tensor>]>,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), TchError> {
        self.call(|m| {
            let py = m.py();
            let injected = match ids {
                Some(ids) => {
                    PyList::new(py, ids.iter().map(|t| t.as_ref().map(|t| PyTensor(t.shallow_clone()))))?.into_any()
                }
                None => py.None().into_bound(py),
            };
            let source = m.call1((py_tensors(py, feat_k)?, num_patches, injected, py.None()))?;
            let source = source.downcast::<PyTuple>()?;
            let keys = tensors(&source.get_item(0)?)?;
            let target = m.call1((py_tensors(py, feat_q)?, num_patches, source.get_item(1)?, source.get_item(2)?))?;
            let queries = tensors(&target.downcast::<PyTuple>()?.get_item(0)?)?;
            Ok((keys, queries))
        })
    }
}

impl GanLossPart for PyPart {
    fn loss(&self, prediction: &Tensor, target_is_real: bool) -> Result<Tensor, TchError> {
        self.call(|f| tensor(&f.call1((PyTensor(prediction.shallow_clone()), target_is_real))?))
    }
}

impl NceLossPart for PyPart {
    fn loss(&self, queries: &Tensor, keys: &Tensor, num_images: i64) -> Result<Tensor, TchError> {
        let per_row = self.call(|f| {
            tensor(&f.call1((PyTensor(queries.shallow_clone()), PyTensor(keys.shallow_clone()), num_images))?)
        })?;
        per_row.f_mean(None)
    }
}

/// Gradient averaging of a data-parallel run through a Python callable
/// `sync(net: str, grads: list[Tensor])` that replaces the gradients by their mean over the
/// processes in place (`qs_attn.distributed`: `torch.distributed.all_reduce`).
pub struct PyGradientSync(pub PyPart);

impl GradientSync for PyGradientSync {
    fn average(&self, net: &'static str, grads: &[Tensor]) -> Result<(), TchError> {
        self.0.call(|f| f.call1((net, py_tensors(f.py(), grads)?)).map(|_| ()))
    }
}
