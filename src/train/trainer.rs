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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{nn, Device, Kind, TchError, Tensor};

use super::adam::Adam;
use super::checkpoint;
use super::config::TrainConfig;
use crate::data::dataset::{Direction, UnalignedDataset};
use crate::data::image_io;
use crate::data::loader::{epoch_batches, LoaderConfig};
use crate::data::transform::TransformConfig;
use crate::error::invalid;
use crate::losses::{gan_loss, gradient_penalty, GanMode};
use crate::nets::discriminator::{Discriminator, DiscriminatorConfig};
use crate::nets::generator::{Generator, GeneratorConfig};
use crate::nets::init::{init_weights, InitType};
use crate::nets::projector::{Projector, ProjectorConfig};
use crate::ops::{patch_nce_loss, LocalLayout, PatchSampler, QsMode, Reduction};
use crate::rng::SplitMix64;

/// The three networks and the variable stores that own their parameters.
pub struct Networks {
    pub g_vs: nn::VarStore,
    pub g: Generator,
    pub d_vs: nn::VarStore,
    pub d: Discriminator,
    pub f_vs: nn::VarStore,
    pub f: Projector,
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
    /// Builds G, D and F for `cfg` on `device`, initialised as spec §3.1 (seeded by the caller).
    pub fn new(cfg: &TrainConfig, device: Device) -> Result<Self, TchError> {
        if let Device::Cuda(_) = device {
            if !tch::Cuda::is_available() {
                return Err(invalid("device 'cuda' was requested but CUDA is not available"));
            }
        }
        let init: InitType = cfg.init_type.parse()?;
        let g_vs = nn::VarStore::new(device);
        let g_cfg = GeneratorConfig {
            ngf: cfg.ngf,
            n_blocks: cfg.n_blocks,
            no_antialias: cfg.no_antialias,
            no_antialias_up: cfg.no_antialias_up,
            ..GeneratorConfig::default()
        };
        let g = Generator::new(&g_vs.root(), &g_cfg);
        let d_vs = nn::VarStore::new(device);
        let d_cfg = DiscriminatorConfig {
            ndf: cfg.ndf,
            n_layers: cfg.n_layers_d,
            no_antialias: cfg.no_antialias,
            ..DiscriminatorConfig::default()
        };
        let d = Discriminator::new(&d_vs.root(), &d_cfg);
        // Channels of the tapped layers, from a tiny forward (they depend on ngf and the taps).
        let channels: Vec<i64> = tch::no_grad(|| {
            let probe = Tensor::zeros([1, 3, 16, 16], (Kind::Float, device));
            g.encode(&probe, &cfg.nce_layers).map(|taps| taps.iter().map(|t| t.size()[1]).collect())
        })?;
        let f_vs = nn::VarStore::new(device);
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
        let f = Projector::new(&f_vs.root(), &channels, &f_cfg);
        for vs in [&g_vs, &d_vs, &f_vs] {
            init_weights(vs, init, cfg.init_gain)?;
        }
        Ok(Networks { g_vs, g, d_vs, d, f_vs, f })
    }

    /// `(prefix, store)` pairs: the checkpoint key of a variable is `<prefix>.<name>`.
    pub fn stores(&self) -> [(&'static str, &nn::VarStore); 3] {
        [("G", &self.g_vs), ("D", &self.d_vs), ("F", &self.f_vs)]
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

/// What a training run reports when it stops.
#[derive(Debug, Default)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub latest_checkpoint: Option<PathBuf>,
    pub samples: Vec<PathBuf>,
    pub log: PathBuf,
    pub final_losses: Vec<(String, f64)>,
    pub total_iters: u64,
    pub interrupted: bool,
}

/// Progress reported to the caller's callback after every iteration.
pub struct Progress<'a> {
    pub epoch: i64,
    pub last_epoch: i64,
    pub epoch_iter: usize,
    pub iters_per_epoch: usize,
    pub total_iters: u64,
    /// Present on logging iterations (every `print_freq`).
    pub losses: Option<&'a [(&'static str, f64)]>,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub nets: Networks,
    opt_g: Adam,
    opt_d: Adam,
    opt_f: Option<Adam>,
    /// Random patch ids of the CUT slots.
    sampler: PatchSampler,
    /// Flip-equivariance coins.
    coins: SplitMix64,
    gan_mode: GanMode,
    /// The epoch in progress (1-based, from `epoch_count`).
    pub epoch: i64,
    /// Batches of the current epoch already trained on.
    pub epoch_iter: usize,
    pub total_iters: u64,
}

const FORMAT: &str = "qs_attn-checkpoint-1";

impl Trainer {
    /// A fresh run: networks initialised from `cfg.seed`.
    pub fn new(cfg: TrainConfig) -> Result<Self, TchError> {
        cfg.validate()?;
        let device = parse_device(&cfg.device)?;
        tch::manual_seed(cfg.seed as i64);
        let nets = Networks::new(&cfg, device)?;
        let adam = |vs: &nn::VarStore| Adam::new(vs, cfg.lr, cfg.beta1, cfg.beta2);
        let (opt_g, opt_d) = (adam(&nets.g_vs), adam(&nets.d_vs));
        // Q25: no projector optimiser when NCE is off.
        let opt_f = (cfg.lambda_nce > 0.0).then(|| adam(&nets.f_vs));
        let gan_mode: GanMode = cfg.gan_mode.parse()?;
        Ok(Trainer {
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
        })
    }

    fn set_lr(&mut self) {
        let lr = self.cfg.lr * self.cfg.lr_multiplier(self.epoch);
        for opt in [Some(&mut self.opt_g), Some(&mut self.opt_d), self.opt_f.as_mut()].into_iter().flatten() {
            opt.lr = lr;
        }
    }

    /// Freezes (or unfreezes) D's trainable parameters; its fixed filters stay non-trainable.
    fn set_d_requires_grad(&self, on: bool) {
        self.opt_d.set_requires_grad(on);
    }

    /// `L_NCE(src, tgt) = (1/L) Σ_s λ_NCE · mean_r ℓ_r` over the L tapped layers (spec §9):
    /// positions and attention chosen on `feat_k` = E(src), applied to `feat_q` = E(tgt).
    fn nce_loss(&mut self, feat_k: &[Tensor], feat_q: &[Tensor], ids: Option<&[Option<Tensor>]>) -> Result<Tensor, TchError> {
        let layers = &self.cfg.nce_layers;
        let (keys, samples) = self.nets.f.sample_source(feat_k, self.cfg.num_patches, &mut self.sampler, ids)?;
        let queries = self.nets.f.sample_target(feat_q, &samples)?;
        let images = feat_q[0].size()[0];
        let mut total: Option<Tensor> = None;
        for (q, k) in queries.iter().zip(&keys) {
            let term = patch_nce_loss(q, k, self.cfg.nce_t, images, Reduction::Mean, true)? * self.cfg.lambda_nce;
            total = Some(match total {
                Some(t) => t + term,
                None => term,
            });
        }
        Ok(total.ok_or_else(|| invalid("nce_layers is empty"))? / layers.len() as f64)
    }

    /// One iteration on a batch (`a`: source domain, `b`: target domain, `B × 3 × H × W` in
    /// [−1, 1]). With `update = false` the gradients are computed but no parameter changes
    /// (for comparisons with a reference); `ids` injects the random patch ids.
    pub fn step_with(&mut self, a: &Tensor, b: &Tensor, update: bool, ids: Option<InjectedIds>) -> Result<StepLosses, TchError> {
        let (a, b) = (a.to_device(self.device), b.to_device(self.device));
        let images = a.size()[0];
        let mut real = if self.cfg.nce_idt && self.cfg.lambda_nce > 0.0 { Tensor::cat(&[&a, &b], 0) } else { a.shallow_clone() };
        let flipped = self.cfg.flip_equivariance && self.coins.below(2) == 1;
        if flipped {
            real = real.flip([3]);
        }
        // The taps of the real images in the generator's own pass are E(x) and E(y) (instance
        // norm is per image), so the NCE terms need no extra encoder pass on the sources
        // (Q11); with a flipped input they are not, and the sources are encoded unflipped.
        let (fake, real_taps) = self.nets.g.forward_with_taps(&real, &self.cfg.nce_layers)?;
        let source_taps = |from: i64, src: &Tensor| -> Result<Vec<Tensor>, TchError> {
            if flipped {
                self.nets.g.encode(src, &self.cfg.nce_layers)
            } else {
                Ok(real_taps.iter().map(|t| t.narrow(0, from, images)).collect())
            }
        };
        let (feat_x, feat_y) = if self.cfg.lambda_nce > 0.0 {
            let feat_y = if real.size()[0] > images { Some(source_taps(images, &b)?) } else { None };
            (Some(source_taps(0, &a)?), feat_y)
        } else {
            (None, None)
        };
        let fake_b = fake.narrow(0, 0, images);

        // Discriminator step: L_D = ½[L(D(G(x)), fake) + L(D(y), real)] (+ penalty); one D
        // pass on both (instance norm is per image).
        self.set_d_requires_grad(true);
        self.opt_d.zero_grad();
        let pred = self.nets.d.forward(&Tensor::cat(&[&fake_b.detach(), &b], 0));
        let d_fake = gan_loss(self.gan_mode, &pred.narrow(0, 0, images), false);
        let d_real = gan_loss(self.gan_mode, &pred.narrow(0, images, images), true);
        let mut d = (&d_fake + &d_real) * 0.5;
        let gp = if self.gan_mode == GanMode::Wgangp && self.cfg.lambda_gp > 0.0 {
            let d_net = &self.nets.d;
            let gp = gradient_penalty(&|x: &Tensor| d_net.forward(x), &b, &fake_b.detach(), self.cfg.lambda_gp)?;
            d = d + &gp;
            Some(gp)
        } else {
            None
        };
        d.f_backward()?;
        if update {
            self.opt_d.step();
        }

        // Generator + projector step, D frozen: λ_GAN·L(D(G(x)), real) + NCE terms.
        self.set_d_requires_grad(false);
        self.opt_g.zero_grad();
        if let Some(opt) = self.opt_f.as_mut() {
            opt.zero_grad();
        }
        let g_gan = gan_loss(self.gan_mode, &self.nets.d.forward(&fake_b), true) * self.cfg.lambda_gan;
        // E(G(x)) and E(G(y)) in one encoder pass over the whole translation, unflipped back
        // to the sources' orientation.
        let (nce, nce_y) = match &feat_x {
            Some(feat_x) => {
                let mut fake_taps = self.nets.g.encode(&fake, &self.cfg.nce_layers)?;
                if flipped {
                    fake_taps = fake_taps.iter().map(|f| f.flip([3])).collect();
                }
                let part = |from: i64| -> Vec<Tensor> { fake_taps.iter().map(|t| t.narrow(0, from, images)).collect() };
                let nce = self.nce_loss(feat_x, &part(0), ids.as_ref().map(|i| i.x))?;
                let nce_y = match &feat_y {
                    Some(feat_y) => Some(self.nce_loss(feat_y, &part(images), ids.as_ref().map(|i| i.y))?),
                    None => None,
                };
                (Some(nce), nce_y)
            }
            None => (None, None),
        };
        let g = match (&nce, &nce_y) {
            (Some(n), Some(ny)) => &g_gan + (n + ny) * 0.5,
            (Some(n), None) => &g_gan + n,
            _ => g_gan.shallow_clone(),
        };
        g.f_backward()?;
        if update {
            self.opt_g.step();
            if let Some(opt) = self.opt_f.as_mut() {
                opt.step();
            }
        }
        self.set_d_requires_grad(true);
        Ok(StepLosses { d, d_real, d_fake, gp, g_gan, nce, nce_y, g })
    }

    /// One training iteration.
    pub fn step(&mut self, a: &Tensor, b: &Tensor) -> Result<StepLosses, TchError> {
        self.step_with(a, b, true, None)
    }

    pub fn run_dir(&self) -> PathBuf {
        Path::new(&self.cfg.checkpoints_dir).join(&self.cfg.name)
    }

    fn last_epoch(&self) -> i64 {
        self.cfg.n_epochs + self.cfg.n_epochs_decay
    }

    /// Trains from the current position to the end (or `max_iters`, or until `on_progress`
    /// returns false, e.g. on Ctrl-C), writing logs, sample grids and checkpoints into
    /// `<checkpoints_dir>/<name>/`. The latest checkpoint is always written before returning.
    pub fn fit(&mut self, on_progress: &mut dyn FnMut(&Progress) -> bool) -> Result<Summary, TchError> {
        let run_dir = self.run_dir();
        std::fs::create_dir_all(run_dir.join("samples")).map_err(|e| invalid(format!("{}: {e}", run_dir.display())))?;
        let root = PathBuf::from(&self.cfg.dataroot);
        let direction: Direction = self.cfg.direction.parse()?;
        let dataset = Arc::new(UnalignedDataset::open(&root, "train", direction)?);
        let sample_pairs = sample_images(&root, direction, self.cfg.num_samples, self.cfg.crop_size)?;
        let mut summary = Summary { run_dir: run_dir.clone(), log: run_dir.join("loss_log.jsonl"), ..Summary::default() };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&summary.log)
            .map_err(|e| invalid(format!("{}: {e}", summary.log.display())))?;
        let loader_cfg = LoaderConfig {
            batch_size: self.cfg.batch_size,
            seed: self.cfg.seed,
            workers: self.cfg.num_threads.max(1),
            prefetch: 4,
            serial_batches: self.cfg.serial_batches,
        };
        'epochs: while self.epoch <= self.last_epoch() {
            self.set_lr();
            // Decay-phase rule (§2, Q21): no resize jitter after n_epochs.
            let load_size = if self.epoch > self.cfg.n_epochs { self.cfg.crop_size } else { self.cfg.load_size };
            let transform = TransformConfig { load_size, crop_size: self.cfg.crop_size, flip: !self.cfg.no_flip };
            let batches = epoch_batches(dataset.clone(), transform, &loader_cfg, self.epoch as u64);
            let iters_per_epoch = batches.num_batches();
            if iters_per_epoch == 0 {
                return Err(invalid(format!(
                    "the training set has fewer images than batch_size = {}",
                    self.cfg.batch_size
                )));
            }
            for batch in batches.skip(self.epoch_iter) {
                let batch = batch?;
                let losses = self.step(&batch.a, &batch.b)?;
                self.epoch_iter += 1;
                self.total_iters += 1;
                let logging = self.total_iters % self.cfg.print_freq.max(1) == 0;
                let values: Vec<(&'static str, f64)> = if logging { losses.values() } else { Vec::new() };
                if logging {
                    write_log_line(&mut log, self.epoch, self.epoch_iter, self.total_iters, self.cfg.lr * self.cfg.lr_multiplier(self.epoch), &values)?;
                    summary.final_losses = values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                }
                if self.total_iters % self.cfg.display_freq.max(1) == 0 {
                    summary.samples.push(self.write_samples(&sample_pairs)?);
                }
                if self.total_iters % self.cfg.save_latest_freq.max(1) == 0 {
                    summary.latest_checkpoint = Some(self.save_latest()?);
                }
                let progress = Progress {
                    epoch: self.epoch,
                    last_epoch: self.last_epoch(),
                    epoch_iter: self.epoch_iter,
                    iters_per_epoch,
                    total_iters: self.total_iters,
                    losses: logging.then_some(values.as_slice()),
                };
                let go_on = on_progress(&progress);
                let done = self.cfg.max_iters.is_some_and(|m| self.total_iters >= m);
                if !go_on || done {
                    summary.interrupted = !go_on;
                    if summary.final_losses.is_empty() {
                        summary.final_losses = losses.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    }
                    break 'epochs;
                }
            }
            if (self.epoch - self.cfg.epoch_count + 1) % self.cfg.save_epoch_freq.max(1) == 0 {
                self.save(&run_dir.join(format!("epoch_{}.safetensors", self.epoch)))?;
            }
            self.epoch += 1;
            self.epoch_iter = 0;
        }
        if summary.samples.is_empty() || self.total_iters % self.cfg.display_freq.max(1) != 0 {
            summary.samples.push(self.write_samples(&sample_pairs)?);
        }
        summary.latest_checkpoint = Some(self.save_latest()?);
        summary.total_iters = self.total_iters;
        Ok(summary)
    }

    fn save_latest(&self) -> Result<PathBuf, TchError> {
        let path = self.run_dir().join("latest.safetensors");
        self.save(&path)?;
        Ok(path)
    }

    /// A grid of test translations: per row source | translation | target-domain image | identity.
    fn write_samples(&self, pairs: &[(Tensor, Tensor)]) -> Result<PathBuf, TchError> {
        let rows = tch::no_grad(|| {
            pairs
                .iter()
                .map(|(a, b)| {
                    let (a, b) = (a.to_device(self.device), b.to_device(self.device));
                    let out = self.nets.g.forward(&Tensor::cat(&[&a, &b], 0)).to_device(Device::Cpu);
                    vec![a.get(0).to_device(Device::Cpu), out.get(0), b.get(0).to_device(Device::Cpu), out.get(1)]
                })
                .collect::<Vec<_>>()
        });
        let path = self.run_dir().join("samples").join(format!("iter_{:07}.png", self.total_iters));
        image_io::save_grid(&rows, &path)?;
        Ok(path)
    }

    /// Everything needed to continue: weights, optimiser states, position, generator states,
    /// the full config (metadata).
    pub fn save(&self, path: &Path) -> Result<(), TchError> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (prefix, vs) in self.nets.stores() {
            for (name, t) in vs.variables() {
                tensors.push((format!("{prefix}.{name}"), t));
            }
        }
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), self.cfg.to_json()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("epoch_iter".to_string(), self.epoch_iter.to_string()),
            ("total_iters".to_string(), self.total_iters.to_string()),
            ("sampler_state".to_string(), self.sampler.state().to_string()),
            ("coins_state".to_string(), self.coins.state().to_string()),
        ]);
        for (prefix, opt) in [("opt_G", Some(&self.opt_g)), ("opt_D", Some(&self.opt_d)), ("opt_F", self.opt_f.as_ref())] {
            if let Some(opt) = opt {
                let (state, step) = opt.state();
                tensors.extend(state.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
                meta.insert(format!("{prefix}.step"), step.to_string());
            }
        }
        checkpoint::save(path, &tensors, meta)
    }

    /// Continues a run from a checkpoint written by [`Trainer::save`]. `overrides` (a JSON
    /// object) may change options such as `n_epochs`, `max_iters` or `device`.
    pub fn resume(path: &Path, overrides: Option<&str>) -> Result<Self, TchError> {
        let (tensors, meta) = checkpoint::load(path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(invalid(format!("{} is not a qs_attn training checkpoint", path.display())));
        }
        let get = |k: &str| meta.get(k).ok_or_else(|| invalid(format!("{}: metadata '{k}' is missing", path.display())));
        let num = |k: &str| -> Result<u64, TchError> { get(k)?.parse::<u64>().map_err(|e| invalid(format!("{k}: {e}"))) };
        let mut cfg_json: serde_json::Value =
            serde_json::from_str(get("config")?).map_err(|e| invalid(format!("config metadata: {e}")))?;
        if let Some(o) = overrides {
            let o: serde_json::Value = serde_json::from_str(o).map_err(|e| invalid(format!("overrides: {e}")))?;
            if let (Some(base), Some(over)) = (cfg_json.as_object_mut(), o.as_object()) {
                base.extend(over.clone());
            }
        }
        let cfg = TrainConfig::from_json(&cfg_json.to_string())?;
        let mut trainer = Trainer::new(cfg)?;
        for (prefix, vs) in trainer.nets.stores() {
            for (name, mut var) in vs.variables() {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).ok_or_else(|| invalid(format!("checkpoint has no tensor '{key}'")))?;
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
        trainer.epoch_iter = num("epoch_iter")? as usize;
        trainer.total_iters = num("total_iters")?;
        trainer.sampler = PatchSampler::new(num("sampler_state")?);
        trainer.coins = SplitMix64::new(num("coins_state")?);
        Ok(trainer)
    }
}

/// Up to `n` (source, target) pairs from testA/testB (or the training folders), crop-sized;
/// unreadable files are left out (the loader warns about them).
fn sample_images(root: &Path, direction: Direction, n: usize, size: u32) -> Result<Vec<(Tensor, Tensor)>, TchError> {
    let set = UnalignedDataset::open(root, "test", direction).or_else(|_| UnalignedDataset::open(root, "train", direction))?;
    let readable = |files: &[PathBuf]| -> Vec<Tensor> {
        files.iter().filter_map(|f| image_io::load_image(f, Some(size)).ok()).take(n).collect()
    };
    Ok(readable(&set.a).into_iter().zip(readable(&set.b)).collect())
}

fn write_log_line(
    log: &mut std::fs::File,
    epoch: i64,
    epoch_iter: usize,
    total_iters: u64,
    lr: f64,
    values: &[(&'static str, f64)],
) -> Result<(), TchError> {
    use std::io::Write;
    let losses: serde_json::Map<String, serde_json::Value> = values.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    let line = serde_json::json!({"epoch": epoch, "epoch_iter": epoch_iter, "iter": total_iters, "lr": lr, "losses": losses});
    writeln!(log, "{line}").map_err(|e| invalid(format!("writing the loss log: {e}")))
}
