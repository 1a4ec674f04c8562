//! The three networks of a run (G, D, F), each built-in (the Rust networks of `crate::nets`,
//! initialised as docs/algorithm.md §3.1) or supplied by the caller.
use tch::{nn, Device, Kind, TchError, Tensor};

use super::config::TrainConfig;
use super::parts::{DiscriminatorPart, GanLossPart, GeneratorPart, NceLossPart, Owned, ProjectorPart};
use crate::error::invalid;
use crate::nets::discriminator::{Discriminator, DiscriminatorConfig};
use crate::nets::generator::{Generator, GeneratorConfig};
use crate::nets::init::{init_weights, InitType};
use crate::nets::projector::{Projector, ProjectorConfig};

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

/// A built-in network with its variables initialised (docs/algorithm.md §3.1).
fn initialised<N>(vs: nn::VarStore, net: N, init: InitType, gain: f64) -> Result<Owned<N>, TchError> {
    init_weights(&vs, init, gain)?;
    Ok(Owned { vs, net })
}

/// The projector's options for a run: QS-Attn on `cfg.qs_slot_list()`, random slots elsewhere.
pub fn projector_config(cfg: &TrainConfig) -> ProjectorConfig {
    ProjectorConfig {
        nc: cfg.netf_nc,
        use_mlp: true,
        mode: cfg.mode.qs(),
        qs_slots: cfg.qs_slot_list(),
        window: cfg.window,
        layout: cfg.local_layout,
        per_image_ids: cfg.per_image_ids,
        detach_attn: false,
    }
}

impl Networks {
    /// Builds G, D and F for `cfg` on `device`, initialised as docs/algorithm.md §3.1 (seeded
    /// by the caller), each unless `parts` supplies it.
    pub fn new(cfg: &TrainConfig, device: Device, parts: &mut Parts) -> Result<Self, TchError> {
        if let Device::Cuda(_) = device {
            if !tch::Cuda::is_available() {
                return Err(invalid(format!("device '{}' was requested but CUDA is not available", cfg.device)));
            }
        }
        let init = cfg.init_type;
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
                let net = Projector::new(&vs.root(), &channels, &projector_config(cfg));
                Box::new(initialised(vs, net, init, cfg.init_gain)?)
            }
        };
        Ok(Networks { g, d, f })
    }
}
