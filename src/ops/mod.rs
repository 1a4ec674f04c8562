//! The differentiable ops of QS-Attn and CUT, each a custom autograd node (see `crate::autograd`)
//! with an analytic backward. The maths: docs/algorithm.md §7–§9.
pub mod check;
pub mod global_attention;
pub mod local_window;
pub mod patch_nce;
pub mod qs;
pub mod sampling;

pub use local_window::LocalLayout;
pub use patch_nce::{patch_nce_loss, Reduction};
pub use qs::{qs_cross_route, qs_entropy, qs_route, qs_select, EntropyOf, QsMode, Selection};
pub use sampling::PatchSampler;
