//! Checkpoint and image files: reading checkpoints (tensors and metadata), decoding, listing
//! and saving images, with the Rust rules the trainer itself uses.
use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use super::{guard, to_py};
use crate::data::image_io;
use crate::train::checkpoint::file;

/// Reads a checkpoint: (tensors by name, metadata).
#[pyfunction]
pub fn read_checkpoint(path: PathBuf) -> PyResult<(HashMap<String, PyTensor>, HashMap<String, String>)> {
    guard(|| {
        let (tensors, meta) = file::load(&path).map_err(to_py)?;
        Ok((tensors.into_iter().map(|(k, v)| (k, PyTensor(v))).collect(), meta))
    })
}

/// Reads only a checkpoint's metadata (the run's config, position, …), not its tensors.
#[pyfunction]
pub fn read_checkpoint_metadata(path: PathBuf) -> PyResult<HashMap<String, String>> {
    guard(|| file::load_metadata(&path).map_err(to_py))
}

/// Decodes an image to `1 × 3 × H × W` in [−1, 1]: resized to `size × size`, or native size
/// rounded to multiples of 4 when `size` is None.
#[pyfunction]
#[pyo3(signature = (path, size=None))]
pub fn load_image(path: PathBuf, size: Option<u32>) -> PyResult<PyTensor> {
    guard(|| image_io::load_image(&path, size).map(PyTensor).map_err(to_py))
}

/// The image files under a folder, recursively and sorted (the dataset loader's rule);
/// an error if there are none.
#[pyfunction]
pub fn image_files(folder: PathBuf) -> PyResult<Vec<PathBuf>> {
    guard(|| crate::data::dataset::image_files(&folder).map_err(to_py))
}

/// Saves `3 × H × W` (or the first of `N × 3 × H × W`) in [−1, 1] as PNG (truncating, as the
/// reference does).
#[pyfunction]
pub fn save_image(tensor: PyTensor, path: PathBuf) -> PyResult<()> {
    guard(|| image_io::save_image(&tensor.0, &path).map_err(to_py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(read_checkpoint_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(image_files, m)?)?;
    m.add_function(wrap_pyfunction!(save_image, m)?)?;
    Ok(())
}
