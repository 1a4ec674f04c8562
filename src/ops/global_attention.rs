//! Global QS-Attn (spec §8.1): row entropies of softmax(X Xᵀ) computed in row blocks, the
//! attention rows of the selected queries only, and value routing with them.
//!
//! Shapes: X is `B × P × C` (flattened features, raster order), `sel` is `B × N` (int64),
//! the reduced attention `A_QS` is `B × N × P`. Nothing here materialises a `P × P` matrix.
use tch::{Device, Kind, TchError, Tensor};

use super::check;
use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;

/// Elements of one `rows × P` block of logits: bounds the working memory of the entropy pass
/// (two such buffers live at once). Larger on CUDA, where kernel launches are the cost.
pub fn block_elements(device: Device) -> i64 {
    match device {
        Device::Cuda(_) => 1 << 21,
        _ => 1 << 19,
    }
}

/// Entropy of each softmax row with the reference's formula (spec §8.1 step 3, Q6):
/// `p = softmax(s)`, `H = Σ p·φ(p)` with `φ(p) = −ln p` and `φ(0) = 0`.
/// Evaluated as `H = −Σ p·ln p` with `ln 0 = −∞` replaced by 0: the products are exactly the
/// reference's negated, so the rows of entropy exactly 0 (the ties of Q5) are the same rows.
/// `logits` is `… × K`; returns `…`. Consumes its argument to reuse the memory.
pub fn softmax_entropy(logits: Tensor) -> Tensor {
    let p = logits.softmax(-1, logits.kind());
    drop(logits);
    let mut log_p = p.log();
    let _ = log_p.nan_to_num_(f64::NAN, None::<f64>, 0.0); // −∞ (p = 0) → 0; NaN cannot occur
    // Row-wise dot products Σ_j p_j·ln p_j in one pass (a batched matrix-vector product).
    -p.unsqueeze(-2).matmul(&log_p.unsqueeze(-1)).squeeze_dim(-1).squeeze_dim(-1)
}

/// `H[b, i]` = entropy of row i of `softmax(X_b X_bᵀ)` for every position (no gradient).
/// Computed in blocks of rows so that only `rows × P` logits exist at a time.
pub fn global_entropy(x: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    let (b, p) = (x.size()[0], x.size()[1]);
    let keys_t = x.transpose(1, 2); // B × C × P (a view)
    let rows = (block_elements(x.device()) / (b * p)).clamp(1, p);
    let blocks: Vec<Tensor> = (0..p)
        .step_by(rows as usize)
        .map(|start| {
            let len = rows.min(p - start);
            softmax_entropy(x.narrow(1, start, len).bmm(&keys_t))
        })
        .collect();
    Tensor::cat(&blocks, 1)
}

/// Rows `sel` of `X` for every image: `B × N × C`.
pub fn gather_rows(x: &Tensor, sel: &Tensor) -> Tensor {
    let c = x.size()[2];
    x.gather(1, &sel.unsqueeze(-1).expand([-1, -1, c], false), false)
}

/// The attention rows of the selected queries: `A = softmax(X_q[sel] · X_kᵀ)`, `B × N × P_k`.
/// `x_q` and `x_k` may be the same tensor (global QS) or the source and the translation (cross).
pub fn selected_attention(x_q: &Tensor, sel: &Tensor, x_k: &Tensor) -> Result<Tensor, TchError> {
    let op = SelectedAttention { q_kind: x_q.kind(), k_kind: x_k.kind() };
    Ok(apply(op, &[x_q, sel, x_k])?.remove(0))
}

struct SelectedAttention {
    q_kind: Kind,
    k_kind: Kind,
}

impl AutogradOp for SelectedAttention {
    fn name(&self) -> &'static str {
        "qs_selected_attention"
    }

    // Q = X_q[sel] (B × N × C);  S = Q X_kᵀ (B × N × P_k, raw dot products);  A = softmax_row(S).
    // Computed in fp32 (fp64 for fp64 inputs). Saved: X_q, sel, X_k and the output A.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let kind = check::compute_kind("features", &inputs[0])?;
        let (x_q, sel, x_k) = (inputs[0].to_kind(kind), &inputs[1], inputs[2].to_kind(kind));
        let a = gather_rows(&x_q, sel).bmm(&x_k.transpose(1, 2)).softmax(-1, kind);
        ctx.save_for_backward([inputs[0].shallow_clone(), sel.shallow_clone(), inputs[2].shallow_clone(), a.shallow_clone()]);
        Ok(vec![a])
    }

    // Softmax backward: dS = A ⊙ (dA − Σ_j dA⊙A)  (row sums).
    // S = Q X_kᵀ:  dQ = dS X_k  → scattered (index-add) into dX_q at the rows sel;
    //              dX_k = dSᵀ Q.
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(da) = &grads[0] else { return Ok(vec![None, None, None]) };
        let [x_q, sel, x_k, a] = ctx.saved() else { return Err(invalid("qs_selected_attention: bad saved state")) };
        let kind = a.kind();
        let (x_q, x_k) = (x_q.to_kind(kind), x_k.to_kind(kind));
        let da = da.to_kind(kind);
        let mut ds = &da - (&da * a).sum_dim_intlist(-1, true, kind);
        ds *= a;
        let dx_q = ctx.needs_input_grad(0).then(|| {
            let dq = ds.bmm(&x_k);
            let c = x_q.size()[2];
            let idx = sel.unsqueeze(-1).expand([-1, -1, c], false);
            check::grad_as(x_q.zeros_like().scatter_add(1, &idx, &dq), self.q_kind)
        });
        let dx_k = ctx
            .needs_input_grad(2)
            .then(|| check::grad_as(ds.transpose(1, 2).bmm(&gather_rows(&x_q, sel)), self.k_kind));
        Ok(vec![dx_q, None, dx_k])
    }
}

/// Value routing with attention rows: `V = A · Y` (`B × N × P` · `B × P × C` → `B × N × C`).
pub fn route_global(a: &Tensor, y: &Tensor) -> Result<Tensor, TchError> {
    let op = GlobalRouting { a_kind: a.kind(), y_kind: y.kind() };
    Ok(apply(op, &[a, y])?.remove(0))
}

struct GlobalRouting {
    a_kind: Kind,
    y_kind: Kind,
}

impl AutogradOp for GlobalRouting {
    fn name(&self) -> &'static str {
        "qs_route_global"
    }

    // V = A Y, computed in the attention's dtype (fp32/fp64), returned in Y's dtype.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let (a, y) = (&inputs[0], &inputs[1]);
        ctx.save_for_backward([a.shallow_clone(), y.shallow_clone()]);
        Ok(vec![a.bmm(&y.to_kind(a.kind())).to_kind(self.y_kind)])
    }

    // dA = dV Yᵀ,  dY = Aᵀ dV.
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dv) = &grads[0] else { return Ok(vec![None, None]) };
        let [a, y] = ctx.saved() else { return Err(invalid("qs_route_global: bad saved state")) };
        let dv = dv.to_kind(a.kind());
        let da = ctx
            .needs_input_grad(0)
            .then(|| check::grad_as(dv.bmm(&y.to_kind(a.kind()).transpose(1, 2)), self.a_kind));
        let dy = ctx.needs_input_grad(1).then(|| check::grad_as(a.transpose(1, 2).bmm(&dv), self.y_kind));
        Ok(vec![da, dy])
    }
}
