//! Weight initialisation of the reference (docs/algorithm.md §3.1), applied to a whole VarStore:
//! every conv / linear weight (a variable `*.weight` of rank ≥ 2) is redrawn, every `*.bias` is
//! zeroed, anything else (the resampling filters `*.filt`) is left as it is.
//!
//! With `fan_in = size(1)·k_h·k_w`, `fan_out = size(0)·k_h·k_w` (PyTorch's convention, also for
//! transposed convs) and `g` the gain:
//!
//! | type         | draw                                                            |
//! |--------------|-----------------------------------------------------------------|
//! | `normal`     | N(0, g²)                                                        |
//! | `xavier`     | N(0, σ²), σ = g·sqrt(2 / (fan_in + fan_out)) (reference default)|
//! | `kaiming`    | N(0, σ²), σ = sqrt(2 / fan_in) (a = 0, fan_in; `g` unused)      |
//! | `orthogonal` | g·Q, Q from the QR of a standard normal `size(0) × rest` matrix |
//!
//! Draws use torch's global RNG on the variables' device, in natural name order
//! (`model.1` < `model.4` < `model.12…`, the reference's module order), so a seeded run is
//! reproducible.
use std::cmp::Ordering;

use tch::{nn::VarStore, Kind, TchError, Tensor};

use crate::error::invalid;

crate::choice_enum! {
    /// The weight initialisation of the convolutions and linear layers.
    pub enum InitType("init_type") {
        Normal = "normal",
        Xavier = "xavier",
        Kaiming = "kaiming",
        Orthogonal = "orthogonal",
    }
}

/// Re-initialises every conv / linear weight of `vs` and zeroes every bias
/// (docs/algorithm.md §3.1).
pub fn init_weights(vs: &VarStore, init: InitType, gain: f64) -> Result<(), TchError> {
    if !gain.is_finite() {
        return Err(invalid(format!("init gain must be a finite number, got {gain}")));
    }
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let leaf = name.rsplit('.').next().unwrap_or(&name);
            if !var.is_floating_point() || var.numel() == 0 {
                continue;
            }
            if leaf == "weight" && var.dim() >= 2 {
                redraw(&mut var, init, gain)?;
            } else if leaf == "bias" {
                let _ = var.f_zero_()?;
            }
        }
        Ok(())
    })
}

/// Draws a new value for one weight tensor (rank ≥ 2, non-empty) in place.
fn redraw(w: &mut Tensor, init: InitType, gain: f64) -> Result<(), TchError> {
    let size = w.size();
    let receptive: i64 = size[2..].iter().product();
    let (fan_in, fan_out) = ((size[1] * receptive) as f64, (size[0] * receptive) as f64);
    let std = match init {
        InitType::Normal => gain,
        InitType::Xavier => gain * (2.0 / (fan_in + fan_out)).sqrt(),
        InitType::Kaiming => (2.0 / fan_in).sqrt(),
        InitType::Orthogonal => {
            let q = orthogonal(size[0], w.numel() as i64 / size[0], w.device())?;
            return w.f_copy_(&q.f_reshape(size.as_slice())?.f_mul_scalar(gain)?);
        }
    };
    let _ = w.f_normal_(0.0, std)?;
    Ok(())
}

/// A `rows × cols` matrix with orthonormal rows (rows ≤ cols) or columns (rows > cols), as
/// PyTorch's `orthogonal_`: QR of a standard normal matrix (its transpose when rows < cols),
/// columns of Q multiplied by the signs of R's diagonal so the result is uniformly distributed.
fn orthogonal(rows: i64, cols: i64, device: tch::Device) -> Result<Tensor, TchError> {
    let a = Tensor::f_randn([rows, cols], (Kind::Float, device))?;
    let wide = rows < cols;
    let a = if wide { a.f_transpose(0, 1)? } else { a };
    let (q, r) = Tensor::f_linalg_qr(&a, "reduced")?;
    let q = q.f_mul(&r.f_diag(0)?.f_sign()?)?;
    if wide {
        q.f_transpose(0, 1)
    } else {
        Ok(q)
    }
}

/// Compares dotted names segment by segment, numeric segments by value: `model.4` < `model.12`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn segments(name: &str) -> impl Iterator<Item = (Option<u64>, &str)> {
        name.split('.').map(|s| (s.parse::<u64>().ok(), s))
    }
    segments(a).cmp(segments(b))
}
