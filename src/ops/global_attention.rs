//! Global QS-Attn (docs/algorithm.md §8.1): row entropies of softmax(X Xᵀ) computed in row blocks,
//! the attention rows of the selected queries only, and value routing with them.
//!
//! Shapes: X is `B × P × C` (flattened features, raster order), `sel` is `B × N` (int64),
//! the reduced attention `A_QS` is `B × N × P`. Nothing here materialises a `P × P` matrix, and
//! routing does not even keep `A_QS` (it is recomputed in blocks in backward).
use tch::{Device, Kind, TchError, Tensor};

use super::check;
use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;

/// `QS_ATTN_BLOCK_ELEMENTS`, read once: a fixed block size (elements of one `rows × P` block)
/// for every device, to trade memory for fewer, larger kernels when tuning.
fn block_override() -> Option<i64> {
    static OVERRIDE: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *OVERRIDE.get_or_init(|| {
        std::env::var("QS_ATTN_BLOCK_ELEMENTS").ok().and_then(|v| v.parse::<i64>().ok()).filter(|&v| v > 0)
    })
}

/// Elements of one block of work: bounds the working memory of the blocked passes (two such
/// buffers live at once). Larger on CUDA, where kernel launches are the cost. The local
/// window passes use it as is; the global attention's blocks, see [`row_block`].
pub fn block_elements(device: Device) -> i64 {
    block_override().unwrap_or(match device {
        Device::Cuda(_) => 1 << 21,
        _ => 1 << 18,
    })
}

/// On CUDA a global-attention block holds up to this many query rows (of every image of the
/// batch), within [`CUDA_GLOBAL_BLOCK_ELEMENTS`] (32 MiB of float32): fewer, larger blocks,
/// because a training step on a GPU is bound by kernel launches.
const CUDA_GLOBAL_MAX_ROWS: i64 = 1024;
const CUDA_GLOBAL_BLOCK_ELEMENTS: i64 = 1 << 23;

/// Entropy of each softmax row with the reference's formula (docs/algorithm.md §8.1 step 3):
/// `p = softmax(s)`, `H = Σ p·φ(p)` with `φ(p) = −ln p` and `φ(0) = 0`, i.e. `Σ entr(p)` with
/// `entr(p) = −p·ln p`, `entr(0) = 0`: the terms are the reference's, so the rows of entropy
/// exactly 0 are the same rows (docs/algorithm.md Q5, Q6). Two buffers per block.
/// `logits` is `… × K`; returns `…`. Consumes its argument to free it early.
pub fn softmax_entropy(logits: Tensor) -> Tensor {
    let p = logits.softmax(-1, logits.kind());
    drop(logits);
    p.special_entr().sum_dim_intlist(-1, false, p.kind())
}

/// Query rows per block so that one `B × rows × P` block stays within the block size: on
/// CUDA up to [`CUDA_GLOBAL_MAX_ROWS`] rows within [`CUDA_GLOBAL_BLOCK_ELEMENTS`], elsewhere
/// (and with `QS_ATTN_BLOCK_ELEMENTS` set) within [`block_elements`].
fn row_block(b: i64, p: i64, n: i64, device: Device) -> i64 {
    let rows = match (block_override(), device) {
        (None, Device::Cuda(_)) => (CUDA_GLOBAL_BLOCK_ELEMENTS / (b * p)).min(CUDA_GLOBAL_MAX_ROWS),
        _ => block_elements(device) / (b * p),
    };
    rows.clamp(1, n)
}

/// `H[b, i]` = entropy of row i of `softmax(X_b X_bᵀ)` for every position (no gradient).
/// Computed in blocks of rows so that only `rows × P` logits exist at a time.
pub fn global_entropy(x: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    let (b, p) = (x.size()[0], x.size()[1]);
    let keys_t = x.transpose(1, 2); // B × C × P (a view)
    let rows = row_block(b, p, p, x.device());
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

/// The gradient of a `B × P × C` view of a feature map, held as a `B × P × C` view of memory
/// laid out as the map: `B × C × P` memory for an NCHW map (whose view is the transposed one,
/// "channel-major"), `B × P × C` memory for a channels-last map (whose view is contiguous), so
/// that the gradient reaches the map without a layout copy. Products are computed in the
/// memory's orientation (the transposed product for a channel-major gradient).
pub(super) struct MapGrad(Tensor);

impl MapGrad {
    /// Whether the `B × P × C` view `view` has its channels apart in memory (an NCHW map's).
    fn is_channel_major(view: &Tensor) -> bool {
        view.stride()[2] != 1
    }

    /// Uninitialised, of `kind`, laid out as the view `like`.
    pub(super) fn empty(like: &Tensor, kind: Kind) -> Self {
        let (b, p, c) = (like.size()[0], like.size()[1], like.size()[2]);
        let opts = (kind, like.device());
        MapGrad(if Self::is_channel_major(like) {
            Tensor::empty([b, c, p], opts).transpose(1, 2)
        } else {
            Tensor::empty([b, p, c], opts)
        })
    }

    /// Zeros of `kind`, laid out as the view `like`.
    fn zeros(like: &Tensor, kind: Kind) -> Self {
        let mut grad = Self::empty(like, kind);
        let _ = grad.0.zero_();
        grad
    }

    /// `lhs · rhs` (`B × P × K` times `B × K × C`) laid out as the view `like`.
    fn product(lhs: &Tensor, rhs: &Tensor, like: &Tensor) -> Self {
        MapGrad(if Self::is_channel_major(like) {
            rhs.transpose(1, 2).bmm(&lhs.transpose(1, 2)).transpose(1, 2)
        } else {
            lhs.bmm(rhs)
        })
    }

    /// `+= lhs · rhs` (`B × P × K` times `B × K × C`).
    fn add_product(&mut self, lhs: &Tensor, rhs: &Tensor) {
        let _ = if Self::is_channel_major(&self.0) {
            self.0.transpose(1, 2).baddbmm_(&rhs.transpose(1, 2), &lhs.transpose(1, 2))
        } else {
            self.0.baddbmm_(lhs, rhs)
        };
    }

    /// `[b, sel[b, i], :] += rows[b, i, :]` (`rows`: `B × N × C`).
    pub(super) fn add_rows(&mut self, sel: &Tensor, rows: &Tensor) {
        let c = rows.size()[2];
        let _ = self.0.scatter_add_(1, &sel.unsqueeze(-1).expand([-1, -1, c], false), rows);
    }

    /// The `B × P × C` view.
    pub(super) fn view(&self) -> &Tensor {
        &self.0
    }

    /// The `B × P × C` gradient, in `kind`.
    pub(super) fn into_view(self, kind: Kind) -> Tensor {
        check::grad_as(self.0, kind)
    }
}

/// Softmax backward for rows `a = softmax(s)`: `ds = a ⊙ (da − Σ_j da⊙a)`, with one
/// temporary of `a`'s size.
pub fn softmax_backward(a: &Tensor, da: &Tensor) -> Tensor {
    let mut ds = da * a;
    let row_sums = ds.sum_dim_intlist(-1, true, ds.kind());
    let _ = ds.addcmul_(a, &row_sums.neg());
    ds
}

/// The attention rows of the selected queries, `A = softmax(X[sel] · Xᵀ)` (`B × N × P`), as a
/// differentiable value (the selection's `attn`). Routing does not use it: see
/// [`attend_and_route`].
pub fn selected_attention(x: &Tensor, sel: &Tensor) -> Result<Tensor, TchError> {
    Ok(apply(SelectedAttention { x_kind: x.kind() }, &[x, sel])?.remove(0))
}

struct SelectedAttention {
    x_kind: Kind,
}

impl AutogradOp for SelectedAttention {
    fn name(&self) -> &'static str {
        "qs_selected_attention"
    }

    // Q = X[sel] (B × N × C);  S = Q Xᵀ (raw dot products);  A = softmax_row(S), in fp32
    // (fp64 for fp64 input). Saved: X, sel and the output A.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let kind = check::compute_kind("features", &inputs[0])?;
        let x = inputs[0].to_kind(kind);
        let a = gather_rows(&x, &inputs[1]).bmm(&x.transpose(1, 2)).softmax(-1, kind);
        ctx.save_for_backward([inputs[0].shallow_clone(), inputs[1].shallow_clone(), a.shallow_clone()]);
        Ok(vec![a])
    }

    // dS = softmax_backward(A, dA).  S = Q Xᵀ with Q = X[sel]:
    //   dX = dSᵀ Q + dS X scattered (index-add) into the rows sel,
    // formed in the layout of the feature map the view X came from ([`MapGrad`]), so autograd
    // accumulates it without a copy.
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let (Some(da), true) = (&grads[0], ctx.needs_input_grad(0)) else { return Ok(vec![None, None]) };
        let [x_view, sel, a] = ctx.saved() else { return Err(invalid("qs_selected_attention: bad saved state")) };
        let x = x_view.to_kind(a.kind());
        let ds = softmax_backward(a, &da.to_kind(a.kind()));
        let mut dx = MapGrad::product(&ds.transpose(1, 2), &gather_rows(&x, sel), x_view);
        dx.add_rows(sel, &ds.bmm(&x));
        Ok(vec![Some(dx.into_view(self.x_kind)), None])
    }
}

/// Attention routing without keeping the attention:
/// `V = softmax(X_q[sel] · X_kᵀ) · Y` (`B × N × C_y`), computed in blocks of query rows; the
/// backward pass recomputes each block's attention instead of saving the `B × N × P` matrix, so
/// between forward and backward only the inputs are kept. `x_k = None`: the keys are `X_q`
/// itself (global QS); `Some`: another map (cross-domain attention). `Y` (values) is the source
/// (key branch), the translation (query branch), or anything with the keys' positions.
pub fn attend_and_route(x_q: &Tensor, sel: &Tensor, x_k: Option<&Tensor>, y: &Tensor) -> Result<Tensor, TchError> {
    let op = AttendRoute { q_kind: x_q.kind(), k_kind: x_k.map(|k| k.kind()), y_kind: y.kind() };
    let inputs: Vec<&Tensor> = match x_k {
        None => vec![x_q, sel, y],
        Some(k) => vec![x_q, sel, y, k],
    };
    Ok(apply(op, &inputs)?.remove(0))
}

struct AttendRoute {
    q_kind: Kind,
    /// `None`: the keys are the queries' own map.
    k_kind: Option<Kind>,
    y_kind: Kind,
}

impl AttendRoute {
    /// The inputs in the compute dtype: `(X_q, sel, Y, X_k)`.
    fn operands(&self, inputs: &[Tensor]) -> Result<(Tensor, Tensor, Tensor, Tensor), TchError> {
        let kind = check::compute_kind("features", &inputs[0])?;
        let x_q = inputs[0].to_kind(kind);
        let x_k = inputs.get(3).map_or_else(|| x_q.shallow_clone(), |k| k.to_kind(kind));
        Ok((x_q, inputs[1].shallow_clone(), inputs[2].to_kind(kind), x_k))
    }
}

impl AutogradOp for AttendRoute {
    fn name(&self) -> &'static str {
        "qs_attend_route"
    }

    // Per block of query rows r:  Q_r = X_q[sel_r],  A_r = softmax(Q_r X_kᵀ),  V_r = A_r Y.
    // Saved: the inputs only.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let (x_q, sel, y, x_k) = self.operands(inputs)?;
        let (b, n, p) = (sel.size()[0], sel.size()[1], x_k.size()[1]);
        let rows = row_block(b, p, n, x_q.device());
        let keys_t = x_k.transpose(1, 2);
        let blocks: Vec<Tensor> = (0..n)
            .step_by(rows as usize)
            .map(|start| {
                let sel_r = sel.narrow(1, start, rows.min(n - start));
                gather_rows(&x_q, &sel_r).bmm(&keys_t).softmax(-1, x_q.kind()).bmm(&y)
            })
            .collect();
        ctx.save_for_backward(inputs.iter().map(|t| t.shallow_clone()));
        Ok(vec![Tensor::cat(&blocks, 1).to_kind(self.y_kind)])
    }

    // Per block r, with A_r recomputed:
    //   dY    += A_rᵀ dV_r
    //   dA_r   = dV_r Yᵀ,   dS_r = softmax_backward(A_r, dA_r)
    //   dX_k  += dS_rᵀ Q_r
    //   dQ_r   = dS_r X_k  → index-add into dX_q at the rows sel_r
    // Each gradient is accumulated in the layout of the feature map its view came from
    // ([`MapGrad`]: C × P memory for NCHW, P × C for channels-last); with shared keys dX_k and
    // dX_q are one buffer.
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let shared_keys = self.k_kind.is_none();
        let n_inputs = if shared_keys { 3 } else { 4 };
        let Some(dv) = &grads[0] else { return Ok((0..n_inputs).map(|_| None).collect()) };
        let (x_q, sel, y, x_k) = self.operands(ctx.saved())?;
        let dv = dv.to_kind(x_q.kind());
        let (b, n) = (sel.size()[0], sel.size()[1]);
        let need_q = ctx.needs_input_grad(0);
        let need_y = ctx.needs_input_grad(2);
        let need_k = if shared_keys { need_q } else { ctx.needs_input_grad(3) };
        // (the operands keep the layouts of the saved views, those of the maps)
        let mut dq = need_q.then(|| MapGrad::zeros(&x_q, x_q.kind()));
        let mut dk = (need_k && !shared_keys).then(|| MapGrad::zeros(&x_k, x_q.kind()));
        let mut dy = need_y.then(|| MapGrad::zeros(&y, x_q.kind()));
        let rows = row_block(b, x_k.size()[1], n, x_q.device());
        let (keys_t, values_t) = (x_k.transpose(1, 2), y.transpose(1, 2));
        for start in (0..n).step_by(rows as usize) {
            let len = rows.min(n - start);
            let sel_r = sel.narrow(1, start, len);
            let q_r = gather_rows(&x_q, &sel_r);
            let a_r = q_r.bmm(&keys_t).softmax(-1, x_q.kind());
            let dv_r = dv.narrow(1, start, len);
            if let Some(dy) = dy.as_mut() {
                dy.add_product(&a_r.transpose(1, 2), &dv_r);
            }
            if !(need_q || need_k) {
                continue;
            }
            let ds_r = softmax_backward(&a_r, &dv_r.bmm(&values_t));
            drop(a_r);
            if need_k {
                let target = if shared_keys { dq.as_mut() } else { dk.as_mut() };
                target.expect("allocated when needed").add_product(&ds_r.transpose(1, 2), &q_r);
            }
            if let Some(dq) = dq.as_mut() {
                dq.add_rows(&sel_r, &ds_r.bmm(&x_k));
            }
        }
        let mut result = vec![dq.map(|g| g.into_view(self.q_kind)), None, dy.map(|g| g.into_view(self.y_kind))];
        if let Some(k_kind) = self.k_kind {
            result.push(dk.map(|g| g.into_view(k_kind)));
        }
        Ok(result)
    }
}
