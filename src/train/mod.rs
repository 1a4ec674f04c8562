//! Training: options, the Adam optimiser, checkpoints and the CUT / QS-Attn loop.
pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod guard;
pub mod integrity;
pub mod parts;
pub mod precision;
pub mod run;
pub mod run_dir;
pub mod trainer;
