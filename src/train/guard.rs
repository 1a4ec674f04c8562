//! The divergence guard: a NaN or infinite loss term or gradient stops the run with an error
//! naming the term and the iteration (`on_nonfinite = "stop"`, the default) or skips that
//! network's update (`"skip"`), and a checkpoint is only written when every weight and
//! optimiser moment in it is finite, so a diverged run never replaces the last good checkpoint.
//!
//! On the CPU each step is checked before its updates (reading a flag costs nothing there). On
//! CUDA, "stop" avoids a host sync per step: each step folds its finiteness flags into a device
//! scalar (the first bad iteration and which terms, `min` over the steps) that is read when the
//! losses are read anyway (logging) and before every save; the weights may have taken NaN
//! updates by then, which is why saving refuses them. "skip" must decide before the update and
//! reads its flag every step.
use std::ffi::c_char;

use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

use super::adam::Adam;
use crate::error::{invalid, tensor_from_c};

crate::choice_enum! {
    /// What to do when a loss term or a gradient is not finite.
    pub enum OnNonFinite("on_nonfinite") {
        /// Stop with an error naming the term and the iteration.
        Stop = "stop",
        /// Skip the update of the network whose loss or gradients are not finite.
        Skip = "skip",
    }
}

/// The terms a step checks, in the bit order of the deferred record.
const TERMS: [&str; 11] =
    ["D", "D_real", "D_fake", "GP", "G_GAN", "NCE", "NCE_Y", "G", "gradients of D", "gradients of G", "gradients of F"];
/// Bits of the deferred record that hold the term mask (the iteration is above them).
const MASK_BITS: u32 = 16;
/// Skips reported on stderr before the guard goes quiet.
const SKIPS_REPORTED: u64 = 5;

fn bit(term: &str) -> i64 {
    1 << TERMS.iter().position(|t| *t == term).expect("a known term")
}

/// A 0-dim bool tensor: whether any element of `tensors` (one device) is NaN or infinite.
pub fn any_nonfinite(tensors: &[Tensor]) -> Result<Tensor, TchError> {
    let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
    unsafe { tensor_from_c("finiteness check", |error| qs_any_nonfinite(ptrs.as_ptr(), ptrs.len() as i64, error)) }
}

/// Refuses to store tensors of which any floating-point element is NaN or infinite; the error
/// names the first such tensor.
pub fn ensure_finite(tensors: &[(String, Tensor)]) -> Result<(), TchError> {
    let floats: Vec<&(String, Tensor)> =
        tensors.iter().filter(|(_, t)| t.is_floating_point() && t.numel() > 0).collect();
    let mut by_device: Vec<(Device, Vec<Tensor>)> = Vec::new();
    for (_, t) in &floats {
        match by_device.iter_mut().find(|(d, _)| *d == t.device()) {
            Some((_, list)) => list.push(t.shallow_clone()),
            None => by_device.push((t.device(), vec![t.shallow_clone()])),
        }
    }
    for (_, list) in &by_device {
        if any_nonfinite(list)?.int64_value(&[]) != 0 {
            let bad = floats
                .iter()
                .find(|(_, t)| t.isfinite().logical_not().any().int64_value(&[]) != 0)
                .map_or("?", |(n, _)| n.as_str());
            return Err(invalid(format!(
                "refusing to write a checkpoint with non-finite values (NaN or inf), first in '{bad}': \
                 the last checkpoint written is kept"
            )));
        }
    }
    Ok(())
}

pub struct DivergenceGuard {
    policy: OnNonFinite,
    /// Checks wait for [`DivergenceGuard::verify`] (policy "stop" on CUDA).
    deferred: bool,
    /// The deferred record: `min` over the steps of `iteration << MASK_BITS | terms` for steps
    /// with a non-finite term (int64 on the device; `i64::MAX` while every step was finite).
    first_bad: Option<Tensor>,
    /// The divergence found by an immediate check: every later check and save fails with it
    /// (a deferred one stays in `first_bad`).
    tripped: Option<String>,
    /// Updates skipped (policy "skip").
    pub skipped: u64,
}

impl DivergenceGuard {
    pub fn new(policy: OnNonFinite, device: Device) -> Self {
        DivergenceGuard {
            policy,
            deferred: policy == OnNonFinite::Stop && device.is_cuda(),
            first_bad: None,
            tripped: None,
            skipped: 0,
        }
    }

    /// Checks the loss `terms` and the gradients of `nets` after a backward pass of iteration
    /// `iteration` (1-based): whether the update may go on. "stop" fails here when the check is
    /// immediate; "skip" returns false.
    pub fn admit<'a>(
        &mut self,
        iteration: u64,
        terms: impl IntoIterator<Item = (&'static str, &'a Tensor)>,
        nets: &[(&'static str, Option<&Adam>)],
    ) -> Result<bool, TchError> {
        if let Some(e) = &self.tripped {
            return Err(invalid(e.clone()));
        }
        let mut names = Vec::new();
        let mut flags = Vec::new();
        for (name, t) in terms {
            names.push(name);
            flags.push(t.detach().isfinite().logical_not().reshape([-1]).any());
        }
        for (net, opt) in nets {
            let grads = opt.map(Adam::gradients).unwrap_or_default();
            if !grads.is_empty() {
                names.push(TERMS.iter().find(|t| t.ends_with(&format!("of {net}"))).copied().expect("a known network"));
                flags.push(any_nonfinite(&grads)?);
            }
        }
        if flags.is_empty() {
            return Ok(true);
        }
        let flags = Tensor::stack(&flags, 0);
        if self.deferred {
            let weights: Vec<i64> = names.iter().map(|n| bit(n)).collect();
            let weights = Tensor::from_slice(&weights).to_device(flags.device());
            let mask = (flags.to_kind(Kind::Int64) * weights).sum(Kind::Int64);
            let never = Tensor::from(i64::MAX).to_device(mask.device());
            let code = (&mask + ((iteration as i64) << MASK_BITS)).where_self(&mask.gt(0), &never);
            self.first_bad = Some(match self.first_bad.take() {
                Some(first) => first.minimum(&code),
                None => code,
            });
            return Ok(true);
        }
        let flags = Vec::<bool>::try_from(flags.to_device(Device::Cpu))?;
        let bad: Vec<&str> = names.iter().zip(&flags).filter(|(_, f)| **f).map(|(n, _)| *n).collect();
        if bad.is_empty() {
            return Ok(true);
        }
        match self.policy {
            OnNonFinite::Stop => {
                let msg = diverged(iteration, &bad);
                self.tripped = Some(msg.clone());
                Err(invalid(msg))
            }
            OnNonFinite::Skip => {
                self.skipped += 1;
                if self.skipped <= SKIPS_REPORTED {
                    let quiet = if self.skipped == SKIPS_REPORTED { " (further skips are not reported)" } else { "" };
                    eprintln!(
                        "qs_attn: warning: iteration {iteration}: {} not finite; update skipped (on_nonfinite='skip'){quiet}",
                        bad.join(", ")
                    );
                }
                Ok(false)
            }
        }
    }

    /// Reads the deferred record (a host sync): an error if any step since the start was not
    /// finite. Call before using or storing what the steps produced.
    pub fn verify(&self) -> Result<(), TchError> {
        if let Some(e) = &self.tripped {
            return Err(invalid(e.clone()));
        }
        let Some(first) = &self.first_bad else { return Ok(()) };
        let code = first.int64_value(&[]);
        if code == i64::MAX {
            return Ok(());
        }
        let mask = code & ((1 << MASK_BITS) - 1);
        let bad: Vec<&str> = TERMS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, t)| *t).collect();
        Err(invalid(diverged((code >> MASK_BITS) as u64, &bad)))
    }
}

fn diverged(iteration: u64, bad: &[&str]) -> String {
    format!(
        "training diverged: {} became NaN or infinite at iteration {iteration}. No checkpoint is written \
             from here on; the last one written before stays as it was. Lower lr or the loss weights \
             (lambda_GAN, lambda_NCE), or pass on_nonfinite='skip' to skip such updates",
        bad.join(", ")
    )
}

extern "C" {
    fn qs_any_nonfinite(tensors: *const *const C_tensor, n: i64, error: *mut *const c_char) -> *mut C_tensor;
}
