//! Training: options, the Adam optimiser, checkpoints and the CUT / QS-Attn loop.
pub mod adam;
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod data_efficient;
pub mod ema;
pub mod parts;
pub mod precision;
pub mod run;
pub mod trainer;
