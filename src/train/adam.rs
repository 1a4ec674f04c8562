//! Adam (Kingma & Ba), with the exact update of `torch.optim.Adam` (no weight decay, no
//! amsgrad), and its state as named tensors so that checkpoints can store and restore it.
use tch::{no_grad, TchError, Tensor};

use crate::error::invalid;

pub struct Adam {
    /// (name, parameter) of every trainable variable, in a fixed (sorted) order.
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Number of steps taken.
    step: i64,
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Over `params` (name, parameter): shared tensors, updated in place by [`Adam::step`].
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, beta1: f64, beta2: f64) -> Self {
        let zeros = |params: &[(String, Tensor)]| params.iter().map(|(_, p)| p.zeros_like()).collect();
        Adam { exp_avg: zeros(&params), exp_avg_sq: zeros(&params), params, step: 0, lr, beta1, beta2, eps: 1e-8 }
    }

    /// Turns gradient tracking of every parameter on or off (e.g. to freeze a discriminator).
    pub fn set_requires_grad(&self, on: bool) {
        for (_, p) in &self.params {
            let _ = p.shallow_clone().set_requires_grad(on);
        }
    }

    /// The gradients of the parameters that have one (shared: changing them in place changes
    /// what [`Adam::step`] applies).
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect()
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    // t ← t + 1;  m ← lerp(m, g, 1 − β₁) = β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²
    // p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
    pub fn step(&mut self) {
        self.step += 1;
        let bias1 = 1.0 - self.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - self.beta2.powi(self.step as i32)).sqrt();
        no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
                // The same operations, in the same order, as torch's single-tensor Adam.
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                let _ = v.g_mul_scalar_(self.beta2).g_add_(&(&g * (1.0 - self.beta2) * &g));
                let denom = v.sqrt() / bias2_sqrt + self.eps;
                let _ = p.g_sub_(&(&*m / denom * (self.lr / bias1)));
            }
        });
    }

    /// The state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`) and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut named = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone()));
            named.push((format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].shallow_clone()));
        }
        (named, self.step)
    }

    /// Restores a state written by [`Adam::state`].
    pub fn load_state(&mut self, named: &std::collections::HashMap<String, Tensor>, step: i64) -> Result<(), TchError> {
        for (i, (name, _)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                let key = format!("{prefix}.{name}");
                let t = named.get(&key).ok_or_else(|| invalid(format!("checkpoint has no optimiser state '{key}'")))?;
                no_grad(|| slot.f_copy_(t))?;
            }
        }
        self.step = step;
        Ok(())
    }
}
