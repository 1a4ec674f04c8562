//! netF (docs/algorithm.md §7): per tapped feature map ("slot" s), pick N rows, project them
//! with the slot's MLP `Linear(C_s → nc) → ReLU → Linear(nc → nc)` (`mlp_{s}.0`, `mlp_{s}.2`)
//! and L2-normalise each row, `v / (‖v‖₂ + 1e-7)`. Python's `qs_attn.nn.PatchSampleF` is this
//! projector.
//!
//! * Random slots (CUT, docs/algorithm.md §7.2): rows at random raster positions, the first
//!   `min(N, P)` of a random permutation, shared by the batch (reference) or drawn per image; the target call
//!   reuses the positions. Slot 0 samples whatever map it gets (the reflection-padded image,
//!   docs/algorithm.md Q19).
//! * QS slots (docs/algorithm.md §8): `ops::qs_select` on the source map (per image, lowest
//!   attention entropy), rows `A_QS · X_src` (keys); the target call routes the translated map with the same
//!   selection, `A_QS · X_tgt` (queries), or in mode `cross` `softmax(X_src[sel] X_tgtᵀ) X_tgt`.
//!
//! The MLPs are built eagerly from the channel list (docs/algorithm.md Q16), so weights load
//! before the first call; initialise them with `init::init_weights` (docs/algorithm.md §3.1).
use tch::{nn, Kind, TchError, Tensor};

use super::is_channels_last;
use super::l2_normalize::l2_normalize_rows;
use crate::device::to_device_async;
use crate::error::invalid;
use crate::ops::{self, LocalLayout, PatchSampler, QsMode, Selection};

/// Added to the row norm before dividing (the reference's L2 normalisation).
const NORM_EPS: f64 = 1e-7;

#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    /// Projection width (`netF_nc`, 256).
    pub nc: i64,
    pub use_mlp: bool,
    /// QS-Attn mode of the `qs_slots`; `None` = CUT, every slot random.
    pub mode: Option<QsMode>,
    /// Slots that use QS-Attn (the reference: 3 and 4, the last two of five taps).
    pub qs_slots: Vec<usize>,
    /// Local window side (7).
    pub window: i64,
    pub layout: LocalLayout,
    /// Random slots: draw ids per image instead of sharing them across the batch.
    pub per_image_ids: bool,
    /// Cut the gradient through the QS attention (ablation; off in the reference).
    pub detach_attn: bool,
}

/// What a source call sampled in one slot, for the target call.
pub enum SlotSample {
    /// Random positions: `(N,)` shared by the batch or `(B, N)` per image, int64, on the
    /// features' device.
    Random {
        ids: Tensor,
        /// H·W of the source map the ids were validated against.
        positions: i64,
    },
    /// The QS-Attn selection made on the source features.
    Qs(Selection),
}

/// `Linear(C → nc) → ReLU → Linear(nc → nc)`.
struct Mlp {
    first: nn::Linear,
    second: nn::Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_linear(&self.first.ws, self.first.bs.as_ref())?.f_relu()?.f_linear(&self.second.ws, self.second.bs.as_ref())
    }
}

pub struct Projector {
    channels: Vec<i64>,
    /// One per slot when `use_mlp`, else empty.
    mlps: Vec<Mlp>,
    cfg: ProjectorConfig,
}

/// The first slot that uses QS-Attn when none are named: with the reference's five taps, the
/// last two (docs/algorithm.md Q4).
pub const FIRST_QS_SLOT: usize = 3;

/// The QS-Attn slots of `num_slots` tapped maps when none are named.
pub fn default_qs_slots(num_slots: usize) -> Vec<usize> {
    (FIRST_QS_SLOT..num_slots).collect()
}

impl Projector {
    /// A projector whose MLPs are the given tensors (shared, not copied): `state` holds
    /// `mlp_<s>.0.weight|bias` and `mlp_<s>.2.weight|bias` for every slot when `cfg.use_mlp`.
    pub fn with_weights(channels: &[i64], state: &[(String, Tensor)], cfg: &ProjectorConfig) -> Result<Self, TchError> {
        let get = |name: String| -> Result<Tensor, TchError> {
            state
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| invalid(format!("the projector's state has no '{name}'")))
        };
        let linear = |s: usize, i: usize| -> Result<nn::Linear, TchError> {
            Ok(nn::Linear { ws: get(format!("mlp_{s}.{i}.weight"))?, bs: Some(get(format!("mlp_{s}.{i}.bias"))?) })
        };
        let mlps = if cfg.use_mlp {
            (0..channels.len())
                .map(|s| Ok(Mlp { first: linear(s, 0)?, second: linear(s, 2)? }))
                .collect::<Result<_, TchError>>()?
        } else {
            Vec::new()
        };
        Ok(Projector { channels: channels.to_vec(), mlps, cfg: cfg.clone() })
    }

    /// One slot per entry of `channels` (the tapped maps' channel counts, e.g. 3, 128, 256,
    /// 256, 256).
    pub fn new(p: &nn::Path, channels: &[i64], cfg: &ProjectorConfig) -> Self {
        let mlps = if cfg.use_mlp {
            channels
                .iter()
                .enumerate()
                .map(|(s, &c)| {
                    let mlp = p / format!("mlp_{s}");
                    Mlp {
                        first: nn::linear(&mlp / 0, c, cfg.nc, Default::default()),
                        second: nn::linear(&mlp / 2, cfg.nc, cfg.nc, Default::default()),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Projector { channels: channels.to_vec(), mlps, cfg: cfg.clone() }
    }

    /// Source call on the maps `feats` (`B × C_s × H_s × W_s`): samples `num_patches` rows per
    /// image and slot (random slots: `ids[s]` when given, else drawn with `sampler`; QS slots:
    /// selected on these maps). Returns per slot the projected, L2-normalised rows
    /// (`(B·N) × nc`, or `× C_s` without MLP), image-major, and what was sampled.
    pub fn sample_source(
        &self,
        feats: &[Tensor],
        num_patches: i64,
        sampler: &mut PatchSampler,
        ids: Option<&[Option<Tensor>]>,
    ) -> Result<(Vec<Tensor>, Vec<SlotSample>), TchError> {
        let slot_ids = self.slot_ids(feats, num_patches, sampler, ids)?;
        self.sample_source_at(feats, num_patches, &slot_ids)
    }

    /// The random slots' patch ids for a source call on `feats` (`None` at the QS slots):
    /// `ids[s]` when given (checked against the map), else drawn with `sampler`, slot by slot;
    /// on the maps' device.
    pub fn slot_ids(
        &self,
        feats: &[Tensor],
        num_patches: i64,
        sampler: &mut PatchSampler,
        ids: Option<&[Option<Tensor>]>,
    ) -> Result<Vec<Option<Tensor>>, TchError> {
        self.check_maps(feats)?;
        if num_patches < 1 {
            return Err(invalid(format!("num_patches must be >= 1, got {num_patches}")));
        }
        if let Some(ids) = ids {
            if ids.len() != feats.len() {
                return Err(invalid(format!("ids has {} entries for {} feature maps", ids.len(), feats.len())));
            }
        }
        let mut out = Vec::with_capacity(feats.len());
        for (s, feat) in feats.iter().enumerate() {
            if self.cfg.mode.is_some() && self.is_qs_slot(s) {
                out.push(None);
                continue;
            }
            let (b, _, h, w) = feat.size4()?;
            out.push(Some(match ids.and_then(|ids| ids[s].as_ref()) {
                Some(t) => {
                    check_ids(s, t, b, h * w)?;
                    to_device_async(t, feat.device())
                }
                None => sampler.sample(h * w, num_patches, b, self.cfg.per_image_ids, feat.device())?,
            }));
        }
        Ok(out)
    }

    /// [`Projector::sample_source`] with the random slots' ids already resolved
    /// ([`Projector::slot_ids`]; trusted: not checked again).
    pub fn sample_source_at(
        &self,
        feats: &[Tensor],
        num_patches: i64,
        slot_ids: &[Option<Tensor>],
    ) -> Result<(Vec<Tensor>, Vec<SlotSample>), TchError> {
        self.check_maps(feats)?;
        let mut rows = Vec::with_capacity(feats.len());
        let mut samples = Vec::with_capacity(feats.len());
        for (s, (feat, ids)) in feats.iter().zip(slot_ids).enumerate() {
            let (_, _, h, w) = feat.size4()?;
            let (slot_rows, sample) = match (self.cfg.mode.filter(|_| self.is_qs_slot(s)), ids) {
                (Some(mode), _) => {
                    // The reference slices the first N of the sorted rows, so P < N takes all P
                    // rows; its local mode fails instead (docs/algorithm.md Q9), and qs_select
                    // rejects N > P there.
                    let n = if mode == QsMode::Local { num_patches } else { num_patches.min(h * w) };
                    let sel = ops::qs_select(feat, n, mode, self.cfg.window, self.cfg.layout, self.cfg.detach_attn)?;
                    (ops::qs_route(feat, &sel)?.f_flatten(0, 1)?, SlotSample::Qs(sel))
                }
                (None, Some(ids)) => {
                    (gather_rows(feat, ids)?, SlotSample::Random { ids: ids.shallow_clone(), positions: h * w })
                }
                (None, None) => return Err(invalid(format!("slot {s} is a random slot but has no patch ids"))),
            };
            rows.push(self.project(s, &slot_rows)?);
            samples.push(sample);
        }
        Ok((rows, samples))
    }

    /// Several NCE terms in one pass (the trainer's L_NCE(x, G(x)) and L_NCE(y, G(y))): the
    /// source maps `feat_k` and translated maps `feat_q` hold the terms' images one after the
    /// other (`terms.images` each). Each term's ids are resolved as its own source call would
    /// (`ids[t]` or drawn, in term order), shared ids are repeated per image, and one source and
    /// one target call run on all the images: selection, attention and negatives are per image,
    /// so every term's rows equal those of its own calls. Returns per term the keys and queries
    /// per slot.
    pub fn keys_and_queries_of_terms(
        &self,
        terms: &StackedTerms,
        num_patches: i64,
        sampler: &mut PatchSampler,
    ) -> Result<Vec<KeysAndQueries>, TchError> {
        let StackedTerms { feat_k, feat_q, images, ids } = *terms;
        let mut per_term = Vec::with_capacity(ids.len());
        for (t, term_ids) in ids.iter().enumerate() {
            let slot_ids = self.slot_ids(&terms.term_maps(feat_k, t), num_patches, sampler, *term_ids)?;
            // per image: (N,) shared by the term's images → (images, N)
            let per_image = |t: Tensor| if t.dim() == 1 { t.unsqueeze(0).expand([images, -1], false) } else { t };
            per_term.push(slot_ids.into_iter().map(|t| t.map(per_image)).collect::<Vec<_>>());
        }
        let slot_ids: Vec<Option<Tensor>> = (0..feat_k.len())
            .map(|s| {
                let parts: Option<Vec<&Tensor>> = per_term.iter().map(|ids| ids[s].as_ref()).collect();
                parts.map(|parts| Tensor::cat(&parts, 0))
            })
            .collect();
        // Keys and queries go through the MLPs separately, as in the reference: a row of zero
        // features projects to the zero vector while the biases are 0 (at initialisation),
        // and its L2 normalisation has no gradient there (0/0). No backward pass reaches the
        // keys (PatchNCE detaches them), so such key rows are harmless only while they stay
        // out of the queries' graph.
        let (keys, samples) = self.sample_source_at(feat_k, num_patches, &slot_ids)?;
        let queries = self.sample_target(feat_q, &samples)?;
        // each slot's rows are image-major: term t's are the t-th of len(ids) equal parts
        // (split, whose backward joins the parts' gradients in one op, where a narrow per part
        // would zero-fill a whole-slot gradient for each and add them up)
        let terms = ids.len();
        let parts = |rows: &[Tensor]| -> Vec<Vec<Tensor>> {
            rows.iter().map(|r| r.split(r.size()[0] / terms as i64, 0)).collect()
        };
        let (key_parts, query_parts) = (parts(&keys), parts(&queries));
        let term_rows =
            |parts: &[Vec<Tensor>], t: usize| -> Vec<Tensor> { parts.iter().map(|p| p[t].shallow_clone()).collect() };
        Ok((0..terms).map(|t| (term_rows(&key_parts, t), term_rows(&query_parts, t))).collect())
    }

    /// Target call on the translated maps: the source call's positions (random slots) or
    /// selection (QS slots) applied to `feats`, through the same MLPs.
    pub fn sample_target(&self, feats: &[Tensor], samples: &[SlotSample]) -> Result<Vec<Tensor>, TchError> {
        self.check_maps(feats)?;
        if samples.len() != feats.len() {
            return Err(invalid(format!("{} samples for {} feature maps", samples.len(), feats.len())));
        }
        feats
            .iter()
            .zip(samples)
            .enumerate()
            .map(|(s, (feat, sample))| {
                let slot_rows = match sample {
                    SlotSample::Random { ids, positions } => {
                        // The ids were checked against the source map; a target map of the same
                        // size needs no second (host-synchronising) value check.
                        let (_, _, h, w) = feat.size4()?;
                        if h * w != *positions {
                            return Err(invalid(format!(
                                "slot {s}: the target map has {} positions but the source map had {positions}",
                                h * w
                            )));
                        }
                        gather_rows(feat, ids)?
                    }
                    SlotSample::Qs(sel) if sel.mode == QsMode::Cross => {
                        ops::qs_cross_route(feat, sel)?.f_flatten(0, 1)?
                    }
                    SlotSample::Qs(sel) => ops::qs_route(feat, sel)?.f_flatten(0, 1)?,
                };
                self.project(s, &slot_rows)
            })
            .collect()
    }

    fn is_qs_slot(&self, s: usize) -> bool {
        self.cfg.qs_slots.contains(&s)
    }

    /// Checks the maps against the slot list: one `B × C_s × H × W` map per slot, same batch.
    fn check_maps(&self, feats: &[Tensor]) -> Result<(), TchError> {
        if feats.len() != self.channels.len() {
            return Err(invalid(format!(
                "the projector has {} slots but got {} feature maps",
                self.channels.len(),
                feats.len()
            )));
        }
        if self.cfg.mode.is_some() {
            if let Some(&s) = self.cfg.qs_slots.iter().find(|&&s| s >= feats.len()) {
                return Err(invalid(format!("QS slot {s} does not exist: there are {} slots", feats.len())));
            }
        }
        let mut batch = None;
        for (s, (feat, &c)) in feats.iter().zip(&self.channels).enumerate() {
            let size = feat.size();
            if size.len() != 4 || size[1] != c || size[0] != *batch.get_or_insert(size[0]) || size.contains(&0) {
                return Err(invalid(format!(
                    "feature map {s} must be a non-empty (B, {c}, H, W) tensor with the batch of map 0, got shape {size:?}"
                )));
            }
        }
        Ok(())
    }

    /// The slot's MLP (if any), then `v / (‖v‖₂ + 1e-7)` per row.
    fn project(&self, s: usize, rows: &Tensor) -> Result<Tensor, TchError> {
        let v = match self.mlps.get(s) {
            Some(mlp) => mlp.forward(rows)?,
            None => rows.shallow_clone(),
        };
        l2_normalize_rows(&v, NORM_EPS)
    }
}

/// Several NCE terms' maps with their images stacked one after the other: term t holds
/// images `t·images .. (t+1)·images`, and `ids[t]` injects its random patch ids (one entry per
/// term).
#[derive(Clone, Copy)]
pub struct StackedTerms<'a> {
    /// Source maps (the keys' side), one per slot.
    pub feat_k: &'a [Tensor],
    /// Translated maps (the queries' side), one per slot.
    pub feat_q: &'a [Tensor],
    /// Images per term.
    pub images: i64,
    pub ids: &'a [Option<&'a [Option<Tensor>]>],
}

impl StackedTerms<'_> {
    /// Term `t`'s images of every map in `maps` (views).
    pub fn term_maps(&self, maps: &[Tensor], t: usize) -> Vec<Tensor> {
        maps.iter().map(|f| f.narrow(0, t as i64 * self.images, self.images)).collect()
    }
}

/// Per slot, the keys and the queries of one NCE term.
pub type KeysAndQueries = (Vec<Tensor>, Vec<Tensor>);

/// Checks sampled ids: int64, `(N,)` or `(B, N)`, values in `0..P`.
fn check_ids(slot: usize, ids: &Tensor, batch: i64, positions: i64) -> Result<(), TchError> {
    let size = ids.size();
    let shape_ok = match size.as_slice() {
        [n] => *n > 0,
        [b, n] => *b == batch && *n > 0,
        _ => false,
    };
    if ids.kind() != Kind::Int64 || !shape_ok {
        return Err(invalid(format!(
            "patch ids of slot {slot} must be int64 of shape (N,) or ({batch}, N), got {:?} {size:?}",
            ids.kind()
        )));
    }
    let (lo, hi) = (ids.f_min()?.f_int64_value(&[])?, ids.f_max()?.f_int64_value(&[])?);
    if lo < 0 || hi >= positions {
        return Err(invalid(format!(
            "patch ids of slot {slot} must lie in 0..{positions} (the map's H·W), got values in {lo}..={hi}"
        )));
    }
    Ok(())
}

/// Rows of `feat` (`B × C × H × W`) at raster positions `ids` (`(N,)` shared or `(B, N)`),
/// stacked image-major: `(B·N) × C`, row `b·N + n` = `feat[b, :, ids[n]]`.
///
/// Picked along the axis that is contiguous in memory, so the gradient (scattered into zeros
/// of the picked-from view's shape) comes back in `feat`'s layout: NCHW for an NCHW map, NHWC
/// for a channels-last one (whose rows are read as contiguous runs of C values).
fn gather_rows(feat: &Tensor, ids: &Tensor) -> Result<Tensor, TchError> {
    let (b, c, _, _) = feat.size4()?;
    if is_channels_last(feat) {
        let rows = feat.f_flatten(2, 3)?.f_transpose(1, 2)?; // B × P × C (a contiguous view)
        let picked = if ids.dim() == 1 {
            rows.f_index_select(1, ids)?
        } else {
            let n = ids.size()[1];
            rows.f_gather(1, &ids.f_unsqueeze(2)?.f_expand([b, n, c], false)?, false)?
        };
        return picked.f_reshape([-1, c]);
    }
    let flat = feat.f_flatten(2, 3)?; // B × C × P (a view)
    let picked = if ids.dim() == 1 {
        flat.f_index_select(2, ids)?
    } else {
        let n = ids.size()[1];
        flat.f_gather(2, &ids.f_unsqueeze(1)?.f_expand([b, c, n], false)?, false)?
    };
    picked.f_transpose(1, 2)?.f_reshape([-1, c])
}
