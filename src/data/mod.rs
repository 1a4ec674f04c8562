//! The data pipeline (docs/algorithm.md §2, §12.1): the unpaired two-folder dataset, the per-image
//! training transform, a deterministic multi-threaded batch loader, and image I/O for inference.
//!
//! - `dataset` — `<root>/<phase>A|B` file lists (recursive, extension filter, sorted).
//! - `transform` — RGB → bicubic resize → random crop → multiple-of-4 → flip → [-1, 1], with a
//!   Pillow-exact bicubic resampler (randomness from `crate::rng::SplitMix64`).
//! - `loader` — one epoch of batches, prefetched by worker threads, independent of their number.
//! - `completeness` — whether a JPEG / PNG file is whole (truncated files are refused).
//! - `image_io` — decoding to RGB, `load_image`, and PNG export with the reference's truncation.
pub mod completeness;
pub mod dataset;
pub mod image_io;
pub mod loader;
pub mod transform;

pub use dataset::{Direction, UnalignedDataset};
pub use image_io::{load_image, save_grid, save_image};
pub use loader::{epoch_batches, Batch, EpochBatches, LoaderConfig};
pub use transform::TransformConfig;
