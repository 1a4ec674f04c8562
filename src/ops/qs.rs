//! QS-Attn as used by the method (docs/algorithm.md §8): select the query positions once on the
//! source features, then route the source features (key branch) and the translated features
//! (query branch) with that selection.
//!
//! | mode          | selection entropy            | attention (`attn`)             | routing           |
//! |---------------|------------------------------|--------------------------------|-------------------|
//! | `global`      | softmax(X Xᵀ) rows           | softmax(X[sel] Xᵀ), B × N × P  | `attn · Y`        |
//! | `local`       | window softmax (layout)      | window softmax, B × N × k²     | window routing    |
//! | `local_global`| window softmax (layout)      | softmax(X[sel] Xᵀ), B × N × P  | `attn · Y`        |
//! | `cross`       | as `global`                  | as `global`                    | keys: `attn · X`; queries: [`qs_cross_route`] |
//!
//! For the global-attention modes the selection keeps the source features and the indices, not
//! the `B × N × P` attention: routing recomputes it in blocks ([`attend_and_route`]), and
//! [`Selection::attn`] materialises it on request.
//!
//! `cross` is an extension of ours, not in the paper's code (docs/algorithm.md §8.7): the query
//! branch uses cross-domain attention of the selected source positions over the translation,
//! `softmax(X_src[sel] · X_tgtᵀ) · X_tgt`; when the translation equals the source it equals
//! `global`.
//!
//! Gradients (docs/algorithm.md §8.5): the attention is differentiable (the query branch reaches
//! the source features through it) unless `detach_attn`; entropies and the sort give integer
//! indices only.
use tch::{TchError, Tensor};

use super::check;
use super::global_attention::{attend_and_route, global_entropy, selected_attention};
use super::local_window::{local_attention, local_entropy, route_local, LocalLayout, Window};
use crate::autograd::NoAutocast;
use crate::error::invalid;

crate::choice_enum! {
    /// How the queries are selected and routed (the table above).
    pub enum QsMode("mode") {
        Global = "global",
        Local = "local",
        LocalGlobal = "local_global",
        Cross = "cross",
    }
}

/// The result of selecting queries on the source features.
pub struct Selection {
    pub mode: QsMode,
    /// Selected raster positions per image, lowest entropy first: `B × N` (int64).
    pub indices: Tensor,
    /// The source features `B × P × C` the attention is computed from (a view of the map,
    /// detached when the selection was made with `detach_attn`).
    pub source: Tensor,
    /// The window attention `B × N × k²` (mode `local` only).
    pub local_attn: Option<Tensor>,
    pub height: i64,
    pub width: i64,
    pub window: i64,
    pub layout: LocalLayout,
}

impl Selection {
    /// The reduced attention, differentiable w.r.t. the source features: `B × N × P`
    /// (`softmax(X[sel] Xᵀ)`, global, local_global, cross) or `B × N × k²` (local).
    pub fn attn(&self) -> Result<Tensor, TchError> {
        match &self.local_attn {
            Some(a) => Ok(a.shallow_clone()),
            None => selected_attention(&self.source, &self.indices),
        }
    }

    fn window(&self) -> Result<Window, TchError> {
        Window::new(self.height, self.width, self.window, self.layout)
    }
}

/// `B × C × H × W` → `B × P × C` (raster order `l = h·W + w`), with the shape.
fn flatten(what: &str, feat: &Tensor) -> Result<(Tensor, [i64; 4]), TchError> {
    check::rank(what, feat, 4, "(B, C, H, W)")?;
    check::supported_device(what, feat)?;
    check::compute_kind(what, feat)?;
    let s = feat.size();
    let shape = [s[0], s[1], s[2], s[3]];
    if shape.iter().any(|&d| d == 0) {
        return Err(invalid(format!("{what} must not be empty, got shape {s:?}")));
    }
    // A strided view (no copy): the ops' matrix products read it in place, and the gradient
    // flows back through the view to the map.
    Ok((feat.flatten(2, 3).transpose(1, 2), shape))
}

/// Which attention the entropy of [`qs_entropy`] is computed on.
pub enum EntropyOf {
    Global,
    Local(LocalLayout),
}

/// Row entropies `B × P` of the global (`softmax(X Xᵀ)`) or local (window) attention, fp32
/// (fp64 for fp64 input), with the reference's `φ(0) = 0`. No gradient.
pub fn qs_entropy(feat: &Tensor, of: EntropyOf, window: i64) -> Result<Tensor, TchError> {
    let _no_autocast = NoAutocast::new();
    let (x, [_, _, h, w]) = flatten("feat", feat)?;
    let x = x.to_kind(check::compute_kind("feat", feat)?);
    Ok(match of {
        EntropyOf::Global => global_entropy(&x),
        EntropyOf::Local(layout) => local_entropy(&x, &Window::new(h, w, window, layout)?),
    })
}

/// The `n` positions of lowest entropy per image, ties to the lower index (stable sort).
fn lowest(entropy: &Tensor, n: i64) -> Tensor {
    let (_, order) = entropy.sort_stable(true, 1, false);
    order.narrow(1, 0, n).contiguous()
}

/// Selects `num_patches` queries per image on the source features `feat` (`B × C × H × W`).
pub fn qs_select(
    feat: &Tensor,
    num_patches: i64,
    mode: QsMode,
    window: i64,
    layout: LocalLayout,
    detach_attn: bool,
) -> Result<Selection, TchError> {
    let _no_autocast = NoAutocast::new();
    let (x, [_, _, h, w]) = flatten("feat", feat)?;
    let p = h * w;
    if num_patches < 1 || num_patches > p {
        return Err(invalid(format!(
            "num_patches must be in 1..={p} (the H·W = {h}·{w} positions of the feature map), got {num_patches}"
        )));
    }
    let kind = check::compute_kind("feat", feat)?;
    let win = Window::new(h, w, window, layout)?;
    let indices = {
        let x = x.to_kind(kind);
        let entropy = match mode {
            QsMode::Global | QsMode::Cross => global_entropy(&x),
            QsMode::Local | QsMode::LocalGlobal => local_entropy(&x, &win),
        };
        lowest(&entropy, num_patches)
    };
    let source = if detach_attn { x.detach() } else { x };
    let local_attn = match mode {
        QsMode::Local => Some(local_attention(&source, &indices, win)?),
        _ => None,
    };
    Ok(Selection { mode, indices, source, local_attn, height: h, width: w, window, layout })
}

/// Checks that `feat` (`B × C × H × W`) can be routed with `sel` and flattens it.
fn flatten_for(feat: &Tensor, sel: &Selection) -> Result<Tensor, TchError> {
    let (y, [b, _, h, w]) = flatten("feat", feat)?;
    let sel_b = sel.indices.size()[0];
    if b != sel_b || h != sel.height || w != sel.width {
        return Err(invalid(format!(
            "feat has batch {b} and map {h}×{w}, but the selection was made on batch {sel_b} with map {}×{}",
            sel.height, sel.width
        )));
    }
    check::same_device("feat", feat, "the selection", &sel.indices)?;
    Ok(y)
}

/// Routes `feat` (source or translation, `B × C × H × W`) with the selection: `B × N × C`.
pub fn qs_route(feat: &Tensor, sel: &Selection) -> Result<Tensor, TchError> {
    let y = flatten_for(feat, sel)?;
    match &sel.local_attn {
        Some(a) => route_local(a, &y, &sel.indices, sel.window()?),
        None => attend_and_route(&sel.source, &sel.indices, None, &y),
    }
}

/// The cross-domain query branch (mode `cross`): `softmax(X_src[sel] · X_tgtᵀ) · X_tgt`,
/// `B × N × C`, for the translated features `feat_tgt`.
pub fn qs_cross_route(feat_tgt: &Tensor, sel: &Selection) -> Result<Tensor, TchError> {
    if sel.mode != QsMode::Cross {
        return Err(invalid(format!("qs_cross_route needs a selection made with mode 'cross', got {:?}", sel.mode)));
    }
    let y = flatten_for(feat_tgt, sel)?;
    if y.size()[2] != sel.source.size()[2] {
        return Err(invalid(format!(
            "feat_tgt has {} channels but the source features have {}",
            y.size()[2],
            sel.source.size()[2]
        )));
    }
    check::same_kind("feat_tgt", &y, "the source features", &sel.source)?;
    attend_and_route(&sel.source, &sel.indices, Some(&y), &y)
}
