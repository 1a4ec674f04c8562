//! Exponential moving average of the generator's weights (off unless `ema_decay > 0`): a
//! shadow copy `θ̄` of G's trainable parameters, updated after every generator step,
//!
//!   `θ̄ ← β_t·θ̄ + (1 − β_t)·θ`,   `β_t = min(β, (1 + t)/(10 + t))`,
//!
//! with `β = ema_decay` and `t` the number of updates before this one (the warm-up keeps the
//! first updates from averaging over the random initial weights; `θ̄` starts as a copy of the
//! initial `θ`; β itself takes over only at t = (10β − 1)/(1 − β), 8,990 for β = 0.999, so
//! shorter runs average with the warm-up's β_t). The average smooths the oscillation of
//! adversarial training, so it is the generator shown in sample grids, scored by evaluations
//! and written by export and translation; training itself continues on `θ`. Checkpoints keep
//! `θ̄` (keys `G_ema.<name>`) and `t`, so a resumed run continues the same average.
use tch::{TchError, Tensor};

use super::parts::Named;
use crate::error::invalid;

/// The checkpoint key prefix of the averaged weights.
pub const PREFIX: &str = "G_ema";

pub struct Ema {
    pub decay: f64,
    /// Updates applied so far (`t`).
    pub updates: u64,
    /// `θ̄` by parameter name, in G's parameter order.
    shadow: Named,
}

impl Ema {
    /// Starts the average at G's current parameters `params`.
    pub fn new(decay: f64, params: &Named) -> Ema {
        let shadow = tch::no_grad(|| params.iter().map(|(n, p)| (n.clone(), p.detach().copy())).collect());
        Ema { decay, updates: 0, shadow }
    }

    /// `β_t` of the next update.
    pub fn current_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// One update from G's parameters `params` (same names and order as at `new`).
    pub fn update(&mut self, params: &Named) -> Result<(), TchError> {
        let beta = self.current_decay();
        tch::no_grad(|| -> Result<(), TchError> {
            for ((name, avg), (_, p)) in self.shadow.iter_mut().zip(params) {
                // β·θ̄ + (1 − β)·θ, written as one in-place lerp: θ̄ + (1 − β)(θ − θ̄)
                let _ = avg.f_lerp_(p, 1.0 - beta).map_err(|e| invalid(format!("EMA of {name}: {e}")))?;
            }
            Ok(())
        })?;
        self.updates += 1;
        Ok(())
    }

    /// Exchanges the values of G's parameters and the average (in place, exact): calling it
    /// twice restores both.
    pub fn swap_into(&mut self, params: &Named) -> Result<(), TchError> {
        tch::no_grad(|| -> Result<(), TchError> {
            for ((_, avg), (_, p)) in self.shadow.iter_mut().zip(params) {
                let held = p.f_detach_copy()?;
                p.shallow_clone().f_copy_(avg)?;
                avg.f_copy_(&held)?;
            }
            Ok(())
        })
    }

    /// `(G_ema.<name>, θ̄)` for a checkpoint.
    pub fn state(&self) -> Named {
        self.shadow.iter().map(|(n, t)| (format!("{PREFIX}.{n}"), t.shallow_clone())).collect()
    }

    /// Restores the average from a checkpoint's tensors (`get` by key) and its update count.
    pub fn load(&mut self, get: &dyn Fn(&str) -> Option<Tensor>, updates: u64) -> Result<(), TchError> {
        for (name, avg) in self.shadow.iter_mut() {
            let key = format!("{PREFIX}.{name}");
            let t = get(&key).ok_or_else(|| invalid(format!("checkpoint has no tensor '{key}' (ema_decay is on)")))?;
            if t.size() != avg.size() {
                return Err(invalid(format!(
                    "checkpoint tensor '{key}' has shape {:?}, the average's {:?}",
                    t.size(),
                    avg.size()
                )));
            }
            tch::no_grad(|| avg.f_copy_(&t))?;
        }
        self.updates = updates;
        Ok(())
    }
}
