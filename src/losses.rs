//! GAN losses (docs/algorithm.md §5) and the WGAN-GP gradient penalty (our extension,
//! docs/algorithm.md Q14).
//!
//! Real label 1, fake label 0, broadcast to the prediction:
//!
//! | mode            | real                         | fake                        |
//! |-----------------|------------------------------|-----------------------------|
//! | `lsgan`         | mean((pred − 1)²)            | mean(pred²)                 |
//! | `vanilla`       | BCE-with-logits(pred, 1)     | BCE-with-logits(pred, 0)    |
//! | `nonsaturating` | mean_b mean_i softplus(−pred)| mean_b mean_i softplus(pred)|
//! | `wgangp`        | −mean(pred)                  | mean(pred)                  |
//!
//! BCE-with-logits(x, 1) = softplus(−x), (x, 0) = softplus(x). The reference model takes the
//! mean of whatever the loss returns, so every mode gives a scalar here.
use tch::{Kind, Reduction, TchError, Tensor};

use crate::error::invalid;

crate::choice_enum! {
    /// The GAN objective (the table above).
    pub enum GanMode("gan_mode") {
        Lsgan = "lsgan",
        Vanilla = "vanilla",
        Nonsaturating = "nonsaturating",
        Wgangp = "wgangp",
    }
}

/// The scalar loss of a discriminator prediction (any shape, floating point, non-empty)
/// against the real (`target_is_real`) or the fake label; anything else is an error naming
/// the prediction's shape and dtype (a supplied discriminator may return anything).
pub fn gan_loss(mode: GanMode, pred: &Tensor, target_is_real: bool) -> Result<Tensor, TchError> {
    if !pred.is_floating_point() || pred.numel() == 0 {
        return Err(invalid(format!(
            "the GAN loss needs a non-empty floating-point prediction from the discriminator, got shape {:?} of {:?}",
            pred.size(),
            pred.kind()
        )));
    }
    let label = if target_is_real { 1.0 } else { 0.0 };
    match mode {
        // aten's mse_loss, as the reference (nn.MSELoss): one op with its own backward instead
        // of the written-out (pred − label)²; the label is a 0-dim tensor expanded
        GanMode::Lsgan => pred
            .f_mse_loss(&Tensor::f_full([], label, (pred.kind(), pred.device()))?.f_expand_as(pred)?, Reduction::Mean),
        GanMode::Vanilla => pred.f_binary_cross_entropy_with_logits(
            &pred.f_full_like(label)?,
            None::<Tensor>,
            None::<Tensor>,
            Reduction::Mean,
        ),
        GanMode::Nonsaturating => {
            let sp = if target_is_real { pred.f_neg()?.f_softplus()? } else { pred.f_softplus()? };
            // Mean over each sample's elements, then over the batch.
            let per_sample = if sp.dim() < 2 { sp } else { sp.f_flatten(1, -1)?.f_mean_dim(1, false, None::<Kind>)? };
            per_sample.f_mean(None::<Kind>)
        }
        GanMode::Wgangp => {
            let m = pred.f_mean(None::<Kind>)?;
            if target_is_real {
                m.f_neg()
            } else {
                Ok(m)
            }
        }
    }
}

/// WGAN-GP gradient penalty `λ · mean_b (‖∂D(x̂)/∂x̂_b‖₂ − 1)²` at `x̂ = α·real + (1−α)·fake`,
/// `α ~ U(0, 1)` per sample (torch's global RNG), as CUT's `cal_gradient_penalty` ("mixed",
/// including its `+1e-16` on the gradient before the norm). `real` and `fake` are detached;
/// the penalty is differentiable w.r.t. the parameters of `d` (double backward through D).
pub fn gradient_penalty(
    d: &dyn Fn(&Tensor) -> Result<Tensor, TchError>,
    real: &Tensor,
    fake: &Tensor,
    lambda_gp: f64,
) -> Result<Tensor, TchError> {
    if real.size() != fake.size() || real.dim() == 0 || real.numel() == 0 {
        return Err(invalid(format!(
            "real and fake must be non-empty batches of the same shape, got {:?} and {:?}",
            real.size(),
            fake.size()
        )));
    }
    if !real.is_floating_point() || real.kind() != fake.kind() || real.device() != fake.device() {
        return Err(invalid(format!(
            "real and fake must be floating point of the same kind and device, got {:?} on {:?} and {:?} on {:?}",
            real.kind(),
            real.device(),
            fake.kind(),
            fake.device()
        )));
    }
    if !lambda_gp.is_finite() {
        return Err(invalid(format!("lambda_gp must be a finite number, got {lambda_gp}")));
    }
    let b = real.size()[0];
    let mut alpha_shape = vec![1i64; real.dim()];
    alpha_shape[0] = b;
    let alpha = Tensor::f_rand(alpha_shape.as_slice(), (real.kind(), real.device()))?;
    let (real, fake) = (real.detach(), fake.detach());
    let x_hat = (alpha.f_mul(&real)? + alpha.f_neg()?.f_add_scalar(1.0)?.f_mul(&fake)?).set_requires_grad(true);
    let score = d(&x_hat)?.f_sum(None::<Kind>)?;
    let grad = Tensor::f_run_backward(&[&score], &[&x_hat], true, true)?.remove(0);
    let norms = (grad.f_reshape([b, -1])? + 1e-16).f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?;
    Ok((norms - 1.0).square().mean(None::<Kind>) * lambda_gp)
}
