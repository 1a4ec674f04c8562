//! Adam (Kingma & Ba), with the exact update of `torch.optim.Adam` (no weight decay, no
//! amsgrad), and its state as named tensors so that checkpoints can store and restore it.
use std::ffi::c_char;

use tch::{no_grad, TchError, Tensor};
use torch_sys::C_tensor;

use crate::error::{from_c, invalid};

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

    /// Drops the gradients (`set_to_none`, as torch.optim's `zero_grad` does by default): the
    /// next backward writes fresh ones, and no kernel runs per parameter.
    pub fn zero_grad(&mut self) {
        let params: Vec<*const C_tensor> = self.params.iter().map(|(_, p)| p.as_ptr()).collect();
        unsafe { qs_clear_grads(params.as_ptr(), params.len() as i64) };
    }

    // t ← t + 1;  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²
    // p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
    // One fused kernel for all parameters (`_fused_adam_`, csrc/optimizer.cpp): the update of
    // torch.optim.Adam(fused=True), bit for bit equal to its single-tensor form on CPU.
    pub fn step(&mut self) -> Result<(), TchError> {
        // the parameters that have a gradient, with it
        let with_grad: Vec<(usize, Tensor)> =
            self.params.iter().enumerate().map(|(i, (_, p))| (i, p.grad())).filter(|(_, g)| g.defined()).collect();
        self.step += 1;
        let ptrs = |of: &[Tensor]| -> Vec<*const C_tensor> { with_grad.iter().map(|(i, _)| of[*i].as_ptr()).collect() };
        let params: Vec<*const C_tensor> = with_grad.iter().map(|(i, _)| self.params[*i].1.as_ptr()).collect();
        let grads: Vec<*const C_tensor> = with_grad.iter().map(|(_, g)| g.as_ptr()).collect();
        let (exp_avg, exp_avg_sq) = (ptrs(&self.exp_avg), ptrs(&self.exp_avg_sq));
        let error = unsafe {
            qs_fused_adam(
                params.as_ptr(),
                grads.as_ptr(),
                exp_avg.as_ptr(),
                exp_avg_sq.as_ptr(),
                params.len() as i64,
                self.step as f64,
                self.lr,
                self.beta1,
                self.beta2,
                self.eps,
            )
        };
        if error.is_null() {
            Ok(())
        } else {
            Err(unsafe { from_c("Adam step failed", error) })
        }
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

extern "C" {
    fn qs_fused_adam(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        n: i64,
        step: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> *const c_char;
    fn qs_clear_grads(params: *const *const C_tensor, n: i64);
}
