//! The projector's row normalisation `v / (‖v‖₂ + ε)` (ε added to the norm, not inside the root,
//! docs/algorithm.md §1) as one autograd node: written out as aten ops, autograd would chain
//! through square, sum, sqrt, add and div, and the projector normalises many row sets per
//! iteration.
use tch::{TchError, Tensor};

use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;
use crate::ops::check;

/// Each row of `v` (`R × C`) divided by its Euclidean norm plus `eps`.
pub fn l2_normalize_rows(v: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    Ok(apply(L2NormalizeRows { eps }, &[v])?.remove(0))
}

struct L2NormalizeRows {
    eps: f64,
}

impl AutogradOp for L2NormalizeRows {
    fn name(&self) -> &'static str {
        "l2_normalize_rows"
    }

    // Per row: n = ‖v‖₂, d = n + ε, u = v / d. Saved: u, n, d (the last two one value per row).
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let v = &inputs[0];
        check::rank("l2_normalize_rows input", v, 2, "(R, C)")?;
        check::compute_kind("l2_normalize_rows input", v)?;
        let norm = v.f_norm_scalaropt_dim(2, [-1], true)?;
        let denom = norm.f_add_scalar(self.eps)?;
        let u = v.f_div(&denom)?;
        ctx.save_for_backward([u.shallow_clone(), norm, denom]);
        Ok(vec![u])
    }

    // ∂u_i/∂v_j = δ_ij / d − v_i v_j / (d² n), so with v = d·u:
    //   v̄ = ū / d − u · ⟨ū, u⟩ / n.
    // A zero row (n = 0) gives 0 · 0/0 = NaN there, as the written-out form does (sqrt's
    // derivative at 0); the trainer only differentiates the queries' rows.
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(du) = &grads[0] else { return Ok(vec![None]) };
        let [u, norm, denom] = ctx.saved() else { return Err(invalid("l2_normalize_rows: bad saved state")) };
        let along_u = du.f_mul(u)?.f_sum_dim_intlist(-1, true, u.kind())?.f_div(norm)?.f_neg_()?;
        let dv = du.f_div(denom)?.f_addcmul_(u, &along_u)?;
        Ok(vec![Some(dv)])
    }
}
