//! PatchNCE loss (docs/algorithm.md §9) with an analytic backward.
use tch::{Kind, TchError, Tensor};

use super::check;
use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;

crate::choice_enum! {
    /// How the per-row losses are reduced.
    pub enum Reduction("reduction") {
        /// One loss per row, `(B·M,)`, as the reference returns it.
        None = "none",
        /// The mean over all rows (a scalar).
        Mean = "mean",
    }
}

/// The value the reference writes on the diagonal of the negatives, before the temperature.
pub const SELF_NEGATIVE_LOGIT: f64 = -10.0;

/// PatchNCE loss of query rows `q` against key rows `k` (both `(B·M) × D`, L2-normalised by the
/// caller), `num_images` = B images of M rows each; negatives only come from the same image.
pub fn patch_nce_loss(
    q: &Tensor,
    k: &Tensor,
    tau: f64,
    num_images: i64,
    reduction: Reduction,
    detach_keys: bool,
) -> Result<Tensor, TchError> {
    check::rank("feat_q", q, 2, "(B·M, D)")?;
    check::rank("feat_k", k, 2, "(B·M, D)")?;
    if q.size() != k.size() {
        return Err(invalid(format!(
            "feat_q and feat_k must have the same shape, got {:?} and {:?}",
            q.size(),
            k.size()
        )));
    }
    check::same_device("feat_q", q, "feat_k", k)?;
    check::supported_device("feat_q", q)?;
    check::same_kind("feat_q", q, "feat_k", k)?;
    check::compute_kind("feat_q", q)?;
    if !(tau > 0.0) || !tau.is_finite() {
        return Err(invalid(format!("tau must be a positive finite number, got {tau}")));
    }
    let rows = q.size()[0];
    if num_images < 1 {
        return Err(invalid(format!("num_images must be >= 1, got {num_images}")));
    }
    if rows == 0 || rows % num_images != 0 {
        return Err(invalid(format!(
            "the {rows} rows of feat_q cannot be split into {num_images} images of equal size"
        )));
    }
    let op = PatchNce { tau, num_images, reduction, detach_keys, input_kind: q.kind() };
    Ok(apply(op, &[q, k])?.remove(0))
}

struct PatchNce {
    tau: f64,
    num_images: i64,
    reduction: Reduction,
    detach_keys: bool,
    input_kind: Kind,
}

impl AutogradOp for PatchNce {
    fn name(&self) -> &'static str {
        "patch_nce_loss"
    }

    // Per image b with query rows Q_b and key rows K_b (M × D):
    //   S = Q_b K_bᵀ                                  (M × M)
    //   logits[m] = [S[m,m], S[m,0..M] with S[m,m] := −10] / τ      (length M + 1)
    //   ℓ[m] = logsumexp(logits[m]) − logits[m][0]  = −log softmax(logits[m])[0]
    // Saved: the inputs Q, K and the softmax p of the logits (B × M × (M+1)).
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let kind = check::compute_kind("feat_q", &inputs[0])?;
        let (rows, dim) = (inputs[0].size()[0], inputs[0].size()[1]);
        let (b, m) = (self.num_images, rows / self.num_images);
        let q = inputs[0].to_kind(kind).reshape([b, m, dim]);
        let k = inputs[1].to_kind(kind).reshape([b, m, dim]);
        let s = q.bmm(&k.transpose(1, 2));
        let pos = s.diagonal(0, 1, 2).unsqueeze(-1);
        let neg = s.diagonal_scatter(&Tensor::full([b, m], SELF_NEGATIVE_LOGIT, (kind, s.device())), 0, 1, 2);
        let logits = Tensor::cat(&[pos, neg], 2) / self.tau;
        let lse = logits.logsumexp([2], true);
        let per_row = (&lse - logits.narrow(2, 0, 1)).reshape([rows]);
        let p = (&logits - &lse).exp();
        // The inputs themselves (not views made here), so autograd's in-place checks apply.
        ctx.save_for_backward([inputs[0].shallow_clone(), inputs[1].shallow_clone(), p]);
        let loss = match self.reduction {
            Reduction::None => per_row,
            Reduction::Mean => per_row.mean(kind),
        };
        Ok(vec![loss])
    }

    // dℓ[m]/dlogits[m] = p[m] − e₀. The positive logit is S[m,m]/τ and negative j ≠ m is S[m,j]/τ;
    // the −10 entry is a constant. Hence, with g[m] the upstream gradient of ℓ[m]
    // (g/(B·M) for the mean):
    //   dS[m,j] = g[m]·p[m,1+j]/τ  (j ≠ m),     dS[m,m] = g[m]·(p[m,0] − 1)/τ
    //   dQ_b = dS K_b,                          dK_b = dSᵀ Q_b   (only when keys are not detached)
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(g) = &grads[0] else { return Ok(vec![None, None]) };
        let [q, k, p] = ctx.saved() else { return Err(invalid("patch_nce_loss: bad saved state")) };
        let (b, m) = (p.size()[0], p.size()[1]);
        let (q, k) = (q.to_kind(p.kind()).reshape([b, m, -1]), k.to_kind(p.kind()).reshape([b, m, -1]));
        let g_rows = match self.reduction {
            Reduction::None => g.to_kind(p.kind()).reshape([b, m, 1]),
            Reduction::Mean => (g.to_kind(p.kind()) / (b * m) as f64).reshape([1, 1, 1]),
        };
        let dlogits = p * &g_rows / self.tau; // p·g/τ; the −e₀·g/τ term is added to column 0 below
        let d_pos = dlogits.narrow(2, 0, 1).squeeze_dim(-1) - g_rows.squeeze_dim(-1) / self.tau;
        let ds = dlogits.narrow(2, 1, m).diagonal_scatter(&d_pos, 0, 1, 2);
        let rows = b * m;
        let dq = ctx.needs_input_grad(0).then(|| check::grad_as(ds.bmm(&k).reshape([rows, -1]), self.input_kind));
        let dk = (!self.detach_keys && ctx.needs_input_grad(1))
            .then(|| check::grad_as(ds.transpose(1, 2).bmm(&q).reshape([rows, -1]), self.input_kind));
        Ok(vec![dq, dk])
    }
}
