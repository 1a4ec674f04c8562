//! The sample grids of a run: per row a test image, its translation, a target-domain image and
//! its identity translation, from the first test pairs (testA/testB, or the training folders).
use std::path::{Path, PathBuf};

use tch::{Device, TchError, Tensor};

use super::parts::GeneratorPart;
use crate::data::dataset::{Direction, UnalignedDataset};
use crate::data::image_io;

/// The (source, target) image pairs the grids show, loaded once.
pub struct SamplePairs(Vec<(Tensor, Tensor)>);

impl SamplePairs {
    /// Up to `n` (source, target) pairs from testA/testB (or the training folders), crop-sized;
    /// unreadable files are left out (the loader warns about them).
    pub fn open(root: &Path, direction: Direction, n: usize, size: u32) -> Result<Self, TchError> {
        let set = UnalignedDataset::open(root, "test", direction).or_else(|_| UnalignedDataset::open(root, "train", direction))?;
        let readable = |files: &[PathBuf]| -> Vec<Tensor> {
            files.iter().filter_map(|f| image_io::load_image(f, Some(size)).ok()).take(n).collect()
        };
        Ok(SamplePairs(readable(&set.a).into_iter().zip(readable(&set.b)).collect()))
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
