//! The allowed values of every named option, for the Python layer and the CLI:
//! `qs_attn._native.OPTION_CHOICES`, a dict option → list of names, each list taken from the
//! enum that defines it.
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::choices::Choice;
use crate::data::Direction;
use crate::losses::GanMode;
use crate::nets::init::InitType;
use crate::ops::{LocalLayout, QsMode, Reduction};
use crate::train::augment::Policy;
use crate::train::guard::OnNonFinite;
use crate::train::options::{Mode, TrainDevice};
use crate::train::precision::Precision;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let choices = PyDict::new(m.py());
    // the training mode: a QS-Attn mode or "none"; the ops take the QS-Attn modes only
    choices.set_item("mode", Mode::names())?;
    choices.set_item("qs_mode", QsMode::names())?;
    // the modes of qs_entropy: the selection entropies (docs/algorithm.md §8)
    choices.set_item("entropy_mode", [QsMode::Global.as_str(), QsMode::Local.as_str()])?;
    choices.set_item("local_layout", LocalLayout::names())?;
    choices.set_item("gan_mode", GanMode::names())?;
    choices.set_item("init_type", InitType::names())?;
    choices.set_item("precision", Precision::names())?;
    choices.set_item("direction", Direction::names())?;
    choices.set_item("device", TrainDevice::NAMES.to_vec())?;
    choices.set_item("reduction", Reduction::names())?;
    // the transforms a diff_augment policy lists (comma-separated, any subset)
    choices.set_item("diff_augment", Policy::NAMES.to_vec())?;
    choices.set_item("on_nonfinite", OnNonFinite::names())?;
    m.add("OPTION_CHOICES", choices)?;
    Ok(())
}
