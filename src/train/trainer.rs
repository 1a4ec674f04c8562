//! The trainer: the networks, their optimisers and losses, and the position in the schedule,
//! built from a config (docs/algorithm.md §10, §11). One iteration is in `step.rs`, saving
//! and resuming in `checkpoint/`, the schedule that drives it in `run.rs`.
//!
//! Randomness after initialisation comes only from seeded generators whose state is saved in
//! checkpoints (patch ids, flip-equivariance draws) and from the data loader, which is a pure
//! function of (seed, epoch, index): a resumed run continues bit for bit. (Exception: the
//! optional WGAN-GP penalty draws its mixing weights from torch's global generator.)
//!
//! Differences from the reference kept on purpose: the projector is built eagerly
//! (docs/algorithm.md Q16), so the reference's data-dependent initialisation pass (a
//! forward/backward whose gradients are discarded, docs/algorithm.md §11.4) has no effect and
//! is skipped; patch ids come from our own generator (docs/algorithm.md Q18).
use tch::{Device, Kind, TchError, Tensor};

use super::adam::Adam;
use super::config::TrainConfig;
use super::data_efficient::DataEfficient;
use super::guard::DivergenceGuard;
use super::networks::{Networks, Parts};
use super::parts::{GanLossPart, NceLossPart, PatchNce};
use super::precision::params_to_channels_last;
use super::run_dir;
use crate::error::invalid;
use crate::ops::PatchSampler;
use crate::rng::SplitMix64;

/// Averages gradients across the processes of a data-parallel run (see `crate::python::dist`).
pub trait GradientSync: Send {
    /// Replaces each gradient of `net` ("G", "D" or "F") by its mean over the processes.
    fn average(&self, net: &'static str, grads: &[Tensor]) -> Result<(), TchError>;
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
        let mut out =
            vec![("real_A", image(&self.real_a)), ("fake_B", image(&self.fake_b)), ("real_B", image(&self.real_b))];
        out.extend(self.idt_b.as_ref().map(|t| ("idt_B", image(t))));
        out
    }
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub nets: Networks,
    pub(super) gan: Box<dyn GanLossPart>,
    pub(super) nce: Box<dyn NceLossPart>,
    /// The parts the caller supplied (recorded in checkpoints).
    pub(super) supplied: Vec<&'static str>,
    pub(super) opt_g: Adam,
    pub(super) opt_d: Adam,
    pub(super) opt_f: Option<Adam>,
    /// Random patch ids of the CUT slots.
    pub(super) sampler: PatchSampler,
    /// Flip-equivariance coins.
    pub(super) coins: SplitMix64,
    /// The epoch in progress (1-based, from `epoch_count`).
    pub epoch: i64,
    /// Batches of the current epoch already trained on.
    pub epoch_iter: usize,
    pub total_iters: u64,
    pub visuals: Option<Visuals>,
    /// Data-parallel gradient averaging; `None` in a single process.
    pub(super) grad_sync: Option<Box<dyn GradientSync>>,
    /// Whether this process writes checkpoints, logs and samples (rank 0 of a distributed run).
    pub writer: bool,
    /// `(rank, world_size)`: this process's share of the data; `(0, 1)` alone.
    pub shard: (usize, usize),
    /// DiffAugment and the EMA of G (off by default).
    pub(super) extras: DataEfficient,
    /// Checks loss terms and gradients before each update (`on_nonfinite`).
    pub(super) guard: DivergenceGuard,
    /// The iteration of the checkpoint this trainer resumed from (`None`: a fresh run).
    pub(super) resumed_at: Option<u64>,
}

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
        let device = cfg.device.device();
        let guard = DivergenceGuard::new(cfg.on_nonfinite, device);
        if device.is_cuda() && cfg.cudnn_benchmark {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        tch::manual_seed(cfg.seed as i64);
        let supplied = parts.supplied();
        let nets = Networks::new(&cfg, device, &mut parts)?;
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
        let adam = |params| Adam::new(params, cfg.lr, cfg.beta1, cfg.beta2);
        let (opt_g, opt_d) = (adam(nets.g.parameters()?), adam(nets.d.parameters()?));
        // docs/algorithm.md Q25: no projector optimiser when NCE is off.
        let opt_f = if cfg.lambda_nce > 0.0 { Some(adam(nets.f.parameters()?)) } else { None };
        let extras = DataEfficient::new(&cfg, &nets.g.parameters()?)?;
        Ok(Trainer {
            extras,
            gan: parts.gan_loss.take().unwrap_or_else(|| Box::new(cfg.gan_mode)),
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

    /// The learning rate of the epoch in progress (docs/algorithm.md §11.3).
    pub fn lr(&self) -> f64 {
        self.cfg.lr * self.cfg.lr_multiplier(self.epoch)
    }

    /// Sets every optimiser's learning rate to that of the epoch in progress.
    pub fn set_lr(&mut self) {
        let lr = self.lr();
        for opt in [Some(&mut self.opt_g), Some(&mut self.opt_d), self.opt_f.as_mut()].into_iter().flatten() {
            opt.lr = lr;
        }
    }

    /// `(prefix, state)` of the three networks: the checkpoint key of a tensor is
    /// `<prefix>.<name>`.
    pub fn states(&self) -> Result<[(&'static str, Vec<(String, Tensor)>); 3], TchError> {
        Ok([("G", self.nets.g.state()?), ("D", self.nets.d.state()?), ("F", self.nets.f.state()?)])
    }
}

impl Trainer {
    /// Exchanges G's weights and their moving average (no-op when `ema_decay` is 0): call it
    /// once to sample, evaluate or export the averaged generator and once more to go on
    /// training. Returns whether an average exists.
    pub fn swap_ema(&mut self) -> Result<bool, TchError> {
        let params = self.nets.g.parameters()?;
        match self.extras.ema.as_mut() {
            Some(ema) => ema.swap_into(&params).map(|_| true),
            None => Ok(false),
        }
    }

    /// `f` of this trainer with G holding the moving average (G as trained when `ema_decay`
    /// is 0); the trained weights are back afterwards, also when `f` fails.
    pub fn with_averaged_g<R>(&mut self, f: impl FnOnce(&Trainer) -> Result<R, TchError>) -> Result<R, TchError> {
        self.swap_ema()?;
        let out = f(self);
        self.swap_ema()?;
        out
    }
}
