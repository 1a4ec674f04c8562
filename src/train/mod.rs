//! Training: the options, the networks, one iteration (the D update, then the G and F
//! update), Adam, checkpoints, and the schedule that drives it all.
//!
//! One iteration top-down: `run.rs` (the schedule: data, logs, grids, checkpoints when due)
//! → `step.rs` (the translation, the D step, the G + F step) → `parts.rs` (the networks and
//! losses the step calls) → `adam.rs`.
pub mod adam;
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod data_efficient;
pub mod ema;
pub mod guard;
pub mod networks;
pub mod options;
pub mod parts;
pub mod precision;
pub mod run;
pub mod run_dir;
pub mod samples;
pub mod step;
pub mod trainer;
