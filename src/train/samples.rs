//! The sample grids of a run: per row a test image, its translation, a target-domain image and
//! its identity translation, from the first test pairs (testA/testB, or the training folders).
use std::path::{Path, PathBuf};

use tch::{Device, TchError, Tensor};

use super::parts::GeneratorPart;
use crate::data::dataset::{Direction, UnalignedDataset};
use crate::data::image_io;
use crate::error::invalid;

/// The (source, target) image pairs the grids show, loaded once.
pub struct SamplePairs(Vec<(Tensor, Tensor)>);

impl SamplePairs {
    /// Up to `n` (source, target) pairs from testA/testB (or the training folders), crop-sized;
    /// unreadable files are left out (the loader warns about them). No pair at all is an error
    /// (a run opens its pairs before the first iteration, so it fails then, not at its first grid).
    pub fn open(root: &Path, direction: Direction, n: usize, size: u32) -> Result<Self, TchError> {
        if n == 0 {
            return Err(invalid("a sample grid needs at least one image pair, asked for 0"));
        }
        let set = UnalignedDataset::open(root, "test", direction)
            .or_else(|_| UnalignedDataset::open(root, "train", direction))?;
        let readable = |files: &[PathBuf]| -> Vec<Tensor> {
            files.iter().filter_map(|f| image_io::load_image(f, Some(size)).ok()).take(n).collect()
        };
        let pairs: Vec<(Tensor, Tensor)> = readable(&set.a).into_iter().zip(readable(&set.b)).collect();
        if pairs.is_empty() {
            let folder = |files: &[PathBuf]| {
                files.first().and_then(|f| f.parent()).map_or_else(String::new, |d| d.display().to_string())
            };
            return Err(invalid(format!(
                "no sample grid can be made: none of the images in {} or none in {} could be read",
                folder(&set.a),
                folder(&set.b)
            )));
        }
        Ok(SamplePairs(pairs))
    }

    /// No pairs (a process that writes no grids).
    pub fn empty() -> Self {
        SamplePairs(Vec::new())
    }

    /// The grid's rows on the CPU: source | translation | target-domain image | identity,
    /// each `3 × H × W` in [−1, 1]; G runs on `device`.
    pub fn rows(&self, g: &dyn GeneratorPart, device: Device) -> Result<Vec<Vec<Tensor>>, TchError> {
        tch::no_grad(|| {
            self.0
                .iter()
                .map(|(a, b)| {
                    let (a, b) = (a.to_device(device), b.to_device(device));
                    let out = g.translate(&Tensor::cat(&[&a, &b], 0))?.to_device(Device::Cpu);
                    Ok(vec![a.get(0).to_device(Device::Cpu), out.get(0), b.get(0).to_device(Device::Cpu), out.get(1)])
                })
                .collect()
        })
    }
}
