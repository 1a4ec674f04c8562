//! The `qs_attn._native` extension: thin pyo3 wrappers, one file per concept: the ops
//! (`ops.rs`), DiffAugment (`augment.rs`), the trainer and its schedule (`run.rs`), the
//! built-in networks (`networks.rs`), checkpoint and image files (`files.rs`), user-written parts inside the Rust loop
//! (`parts.rs`) and the options' allowed values (`choices.rs`). Tensors cross as
//! `torch.Tensor` without copies (pyo3-tch), so the custom autograd nodes join the caller's
//! graph. The documented Python API is in `python/qs_attn/`.
//!
//! Every entry point runs its body in [`guard`]: a Rust panic becomes an ordinary Python
//! exception, never pyo3's `PanicException` (a `BaseException` that `except Exception` misses).
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tch::TchError;

use crate::error::message;

mod augment;
mod choices;
mod files;
mod networks;
mod ops;
mod parts;
mod run;

fn to_py(e: TchError) -> PyErr {
    PyValueError::new_err(message(&e))
}

fn parse<T: std::str::FromStr<Err = TchError>>(s: &str) -> PyResult<T> {
    s.parse().map_err(to_py)
}

/// Runs an entry point's body; a Rust panic in it is raised as `RuntimeError` with the
/// panic's message.
fn guard<R>(body: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(PyRuntimeError::new_err(format!("qs_attn internal error: {text}")))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    ops::register(m)?;
    run::register(m)?;
    networks::register(m)?;
    files::register(m)?;
    choices::register(m)?;
    augment::register(m)?;
    Ok(())
}
