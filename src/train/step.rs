//! One training iteration, as CUT's `optimize_parameters` (docs/algorithm.md §10): the
//! generator translates the batch, then the discriminator step on the detached translation,
//! then the generator + projector step on
//! `λ_GAN·L_GAN + ½(L_NCE(x, G(x)) + L_NCE(y, G(y)))`, each followed by its Adam update.
//!
//! The source features of the NCE terms are the taps of the generator's own pass on `[x; y]`
//! instead of two more encoder passes (the same values per image, docs/algorithm.md Q11).
use tch::{Kind, TchError, Tensor};

use super::adam::Adam;
use super::precision::{channels_last, AutocastCacheHold, Bf16Autocast};
use super::trainer::{Trainer, Visuals};
use crate::autograd::NoAutocast;
use crate::device::to_device_async;
use crate::error::invalid;
use crate::losses::{gradient_penalty, GanMode};
use crate::nets::projector::StackedTerms;
use crate::ops::check;

/// The loss terms of one iteration (scalars, still attached to their graphs until backward).
pub struct StepLosses {
    pub d: Tensor,
    pub d_real: Tensor,
    pub d_fake: Tensor,
    pub gp: Option<Tensor>,
    pub g_gan: Tensor,
    pub nce: Option<Tensor>,
    pub nce_y: Option<Tensor>,
    pub g: Tensor,
}

impl StepLosses {
    /// Named values (reads them from the device: call only when logging).
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("D", self.d.double_value(&[])),
            ("D_real", self.d_real.double_value(&[])),
            ("D_fake", self.d_fake.double_value(&[])),
            ("G_GAN", self.g_gan.double_value(&[])),
            ("G", self.g.double_value(&[])),
        ];
        for (name, t) in [("GP", &self.gp), ("NCE", &self.nce), ("NCE_Y", &self.nce_y)] {
            if let Some(t) = t {
                out.push((name, t.double_value(&[])));
            }
        }
        out
    }
}

/// Random patch ids to use instead of drawing them (tests): per NCE term, per slot.
pub struct InjectedIds<'a> {
    pub x: &'a [Option<Tensor>],
    pub y: &'a [Option<Tensor>],
}

/// The generator's pass on a batch: what both updates use.
struct Translation {
    /// `x`, or `[x; y]` when the identity term L_NCE(y, G(y)) is on.
    sources: Tensor,
    /// Images per domain (B).
    images: i64,
    /// The sources went through G mirrored (flip equivariance).
    flipped: bool,
    /// G of the (possibly mirrored) sources.
    fake: Tensor,
    /// G(x).
    fake_b: Tensor,
    /// E(x) [and E(y)], the NCE terms' source features (`None` without NCE).
    source_feats: Option<Vec<Tensor>>,
}

/// The discriminator's loss terms.
struct DiscriminatorLosses {
    d: Tensor,
    d_real: Tensor,
    d_fake: Tensor,
    gp: Option<Tensor>,
}

/// The generator's loss terms.
struct GeneratorLosses {
    g_gan: Tensor,
    nce: Option<Tensor>,
    nce_y: Option<Tensor>,
    g: Tensor,
}

impl Trainer {
    /// One training iteration.
    pub fn step(&mut self, a: &Tensor, b: &Tensor) -> Result<StepLosses, TchError> {
        self.step_with(a, b, true, None)
    }

    /// One iteration on a batch (`a`: source domain, `b`: target domain, `B × 3 × H × W` in
    /// [−1, 1]). With `update = false` the gradients are computed but no parameter changes
    /// (for comparisons with a reference); `ids` injects the random patch ids.
    pub fn step_with(
        &mut self,
        a: &Tensor,
        b: &Tensor,
        update: bool,
        ids: Option<InjectedIds>,
    ) -> Result<StepLosses, TchError> {
        let (a, b) = self.on_device(a, b)?;
        // Forward passes in the configured precision; each backward runs outside the scope.
        // G's weights are cast once for both of G's scopes (its forward pass, then the encoder
        // on the translation): nothing updates G in between, and D, which its step updates in
        // between, is frozen in the second scope, so its casts are neither cached nor reused.
        let _weight_casts = AutocastCacheHold::new(self.cfg.precision);
        let scope = self.autocast();
        let pass = self.translate(&a, &b)?;
        let dl = self.discriminator_step(&pass, &b, scope, update)?;
        let gl = self.generator_step(&pass, ids.as_ref(), update)?;
        let images = pass.images;
        let idt_b = (pass.fake.size()[0] > images).then(|| pass.fake.narrow(0, images, images).detach());
        self.visuals = Some(Visuals { real_a: a.detach(), fake_b: pass.fake_b.detach(), real_b: b.detach(), idt_b });
        let DiscriminatorLosses { d, d_real, d_fake, gp } = dl;
        let GeneratorLosses { g_gan, nce, nce_y, g } = gl;
        Ok(StepLosses { d, d_real, d_fake, gp, g_gan, nce, nce_y, g })
    }

    /// The batch checked and on the training device (channels-last when configured).
    fn on_device(&self, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor), TchError> {
        check_batch_pair(a, b)?;
        let (a, b) = (to_device_async(a, self.device), to_device_async(b, self.device));
        if self.cfg.channels_last {
            return Ok((channels_last(&a)?, channels_last(&b)?));
        }
        Ok((a, b))
    }

    /// An autocast scope for the forward passes (nothing in float32).
    fn autocast(&self) -> Option<Bf16Autocast> {
        Bf16Autocast::scope(self.cfg.precision, self.device)
    }

    /// G on the sources (`x`, or `[x; y]` with the identity term), mirrored on a flip coin,
    /// and the NCE terms' source features.
    fn translate(&mut self, a: &Tensor, b: &Tensor) -> Result<Translation, TchError> {
        let images = a.size()[0];
        let sources =
            if self.cfg.nce_idt && self.cfg.lambda_nce > 0.0 { Tensor::cat(&[a, b], 0) } else { a.shallow_clone() };
        let flipped = self.cfg.flip_equivariance && self.coins.below(2) == 1;
        let real = if flipped { sources.flip([3]) } else { sources.shallow_clone() };
        let (fake, real_taps) = self.nets.g.forward_with_taps(&real, &self.cfg.nce_layers)?;
        if fake.size() != real.size() {
            return Err(invalid(format!(
                "the generator's translation must have the shape of its input {:?}, got {:?}",
                real.size(),
                fake.size()
            )));
        }
        // E(x) [and E(y)]: the taps of the generator's own pass (instance norm is per image,
        // so no extra encoder pass); with a flipped input they are not, and the sources are
        // encoded unflipped, in one pass.
        let source_feats = match (self.cfg.lambda_nce > 0.0, flipped) {
            (false, _) => None,
            (true, false) => Some(real_taps),
            (true, true) => Some(self.nets.g.encode(&sources, &self.cfg.nce_layers)?),
        };
        let fake_b = fake.narrow(0, 0, images);
        Ok(Translation { sources, images, flipped, fake, fake_b, source_feats })
    }

    /// L_D = ½[L(D(G(x)), fake) + L(D(y), real)] (+ penalty), one D pass on both (instance
    /// norm is per image), in the forward `scope` opened before G's pass; then backward and
    /// D's update.
    fn discriminator_step(
        &mut self,
        pass: &Translation,
        b: &Tensor,
        scope: Option<Bf16Autocast>,
        update: bool,
    ) -> Result<DiscriminatorLosses, TchError> {
        let images = pass.images;
        self.opt_d.set_requires_grad(true);
        self.opt_d.zero_grad();
        let pred = self.nets.d.forward(&self.extras.d_input(&Tensor::cat(&[&pass.fake_b.detach(), b], 0), true)?)?;
        let d_fake = self.gan.loss(&pred.narrow(0, 0, images), false)?;
        let d_real = self.gan.loss(&pred.narrow(0, images, images), true)?;
        let mut d = (&d_fake + &d_real) * 0.5;
        let gp = if self.cfg.gan_mode == GanMode::Wgangp && self.cfg.lambda_gp > 0.0 {
            let d_net = &self.nets.d;
            let gp = gradient_penalty(&|x: &Tensor| d_net.forward(x), b, &pass.fake_b.detach(), self.cfg.lambda_gp)?;
            d = d + &gp;
            Some(gp)
        } else {
            None
        };
        drop(scope);
        d.f_backward()?;
        if update {
            self.sync_gradients("D", &self.opt_d)?;
            let terms =
                [("D", &d), ("D_real", &d_real), ("D_fake", &d_fake)].into_iter().chain(gp.as_ref().map(|t| ("GP", t)));
            if self.guard.admit(self.total_iters + 1, terms, &[("D", Some(&self.opt_d))])? {
                self.opt_d.step()?;
            }
        }
        Ok(DiscriminatorLosses { d, d_real, d_fake, gp })
    }

    /// With D frozen: λ_GAN·L(D(G(x)), real) + the NCE terms; then backward and the updates of
    /// G and F.
    fn generator_step(
        &mut self,
        pass: &Translation,
        ids: Option<&InjectedIds>,
        update: bool,
    ) -> Result<GeneratorLosses, TchError> {
        self.opt_d.set_requires_grad(false);
        self.opt_g.zero_grad();
        if let Some(opt) = self.opt_f.as_mut() {
            opt.zero_grad();
        }
        let scope = self.autocast();
        let g_gan = self.gan.loss(&self.nets.d.forward(&self.extras.d_input(&pass.fake_b, false)?)?, true)?
            * self.cfg.lambda_gan;
        let (nce, nce_y) = match &pass.source_feats {
            Some(feat_k) => self.nce_terms(pass, feat_k, ids)?,
            None => (None, None),
        };
        let g = match (&nce, &nce_y) {
            (Some(n), Some(ny)) => &g_gan + (n + ny) * 0.5,
            (Some(n), None) => &g_gan + n,
            _ => g_gan.shallow_clone(),
        };
        drop(scope);
        g.f_backward()?;
        if update {
            // F is averaged before G's update too, so that every process's guard sees the same
            // gradients and makes the same decision.
            self.sync_gradients("G", &self.opt_g)?;
            if let Some(opt) = self.opt_f.as_ref() {
                self.sync_gradients("F", opt)?;
            }
            let terms = [("G_GAN", &g_gan), ("G", &g)].into_iter().chain(nce.as_ref().map(|t| ("NCE", t)));
            let terms = terms.chain(nce_y.as_ref().map(|t| ("NCE_Y", t)));
            if self.guard.admit(self.total_iters + 1, terms, &[("G", Some(&self.opt_g)), ("F", self.opt_f.as_ref())])? {
                self.opt_g.step()?;
                self.extras.after_g_step(&self.nets.g.parameters()?)?;
                if let Some(opt) = self.opt_f.as_mut() {
                    opt.step()?;
                }
            }
        }
        self.opt_d.set_requires_grad(true);
        Ok(GeneratorLosses { g_gan, nce, nce_y, g })
    }

    /// L_NCE(x, G(x)) and, when the batch holds `[x; y]`, L_NCE(y, G(y)): E(G(x)) and E(G(y))
    /// in one encoder pass over the whole translation, unflipped back to the sources'
    /// orientation; F and the NCE loss see both terms at once.
    fn nce_terms(
        &mut self,
        pass: &Translation,
        feat_k: &[Tensor],
        ids: Option<&InjectedIds>,
    ) -> Result<(Option<Tensor>, Option<Tensor>), TchError> {
        let mut fake_taps = self.nets.g.encode(&pass.fake, &self.cfg.nce_layers)?;
        if pass.flipped {
            fake_taps = fake_taps.iter().map(|f| f.flip([3])).collect();
        }
        let terms = (pass.sources.size()[0] / pass.images) as usize;
        let term_ids: Vec<Option<&[Option<Tensor>]>> = match ids {
            Some(i) => vec![Some(i.x), Some(i.y)],
            None => vec![None, None],
        };
        let mut losses = self.nce_losses(feat_k, &fake_taps, pass.images, &term_ids[..terms])?.into_iter();
        Ok((losses.next(), losses.next()))
    }

    /// Per NCE term t, `L_NCE(src_t, tgt_t) = (1/L) Σ_s λ_NCE · L_nce(q_s, k_s)` over the L
    /// tapped layers (docs/algorithm.md §9): positions and attention chosen on `feat_k` =
    /// E(src_t), applied to `feat_q` = E(tgt_t). The terms' images are stacked in `feat_k` /
    /// `feat_q` (`images` each) and go through F together; `ids[t]` (one entry per term)
    /// injects a term's patch ids.
    fn nce_losses(
        &mut self,
        feat_k: &[Tensor],
        feat_q: &[Tensor],
        images: i64,
        ids: &[Option<&[Option<Tensor>]>],
    ) -> Result<Vec<Tensor>, TchError> {
        let layers = self.cfg.nce_layers.len();
        if layers == 0 {
            return Err(invalid("nce_layers is empty"));
        }
        // F and the NCE loss run in float32 whatever the precision of G and D: with the bf16
        // fast path the taps arrive in bfloat16 and are widened here (autocast stays off inside).
        let _float32 = NoAutocast::new();
        let widen = |taps: &[Tensor]| -> Vec<Tensor> {
            taps.iter()
                .map(|t| {
                    if matches!(t.kind(), Kind::BFloat16 | Kind::Half) {
                        t.to_kind(Kind::Float)
                    } else {
                        t.shallow_clone()
                    }
                })
                .collect()
        };
        let (feat_k, feat_q) = (widen(feat_k), widen(feat_q));
        let stacked = StackedTerms { feat_k: &feat_k, feat_q: &feat_q, images, ids };
        let terms = self.nets.f.keys_and_queries_of_terms(&stacked, self.cfg.num_patches, &mut self.sampler)?;
        // every (term, layer) group in one call of the loss, term-major
        let groups: Vec<(Tensor, Tensor)> =
            terms.into_iter().flat_map(|(keys, queries)| queries.into_iter().zip(keys)).collect();
        let per_group = self.nce.losses(&groups, images)?;
        // Σ_s λ·L_s / L per term
        let per_term = per_group.f_view([ids.len() as i64, layers as i64])?.f_sum_dim_intlist(1, false, None)?
            * (self.cfg.lambda_nce / layers as f64);
        Ok((0..ids.len() as i64).map(|t| per_term.get(t)).collect())
    }

    /// Averages the gradients of `opt`'s parameters across processes (distributed runs).
    fn sync_gradients(&self, net: &'static str, opt: &Adam) -> Result<(), TchError> {
        match &self.grad_sync {
            Some(sync) => sync.average(net, &opt.gradients()),
            None => Ok(()),
        }
    }
}

/// The two domains' batches of one iteration: floating-point `B × C × H × W` images of one
/// shape (D scores translations and `b` as one batch; the identity term stacks `a` and `b`),
/// on the CPU or a GPU (the step copies them to its device).
fn check_batch_pair(a: &Tensor, b: &Tensor) -> Result<(), TchError> {
    for (name, t) in [("a", a), ("b", b)] {
        check::supported_device(name, t)?;
        if t.dim() != 4 || !t.is_floating_point() {
            return Err(invalid(format!(
                "{name} must be a floating-point (B, C, H, W) batch of images, got shape {:?} of {:?}",
                t.size(),
                t.kind()
            )));
        }
    }
    if a.size() != b.size() {
        return Err(invalid(format!("a and b must have the same shape, got {:?} and {:?}", a.size(), b.size())));
    }
    Ok(())
}
