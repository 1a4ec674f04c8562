//! The CUT / QS-Attn training loop (spec §10, §11): per iteration a discriminator step on the
//! detached translation, then a generator + projector step on
//! `λ_GAN·L_GAN + ½(L_NCE(x, G(x)) + L_NCE(y, G(y)))`, Adam, linear decay of the learning rate,
//! checkpoints that resume exactly.
//!
//! Randomness after initialisation comes only from seeded generators whose state is saved in
//! checkpoints (patch ids, flip-equivariance draws) and from the data loader, which is a pure
//! function of (seed, epoch, index): a resumed run continues bit for bit. (Exception: the
//! optional WGAN-GP penalty draws its mixing weights from torch's global generator.)
//!
//! Differences from the reference kept on purpose: the projector is built eagerly (Q16), so the
//! reference's data-dependent initialisation pass (a forward/backward whose gradients are
//! discarded, §11.4) has no effect and is skipped; the source features of the NCE terms are
//! the taps of the generator's own pass on `[x; y]` instead of two more encoder passes (the
//! same values per image, Q11); patch ids come from our own generator (Q18).
use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Device, Kind, TchError, Tensor};

use super::adam::Adam;
use super::checkpoint;
use super::config::TrainConfig;
use super::guard::{self, DivergenceGuard};
use super::precision::{channels_last, params_to_channels_last, AutocastCacheHold, Bf16Autocast, Precision};
use super::parts::{DiscriminatorPart, GanLossPart, GeneratorPart, NceLossPart, Owned, PatchNce, ProjectorPart};
use super::run::RunState;
use super::run_dir;
use crate::autograd::NoAutocast;
use crate::device::to_device_async;
use crate::error::invalid;
use crate::losses::{gradient_penalty, GanMode};
use crate::nets::discriminator::{Discriminator, DiscriminatorConfig};
use crate::nets::generator::{Generator, GeneratorConfig};
use crate::nets::init::{init_weights, InitType};
use crate::nets::projector::{Projector, ProjectorConfig, StackedTerms};
use crate::ops::{check, LocalLayout, PatchSampler, QsMode};
use crate::rng::SplitMix64;

/// The three networks, built-in or supplied by the caller.
pub struct Networks {
    pub g: Box<dyn GeneratorPart>,
    pub d: Box<dyn DiscriminatorPart>,
    pub f: Box<dyn ProjectorPart>,
}

/// Replacements for the built-in parts (`None`: the built-in one). A supplied network must
/// already be on the training device.
#[derive(Default)]
pub struct Parts {
    pub g: Option<Box<dyn GeneratorPart>>,
    pub d: Option<Box<dyn DiscriminatorPart>>,
    pub f: Option<Box<dyn ProjectorPart>>,
    pub gan_loss: Option<Box<dyn GanLossPart>>,
    pub nce_loss: Option<Box<dyn NceLossPart>>,
}

impl Parts {
    /// The names of the supplied parts ("G", "D", "F", "gan_loss", "nce_loss").
    pub fn supplied(&self) -> Vec<&'static str> {
        [
            ("G", self.g.is_some()),
            ("D", self.d.is_some()),
            ("F", self.f.is_some()),
            ("gan_loss", self.gan_loss.is_some()),
            ("nce_loss", self.nce_loss.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// A built-in network with its variables initialised (spec §3.1).
fn initialised<N>(vs: nn::VarStore, net: N, init: InitType, gain: f64) -> Result<Owned<N>, TchError> {
    init_weights(&vs, init, gain)?;
    Ok(Owned { vs, net })
}

pub fn parse_device(s: &str) -> Result<Device, TchError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Ok(Device::Cuda(i)),
            None => Err(invalid(format!("device must be 'cpu', 'cuda' or 'cuda:N', got '{other}'"))),
        },
    }
}

impl Networks {
    /// Builds G, D and F for `cfg` on `device`, initialised as spec §3.1 (seeded by the
    /// caller), each unless `parts` supplies it.
    pub fn new(cfg: &TrainConfig, device: Device, parts: &mut Parts) -> Result<Self, TchError> {
        if let Device::Cuda(_) = device {
            if !tch::Cuda::is_available() {
                return Err(invalid("device 'cuda' was requested but CUDA is not available"));
            }
        }
        let init: InitType = cfg.init_type.parse()?;
        let g: Box<dyn GeneratorPart> = match parts.g.take() {
            Some(g) => g,
            None => {
                let vs = nn::VarStore::new(device);
                let g_cfg = GeneratorConfig {
                    ngf: cfg.ngf,
                    n_blocks: cfg.n_blocks,
                    no_antialias: cfg.no_antialias,
                    no_antialias_up: cfg.no_antialias_up,
                    ..GeneratorConfig::default()
                };
                let net = Generator::new(&vs.root(), &g_cfg);
                Box::new(initialised(vs, net, init, cfg.init_gain)?)
            }
        };
        let d: Box<dyn DiscriminatorPart> = match parts.d.take() {
            Some(d) => d,
            None => {
                let vs = nn::VarStore::new(device);
                let d_cfg = DiscriminatorConfig {
                    ndf: cfg.ndf,
                    n_layers: cfg.n_layers_d,
                    no_antialias: cfg.no_antialias,
                    ..DiscriminatorConfig::default()
                };
                let net = Discriminator::new(&vs.root(), &d_cfg);
                Box::new(initialised(vs, net, init, cfg.init_gain)?)
            }
        };
        let f: Box<dyn ProjectorPart> = match parts.f.take() {
            Some(f) => f,
            None => {
                // Channels of the tapped layers, from a tiny forward (they depend on G and the taps).
                let channels: Vec<i64> = tch::no_grad(|| {
                    let probe = Tensor::zeros([1, 3, 16, 16], (Kind::Float, device));
                    g.encode(&probe, &cfg.nce_layers).map(|taps| taps.iter().map(|t| t.size()[1]).collect())
                })?;
                let vs = nn::VarStore::new(device);
                let f_cfg = ProjectorConfig {
                    nc: cfg.netf_nc,
                    use_mlp: true,
                    mode: match cfg.mode.as_str() {
                        "none" => None,
                        m => Some(m.parse::<QsMode>()?),
                    },
                    qs_slots: cfg.qs_slot_list(),
                    window: cfg.window,
                    layout: cfg.local_layout.parse::<LocalLayout>()?,
                    per_image_ids: cfg.per_image_ids,
                    detach_attn: false,
                };
                let net = Projector::new(&vs.root(), &channels, &f_cfg);
                Box::new(initialised(vs, net, init, cfg.init_gain)?)
            }
        };
        Ok(Networks { g, d, f })
    }
}

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

/// The images of the last iteration (detached), for callbacks and notebooks.
pub struct Visuals {
    pub real_a: Tensor,
    pub fake_b: Tensor,
    pub real_b: Tensor,
    /// G(y), when the identity NCE term is on.
    pub idt_b: Option<Tensor>,
}

impl Visuals {
    /// The images by name (`real_A`, `fake_B`, `real_B`, `idt_B`), float32 in the standard
    /// layout whatever the training's precision and memory format: converted here, when
    /// read, not in every training step.
    pub fn named(&self) -> Vec<(&'static str, Tensor)> {
        let image = |t: &Tensor| t.to_kind(Kind::Float).contiguous();
        let mut out = vec![("real_A", image(&self.real_a)), ("fake_B", image(&self.fake_b)), ("real_B", image(&self.real_b))];
        out.extend(self.idt_b.as_ref().map(|t| ("idt_B", image(t))));
        out
    }
}

/// Averages gradients across the processes of a data-parallel run (see `crate::python::dist`).
pub trait GradientSync: Send {
    /// Replaces each gradient of `net` ("G", "D" or "F") by its mean over the processes.
    fn average(&self, net: &'static str, grads: &[Tensor]) -> Result<(), TchError>;
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub nets: Networks,
    gan: Box<dyn GanLossPart>,
    nce: Box<dyn NceLossPart>,
    /// The parts the caller supplied (recorded in checkpoints).
    supplied: Vec<&'static str>,
    opt_g: Adam,
    opt_d: Adam,
    opt_f: Option<Adam>,
    /// Random patch ids of the CUT slots.
    sampler: PatchSampler,
    /// Flip-equivariance coins.
    coins: SplitMix64,
    gan_mode: GanMode,
    /// Autocast precision of the forward passes of G, D and F.
    precision: Precision,
    /// The epoch in progress (1-based, from `epoch_count`).
    pub epoch: i64,
    /// Batches of the current epoch already trained on.
    pub epoch_iter: usize,
    pub total_iters: u64,
    /// The data, logs and outputs of the schedule being run (opened by the first `advance`).
    pub(super) run: Option<RunState>,
    pub visuals: Option<Visuals>,
    /// Data-parallel gradient averaging; `None` in a single process.
    pub(super) grad_sync: Option<Box<dyn GradientSync>>,
    /// Whether this process writes checkpoints, logs and samples (rank 0 of a distributed run).
    pub writer: bool,
    /// `(rank, world_size)`: this process's share of the data; `(0, 1)` alone.
    pub(super) shard: (usize, usize),
    pub(super) guard: DivergenceGuard,
    /// The iteration of the checkpoint this trainer resumed from (`None`: a fresh run).
    pub(super) resumed_at: Option<u64>,
}

const FORMAT: &str = "qs_attn-checkpoint-1";

impl Trainer {
    /// A fresh run: networks initialised from `cfg.seed`.
    pub fn new(cfg: TrainConfig) -> Result<Self, TchError> {
        Self::with_parts(cfg, Parts::default())
    }

    /// A fresh run with some parts supplied by the caller (the others built-in, initialised
    /// from `cfg.seed`).
    pub fn with_parts(cfg: TrainConfig, mut parts: Parts) -> Result<Self, TchError> {
        cfg.validate()?;
        run_dir::check_name(&cfg.name)?;
        let device = parse_device(&cfg.device)?;
        let guard = DivergenceGuard::new(&cfg.on_nonfinite, device)?;
        if device.is_cuda() && cfg.cudnn_benchmark {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        tch::manual_seed(cfg.seed as i64);
        let supplied = parts.supplied();
        let nets = Networks::new(&cfg, device, &mut parts)?;
        let gan_mode: GanMode = cfg.gan_mode.parse()?;
        if cfg.lambda_nce > 0.0 && nets.f.parameters()?.is_empty() {
            // A projector that builds its layers on its first call (as the reference's does):
            // one call on the taps of a blank image creates them before the optimiser is set up.
            let mut scratch = PatchSampler::new(cfg.seed ^ 0x5EED_0003);
            tch::no_grad(|| -> Result<(), TchError> {
                let size = cfg.crop_size as i64;
                let taps = nets.g.encode(&Tensor::zeros([1, 3, size, size], (Kind::Float, device)), &cfg.nce_layers)?;
                nets.f.keys_and_queries(&taps, &taps, cfg.num_patches, &mut scratch, None).map(|_| ())
            })?;
        }
        if cfg.channels_last {
            // before the optimisers: their moments take the parameters' layout
            params_to_channels_last(&nets.g.parameters()?)?;
            params_to_channels_last(&nets.d.parameters()?)?;
        }
        let precision: Precision = cfg.precision.parse()?;
        let adam = |params| Adam::new(params, cfg.lr, cfg.beta1, cfg.beta2);
        let (opt_g, opt_d) = (adam(nets.g.parameters()?), adam(nets.d.parameters()?));
        // Q25: no projector optimiser when NCE is off.
        let opt_f = if cfg.lambda_nce > 0.0 { Some(adam(nets.f.parameters()?)) } else { None };
        Ok(Trainer {
            gan: parts.gan_loss.take().unwrap_or_else(|| Box::new(gan_mode)),
            nce: parts.nce_loss.take().unwrap_or_else(|| Box::new(PatchNce { tau: cfg.nce_t })),
            supplied,
            sampler: PatchSampler::new(cfg.seed ^ 0x5EED_0001),
            coins: SplitMix64::new(cfg.seed ^ 0x5EED_0002),
            epoch: cfg.epoch_count,
            epoch_iter: 0,
            total_iters: 0,
            cfg,
            device,
            nets,
            opt_g,
            opt_d,
            opt_f,
            gan_mode,
            precision,
            run: None,
            visuals: None,
            grad_sync: None,
            writer: true,
            shard: (0, 1),
            guard,
            resumed_at: None,
        })
    }

    /// Makes this trainer one process of a data-parallel run: it trains on shard `rank` of
    /// `world_size` (see `crate::data::loader`), averages its gradients with `sync` before every
    /// optimiser step, and writes checkpoints, logs and samples only as rank 0. Patch ids and
    /// flip coins come from the shared seed, so every rank draws the same ones (as one process
    /// with the whole batch does).
    pub fn distribute(&mut self, rank: usize, world_size: usize, sync: Box<dyn GradientSync>) -> Result<(), TchError> {
        if world_size == 0 || rank >= world_size {
            return Err(invalid(format!("rank {rank} is not below the world size {world_size}")));
        }
        if self.run.is_some() {
            return Err(invalid("distribute() must be called before the first iteration"));
        }
        // A position saved by a run with another number of processes: the same number of
        // images seen (rounded down to whole global batches).
        if self.shard.1 != world_size {
            self.epoch_iter = self.epoch_iter * self.shard.1 / world_size;
        }
        self.shard = (rank, world_size);
        self.writer = rank == 0;
        self.grad_sync = Some(sync);
        Ok(())
    }

    pub(super) fn set_lr(&mut self) {
        let lr = self.cfg.lr * self.cfg.lr_multiplier(self.epoch);
        for opt in [Some(&mut self.opt_g), Some(&mut self.opt_d), self.opt_f.as_mut()].into_iter().flatten() {
            opt.lr = lr;
        }
    }

    /// Freezes (or unfreezes) D's trainable parameters; its fixed filters stay non-trainable.
    fn set_d_requires_grad(&self, on: bool) {
        self.opt_d.set_requires_grad(on);
    }

    /// Per NCE term t, `L_NCE(src_t, tgt_t) = (1/L) Σ_s λ_NCE · L_nce(q_s, k_s)` over the L
    /// tapped layers (spec §9): positions and attention chosen on `feat_k` = E(src_t), applied
    /// to `feat_q` = E(tgt_t). The terms' images are stacked in `feat_k` / `feat_q` (`images`
    /// each) and go through F together; `ids[t]` (one entry per term) injects a term's patch ids.
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
                .map(|t| if matches!(t.kind(), Kind::BFloat16 | Kind::Half) { t.to_kind(Kind::Float) } else { t.shallow_clone() })
                .collect()
        };
        let (feat_k, feat_q) = (widen(feat_k), widen(feat_q));
        let stacked = StackedTerms { feat_k: &feat_k, feat_q: &feat_q, images, ids };
        let terms = self.nets.f.keys_and_queries_of_terms(&stacked, self.cfg.num_patches, &mut self.sampler)?;
        // every (term, layer) group in one call of the loss, term-major
        let groups: Vec<(Tensor, Tensor)> = terms
            .into_iter()
            .flat_map(|(keys, queries)| queries.into_iter().zip(keys))
            .collect();
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

    /// One iteration on a batch (`a`: source domain, `b`: target domain, `B × 3 × H × W` in
    /// [−1, 1]). With `update = false` the gradients are computed but no parameter changes
    /// (for comparisons with a reference); `ids` injects the random patch ids.
    pub fn step_with(&mut self, a: &Tensor, b: &Tensor, update: bool, ids: Option<InjectedIds>) -> Result<StepLosses, TchError> {
        check_batch_pair(a, b)?;
        let (mut a, mut b) = (to_device_async(a, self.device), to_device_async(b, self.device));
        if self.cfg.channels_last {
            (a, b) = (channels_last(&a)?, channels_last(&b)?);
        }
        let images = a.size()[0];
        // Forward passes in the configured precision; each backward runs outside the scope.
        // G's weights are cast once for both of G's scopes (its forward pass, then the encoder
        // on the translation): nothing updates G in between, and D, which its step updates in
        // between, is frozen in the second scope, so its casts are neither cached nor reused.
        let (precision, device) = (self.precision, self.device);
        let _weight_casts = AutocastCacheHold::new(precision);
        let autocast = move || Bf16Autocast::scope(precision, device);
        let forward_scope = autocast();
        // x, or [x; y] when the identity term L_NCE(y, G(y)) is on
        let sources = if self.cfg.nce_idt && self.cfg.lambda_nce > 0.0 { Tensor::cat(&[&a, &b], 0) } else { a.shallow_clone() };
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
        // E(x) [and E(y)], the NCE terms' source features: the taps of the generator's own pass
        // (instance norm is per image, so no extra encoder pass, Q11); with a flipped input they
        // are not, and the sources are encoded unflipped, in one pass.
        let source_feats = match (self.cfg.lambda_nce > 0.0, flipped) {
            (false, _) => None,
            (true, false) => Some(real_taps),
            (true, true) => Some(self.nets.g.encode(&sources, &self.cfg.nce_layers)?),
        };
        let fake_b = fake.narrow(0, 0, images);

        // Discriminator step: L_D = ½[L(D(G(x)), fake) + L(D(y), real)] (+ penalty); one D
        // pass on both (instance norm is per image).
        self.set_d_requires_grad(true);
        self.opt_d.zero_grad();
        let pred = self.nets.d.forward(&Tensor::cat(&[&fake_b.detach(), &b], 0))?;
        let d_fake = self.gan.loss(&pred.narrow(0, 0, images), false)?;
        let d_real = self.gan.loss(&pred.narrow(0, images, images), true)?;
        let mut d = (&d_fake + &d_real) * 0.5;
        let gp = if self.gan_mode == GanMode::Wgangp && self.cfg.lambda_gp > 0.0 {
            let d_net = &self.nets.d;
            let gp = gradient_penalty(&|x: &Tensor| d_net.forward(x), &b, &fake_b.detach(), self.cfg.lambda_gp)?;
            d = d + &gp;
            Some(gp)
        } else {
            None
        };
        drop(forward_scope);
        d.f_backward()?;
        if update {
            self.sync_gradients("D", &self.opt_d)?;
            let terms = [("D", &d), ("D_real", &d_real), ("D_fake", &d_fake)].into_iter().chain(gp.as_ref().map(|t| ("GP", t)));
            if self.guard.admit(self.total_iters + 1, terms, &[("D", Some(&self.opt_d))])? {
                self.opt_d.step()?;
            }
        }

        // Generator + projector step, D frozen: λ_GAN·L(D(G(x)), real) + NCE terms.
        self.set_d_requires_grad(false);
        self.opt_g.zero_grad();
        if let Some(opt) = self.opt_f.as_mut() {
            opt.zero_grad();
        }
        let forward_scope = autocast();
        let g_gan = self.gan.loss(&self.nets.d.forward(&fake_b)?, true)? * self.cfg.lambda_gan;
        // E(G(x)) and E(G(y)) in one encoder pass over the whole translation, unflipped back
        // to the sources' orientation.
        let (nce, nce_y) = match &source_feats {
            Some(feat_k) => {
                let mut fake_taps = self.nets.g.encode(&fake, &self.cfg.nce_layers)?;
                if flipped {
                    fake_taps = fake_taps.iter().map(|f| f.flip([3])).collect();
                }
                // the x term, and the y term when the batch holds [x; y]: F and the NCE loss
                // see both at once
                let terms = (sources.size()[0] / images) as usize;
                let term_ids: Vec<Option<&[Option<Tensor>]>> = match &ids {
                    Some(i) => vec![Some(i.x), Some(i.y)],
                    None => vec![None, None],
                };
                let mut losses = self.nce_losses(feat_k, &fake_taps, images, &term_ids[..terms])?.into_iter();
                (losses.next(), losses.next())
            }
            None => (None, None),
        };
        let g = match (&nce, &nce_y) {
            (Some(n), Some(ny)) => &g_gan + (n + ny) * 0.5,
            (Some(n), None) => &g_gan + n,
            _ => g_gan.shallow_clone(),
        };
        drop(forward_scope);
        g.f_backward()?;
        if update {
            self.sync_gradients("G", &self.opt_g)?;
            if let Some(opt) = self.opt_f.as_ref() {
                self.sync_gradients("F", opt)?;
            }
            let terms = [("G_GAN", &g_gan), ("G", &g)].into_iter().chain(nce.as_ref().map(|t| ("NCE", t)));
            let terms = terms.chain(nce_y.as_ref().map(|t| ("NCE_Y", t)));
            if self.guard.admit(self.total_iters + 1, terms, &[("G", Some(&self.opt_g)), ("F", self.opt_f.as_ref())])? {
                self.opt_g.step()?;
                if let Some(opt) = self.opt_f.as_mut() {
                    opt.step()?;
                }
            }
        }
        self.set_d_requires_grad(true);
        let idt_b = (fake.size()[0] > images).then(|| fake.narrow(0, images, images).detach());
        self.visuals = Some(Visuals { real_a: a.detach(), fake_b: fake_b.detach(), real_b: b.detach(), idt_b });
        Ok(StepLosses { d, d_real, d_fake, gp, g_gan, nce, nce_y, g })
    }

    /// One training iteration.
    pub fn step(&mut self, a: &Tensor, b: &Tensor) -> Result<StepLosses, TchError> {
        self.step_with(a, b, true, None)
    }

    /// `(prefix, state)` of the three networks: the checkpoint key of a tensor is
    /// `<prefix>.<name>`.
    pub fn states(&self) -> Result<[(&'static str, Vec<(String, Tensor)>); 3], TchError> {
        Ok([("G", self.nets.g.state()?), ("D", self.nets.d.state()?), ("F", self.nets.f.state()?)])
    }

    /// Everything needed to continue: weights, optimiser states, position, generator states,
    /// the full config (metadata).
    pub fn save(&self, path: &Path) -> Result<(), TchError> {
        self.guard.verify()?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (prefix, state) in self.states()? {
            tensors.extend(state.into_iter().map(|(name, t)| (format!("{prefix}.{name}"), t)));
        }
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), self.cfg.to_json()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("epoch_iter".to_string(), self.epoch_iter.to_string()),
            ("total_iters".to_string(), self.total_iters.to_string()),
            ("sampler_state".to_string(), self.sampler.state().to_string()),
            ("coins_state".to_string(), self.coins.state().to_string()),
            ("supplied_parts".to_string(), self.supplied.join(",")),
            ("world_size".to_string(), self.shard.1.to_string()),
        ]);
        for (prefix, opt) in [("opt_G", Some(&self.opt_g)), ("opt_D", Some(&self.opt_d)), ("opt_F", self.opt_f.as_ref())] {
            if let Some(opt) = opt {
                let (state, step) = opt.state();
                tensors.extend(state.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
                meta.insert(format!("{prefix}.step"), step.to_string());
            }
        }
        guard::ensure_finite(&tensors)?;
        checkpoint::save(path, &tensors, meta)
    }

    /// Continues a run from a checkpoint written by [`Trainer::save`]. `overrides` (a JSON
    /// object) may change options such as `n_epochs`, `max_iters` or `device`.
    pub fn resume(path: &Path, overrides: Option<&str>) -> Result<Self, TchError> {
        Self::resume_with_parts(path, overrides, Parts::default())
    }

    /// [`Trainer::resume`] with supplied parts: a checkpoint trained with a supplied network
    /// needs one again (with the same `state_dict` keys); the losses are not stored.
    pub fn resume_with_parts(path: &Path, overrides: Option<&str>, parts: Parts) -> Result<Self, TchError> {
        let (tensors, meta) = checkpoint::load(path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(invalid(format!("{} is not a qs_attn training checkpoint", path.display())));
        }
        let get = |k: &str| meta.get(k).ok_or_else(|| invalid(format!("{}: metadata '{k}' is missing", path.display())));
        let num = |k: &str| -> Result<u64, TchError> { get(k)?.parse::<u64>().map_err(|e| invalid(format!("{k}: {e}"))) };
        let given = parts.supplied();
        let trained_with = meta.get("supplied_parts").map(String::as_str).unwrap_or("");
        for net in trained_with.split(',').filter(|n| ["G", "D", "F"].contains(n)) {
            if !given.contains(&net) {
                return Err(invalid(format!(
                    "{} was trained with a user-supplied network {net}: pass the same module again to resume it",
                    path.display()
                )));
            }
        }
        let mut cfg_json: serde_json::Value =
            serde_json::from_str(get("config")?).map_err(|e| invalid(format!("config metadata: {e}")))?;
        if let Some(o) = overrides {
            let o: serde_json::Value = serde_json::from_str(o).map_err(|e| invalid(format!("overrides: {e}")))?;
            if let (Some(base), Some(over)) = (cfg_json.as_object_mut(), o.as_object()) {
                base.extend(over.clone());
            }
        }
        let cfg = TrainConfig::from_json(&cfg_json.to_string())?;
        let mut trainer = Trainer::with_parts(cfg, parts)?;
        for (prefix, state) in trainer.states()? {
            for (name, mut var) in state {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).ok_or_else(|| invalid(format!("checkpoint has no tensor '{key}'")))?;
                if t.size() != var.size() {
                    return Err(invalid(format!("checkpoint tensor '{key}' has shape {:?}, the network's {:?}", t.size(), var.size())));
                }
                tch::no_grad(|| var.f_copy_(t))?;
            }
        }
        let states = |prefix: &str| -> HashMap<String, Tensor> {
            tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(&format!("{prefix}.")).map(|n| (n.to_string(), t.shallow_clone())))
                .collect()
        };
        trainer.opt_g.load_state(&states("opt_G"), num("opt_G.step")? as i64)?;
        trainer.opt_d.load_state(&states("opt_D"), num("opt_D.step")? as i64)?;
        if let Some(opt) = trainer.opt_f.as_mut() {
            opt.load_state(&states("opt_F"), num("opt_F.step")? as i64)?;
        }
        trainer.epoch = num("epoch")? as i64;
        // `epoch_iter` counted global batches of `world_size` processes: in one process's
        // batches that is `world_size` times as many (`distribute` converts back)
        let saved_world: usize = meta.get("world_size").and_then(|w| w.parse().ok()).unwrap_or(1);
        trainer.epoch_iter = num("epoch_iter")? as usize * saved_world;
        trainer.total_iters = num("total_iters")?;
        trainer.sampler = PatchSampler::new(num("sampler_state")?);
        trainer.coins = SplitMix64::new(num("coins_state")?);
        trainer.resumed_at = Some(trainer.total_iters);
        Ok(trainer)
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
