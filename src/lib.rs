//! qs_attn: QS-Attn (Hu et al., CVPR 2022) and PatchNCE as libtorch ops with analytic backward
//! passes, usable from Rust and, through the `qs_attn._native` extension, from PyTorch.
pub mod autograd;
pub mod choices;
pub mod data;
pub mod device;
pub mod error;
pub mod losses;
pub mod nets;
pub mod ops;
mod python;
pub mod rng;
pub mod train;
