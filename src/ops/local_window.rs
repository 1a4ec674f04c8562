//! Local (windowed) QS-Attn (docs/algorithm.md §8.2, §8.3): a `k × k` window around every
//! position, zero padding `k/2`, padded slots taking part in the softmax with logit 0
//! (docs/algorithm.md Q10).
//!
//! Window slot `t = (dy + r)·k + (dx + r)`, `r = k/2`, `dy, dx ∈ −r..=r`; `Nb_t(l)` = the feature
//! vector at `(h + dy, w + dx)` of position `l = h·W + w`, or the zero vector outside the map.
//! `Nb(l)` is the `k² × C` matrix of these rows ("slot-major").
//!
//! Two layouts of what the keys and values are:
//! * `Geometric` (docs/algorithm.md §8.2): keys and values are the window rows `Nb(l)`
//!   themselves.
//! * `Reference` (docs/algorithm.md §8.3, bit-compatible with the authors' released local
//!   models): their unfold column is channel-major, `col[c·k² + t] = Nb_t(l)[c]`, and is read
//!   back slot-major: keys `K̃(l) = col.view(k², C)`, i.e. `K̃ = Nbᵀ` re-read with shape
//!   `k² × C`. The gathered value columns of the N selected positions, `Gt` (`N × k²C`), are
//!   transposed to `k²C × N` and re-read row-major as `N × k² × C` (`Ṽ`); routing then uses
//!   `Ṽ[n]` for query n.
//!
//! Windows are gathered only for the rows that need them (a block of positions in the entropy
//! pass, the N selected positions otherwise), never for the whole map at once.
use tch::{Kind, TchError, Tensor};

use super::check;
use super::global_attention::{block_elements, gather_rows, softmax_backward, softmax_entropy, MapGrad};
use crate::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use crate::error::invalid;

crate::choice_enum! {
    /// How the reference's unfolded windows are read (see the module documentation).
    pub enum LocalLayout("local_layout") {
        Geometric = "geometric",
        Reference = "reference",
    }
}

/// A `k × k` window over an `H × W` map, zero-padded by `k/2`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub height: i64,
    pub width: i64,
    pub size: i64,
    pub layout: LocalLayout,
}

impl Window {
    pub fn new(height: i64, width: i64, size: i64, layout: LocalLayout) -> Result<Self, TchError> {
        if size < 1 || size % 2 == 0 {
            return Err(invalid(format!("window must be a positive odd number, got {size}")));
        }
        Ok(Window { height, width, size, layout })
    }
    fn radius(&self) -> i64 {
        self.size / 2
    }
    fn padded_width(&self) -> i64 {
        self.width + 2 * self.radius()
    }
    fn padded_positions(&self) -> i64 {
        (self.height + 2 * self.radius()) * self.padded_width()
    }
    /// `k²`, the number of window slots.
    pub fn slots(&self) -> i64 {
        self.size * self.size
    }

    /// Zero-padded features, `B × P × C` → `(B·P_pad) × C` (row b·P_pad + padded raster index).
    fn pad(&self, x: &Tensor) -> Tensor {
        let (b, c, r) = (x.size()[0], x.size()[2], self.radius());
        x.reshape([b, self.height, self.width, c])
            .constant_pad_nd([0, 0, r, r, r, r])
            // reshape, not view: a 1×1 window pads nothing and leaves the caller's strides
            .reshape([b * self.padded_positions(), c])
    }

    /// For positions `pos` (`B × n`, raster indices), the rows of their window slots in the
    /// padded, batch-flattened map: `B × n × k²` (int64).
    fn window_rows(&self, pos: &Tensor) -> Tensor {
        let (r, wp, k) = (self.radius(), self.padded_width(), self.size);
        let dev = pos.device();
        let centre = (pos.divide_scalar_mode(self.width, "floor") + r) * wp + pos.remainder(self.width) + r;
        let d = Tensor::arange_start(-r, r + 1, (Kind::Int64, dev));
        let offsets = (d.view([k, 1]) * wp + d.view([1, k])).view([1, 1, k * k]);
        let batch = Tensor::arange(pos.size()[0], (Kind::Int64, dev)).view([-1, 1, 1]) * self.padded_positions();
        centre.unsqueeze(-1) + offsets + batch
    }

    /// `Nb(l)` for positions `pos`: `B × n × k² × C`.
    fn gather(&self, padded: &Tensor, rows: &Tensor) -> Tensor {
        let s = rows.size();
        let c = padded.size()[1];
        padded.index_select(0, &rows.flatten(0, -1)).view([s[0], s[1], s[2], c])
    }

    /// Adjoint of `gather`: sums window-row gradients `B × n × k² × C` back into `B × P × C`,
    /// laid out as the map whose `B × P × C` view is `like`.
    fn scatter(&self, d_nb: &Tensor, rows: &Tensor, like: &Tensor) -> MapGrad {
        let (batch, c, r) = (like.size()[0], d_nb.size()[3], self.radius());
        let padded = Tensor::zeros([batch * self.padded_positions(), c], (d_nb.kind(), d_nb.device())).index_add(
            0,
            &rows.flatten(0, -1),
            &d_nb.reshape([-1, c]),
        );
        let interior = padded
            .view([batch, self.height + 2 * r, self.padded_width(), c])
            .narrow(1, r, self.height)
            .narrow(2, r, self.width);
        let grad = MapGrad::empty(like, d_nb.kind());
        let _ = grad.view().view([batch, self.height, self.width, c]).copy_(&interior);
        grad
    }

    /// Keys in the chosen layout from window rows (`… × k² × C` → `… × k² × C`).
    fn keys(&self, nb: &Tensor) -> Tensor {
        match self.layout {
            LocalLayout::Geometric => nb.shallow_clone(),
            LocalLayout::Reference => nb.transpose(-2, -1).reshape(nb.size()),
        }
    }
    /// Adjoint of `keys` (a permutation, so its inverse).
    fn keys_adjoint(&self, d_keys: &Tensor) -> Tensor {
        match self.layout {
            LocalLayout::Geometric => d_keys.shallow_clone(),
            LocalLayout::Reference => {
                let s = d_keys.size();
                let (lead, slots, c) = (&s[..s.len() - 2], s[s.len() - 2], s[s.len() - 1]);
                let mut channel_major = lead.to_vec();
                channel_major.extend([c, slots]);
                d_keys.reshape(channel_major.as_slice()).transpose(-2, -1)
            }
        }
    }
    /// Values for routing from the window rows of the N selected positions (`B × N × k² × C`).
    fn values(&self, nb: &Tensor) -> Tensor {
        match self.layout {
            LocalLayout::Geometric => nb.shallow_clone(),
            LocalLayout::Reference => {
                let s = nb.size();
                let (b, n, slots, c) = (s[0], s[1], s[2], s[3]);
                let gt = nb.transpose(-2, -1).reshape([b, n, slots * c]); // channel-major columns
                gt.transpose(1, 2).contiguous().view([b, n, slots, c])
            }
        }
    }
    /// Adjoint of `values`.
    fn values_adjoint(&self, d_values: &Tensor) -> Tensor {
        match self.layout {
            LocalLayout::Geometric => d_values.shallow_clone(),
            LocalLayout::Reference => {
                let s = d_values.size();
                let (b, n, slots, c) = (s[0], s[1], s[2], s[3]);
                let d_gt = d_values.reshape([b, slots * c, n]).transpose(1, 2);
                d_gt.reshape([b, n, c, slots]).transpose(-2, -1)
            }
        }
    }
}

/// Entropy over the window slots of every position's local attention (no gradient): `B × P`.
/// Logits `s[l, t] = ⟨K_t(l), X[l]⟩` with the layout's keys, softmax over the `k²` slots.
pub fn local_entropy(x: &Tensor, window: &Window) -> Tensor {
    let _guard = tch::no_grad_guard();
    let (b, p, c) = (x.size()[0], x.size()[1], x.size()[2]);
    let padded = window.pad(x);
    let rows_per_block = (4 * block_elements(x.device()) / (b * window.slots() * c)).clamp(1, p);
    let blocks: Vec<Tensor> = (0..p)
        .step_by(rows_per_block as usize)
        .map(|start| {
            let len = rows_per_block.min(p - start);
            let pos = Tensor::arange_start(start, start + len, (Kind::Int64, x.device())).expand([b, len], false);
            let keys = window.keys(&window.gather(&padded, &window.window_rows(&pos)));
            softmax_entropy(keys.matmul(&x.narrow(1, start, len).unsqueeze(-1)).squeeze_dim(-1))
        })
        .collect();
    Tensor::cat(&blocks, 1)
}

/// Local attention of the selected positions: `A[b, n, :] = softmax_t ⟨K_t(sel), X[sel]⟩`,
/// `B × N × k²`.
pub fn local_attention(x: &Tensor, sel: &Tensor, window: Window) -> Result<Tensor, TchError> {
    Ok(apply(LocalAttention { window, x_kind: x.kind() }, &[x, sel])?.remove(0))
}

struct LocalAttention {
    window: Window,
    x_kind: Kind,
}

impl AutogradOp for LocalAttention {
    fn name(&self) -> &'static str {
        "qs_local_attention"
    }

    // x_n = X[sel_n] (B × N × C), K_n = keys(Nb(sel_n)) (B × N × k² × C),
    // s[n, t] = Σ_c K_n[t, c] x_n[c],  A = softmax_t(s).  Saved: X, sel, A.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let kind = check::compute_kind("features", &inputs[0])?;
        let (x, sel) = (inputs[0].to_kind(kind), &inputs[1]);
        let keys = self.window.keys(&self.window.gather(&self.window.pad(&x), &self.window.window_rows(sel)));
        let xq = gather_rows(&x, sel);
        let a = keys.matmul(&xq.unsqueeze(-1)).squeeze_dim(-1).softmax(-1, kind);
        ctx.save_for_backward([inputs[0].shallow_clone(), sel.shallow_clone(), a.shallow_clone()]);
        Ok(vec![a])
    }

    // s = K x:
    //   dx_n = Σ_t dS[n,t] K_n[t,:]            → index-add into dX at rows sel
    //   dK_n[t,c] = dS[n,t] x_n[c]             → keys_adjoint → window scatter into dX.
    // (dS = softmax_backward(A, dA).)
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let (Some(da), true) = (&grads[0], ctx.needs_input_grad(0)) else { return Ok(vec![None, None]) };
        let [x, sel, a] = ctx.saved() else { return Err(invalid("qs_local_attention: bad saved state")) };
        let kind = a.kind();
        let x = x.to_kind(kind);
        let da = da.to_kind(kind);
        let ds = softmax_backward(a, &da);
        let rows = self.window.window_rows(sel);
        let keys = self.window.keys(&self.window.gather(&self.window.pad(&x), &rows));
        let xq = gather_rows(&x, sel);
        let dxq = ds.unsqueeze(-2).matmul(&keys).squeeze_dim(-2);
        let d_keys = ds.unsqueeze(-1) * xq.unsqueeze(-2);
        let mut dx = self.window.scatter(&self.window.keys_adjoint(&d_keys), &rows, &x);
        dx.add_rows(sel, &dxq);
        Ok(vec![Some(dx.into_view(self.x_kind)), None])
    }
}

/// Local value routing: `V[b, n, :] = Σ_t A[b, n, t] · values_t(sel_n)` from the map `Y`
/// (source or translation, same positions and weights), `B × N × C`.
pub fn route_local(a: &Tensor, y: &Tensor, sel: &Tensor, window: Window) -> Result<Tensor, TchError> {
    let op = LocalRouting { window, a_kind: a.kind(), y_kind: y.kind() };
    Ok(apply(op, &[a, y, sel])?.remove(0))
}

struct LocalRouting {
    window: Window,
    a_kind: Kind,
    y_kind: Kind,
}

impl AutogradOp for LocalRouting {
    fn name(&self) -> &'static str {
        "qs_route_local"
    }

    // Ṽ = values(Nb_Y(sel)) (B × N × k² × C),  V[n] = A[n] Ṽ[n].  Saved: A, Y, sel.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let (a, y, sel) = (&inputs[0], &inputs[1], &inputs[2]);
        let yk = y.to_kind(a.kind());
        let vals = self.window.values(&self.window.gather(&self.window.pad(&yk), &self.window.window_rows(sel)));
        let v = a.unsqueeze(-2).matmul(&vals).squeeze_dim(-2);
        ctx.save_for_backward([a.shallow_clone(), y.shallow_clone(), sel.shallow_clone()]);
        Ok(vec![v.to_kind(self.y_kind)])
    }

    // dA[n, t] = Σ_c dV[n, c] Ṽ[n, t, c];   dṼ[n, t, c] = A[n, t] dV[n, c]
    //   → values_adjoint → window scatter into dY.
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        let Some(dv) = &grads[0] else { return Ok(vec![None, None, None]) };
        let [a, y, sel] = ctx.saved() else { return Err(invalid("qs_route_local: bad saved state")) };
        let dv = dv.to_kind(a.kind());
        let rows = self.window.window_rows(sel);
        let da = ctx.needs_input_grad(0).then(|| {
            let vals = self.window.values(&self.window.gather(&self.window.pad(&y.to_kind(a.kind())), &rows));
            check::grad_as(vals.matmul(&dv.unsqueeze(-1)).squeeze_dim(-1), self.a_kind)
        });
        let dy = ctx.needs_input_grad(1).then(|| {
            let d_vals = a.unsqueeze(-1) * dv.unsqueeze(-2);
            self.window.scatter(&self.window.values_adjoint(&d_vals), &rows, y).into_view(self.y_kind)
        });
        Ok(vec![da, dy, None])
    }
}
