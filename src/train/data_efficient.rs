//! The data-efficient training options as the trainer sees them: DiffAugment of D's inputs
//! (`diff_augment`, `train::augment`) and the EMA of G's weights (`ema_decay`, `train::ema`).
//! Both off by default, and then every method here is the identity: the reference's step.
//! The trainer calls these few hooks; the state they add to a checkpoint is written and read
//! here.
use std::collections::HashMap;

use tch::{TchError, Tensor};

use super::augment::Augmenter;
use super::config::TrainConfig;
use super::ema::Ema;
use super::parts::Named;
use crate::error::invalid;

/// Seed offset of the augmentation stream (distinct from the trainer's other streams).
const AUGMENT_SEED: u64 = 0x5EED_0004;

pub struct DataEfficient {
    pub augment: Option<Augmenter>,
    pub ema: Option<Ema>,
}

impl DataEfficient {
    /// From the (validated) options; `g_params` are G's initial parameters (the average's start).
    pub fn new(cfg: &TrainConfig, g_params: &Named) -> Result<DataEfficient, TchError> {
        Ok(DataEfficient {
            augment: Augmenter::new(cfg.diff_augment, cfg.seed ^ AUGMENT_SEED),
            ema: (cfg.ema_decay > 0.0).then(|| Ema::new(cfg.ema_decay, g_params)),
        })
    }

    /// What D sees of `x`: augmented when on. `halves`: `x` is `[fake; real]` and both halves
    /// get the same parameters (D's own loss); otherwise fresh parameters per image (G's loss).
    pub fn d_input(&mut self, x: &Tensor, halves: bool) -> Result<Tensor, TchError> {
        match self.augment.as_mut() {
            Some(aug) => aug.apply(x, halves),
            None => Ok(x.shallow_clone()),
        }
    }

    /// After each update of G.
    pub fn after_g_step(&mut self, g_params: &Named) -> Result<(), TchError> {
        match self.ema.as_mut() {
            Some(ema) => ema.update(g_params),
            None => Ok(()),
        }
    }

    /// Adds the average and the streams' positions to a checkpoint.
    pub fn save(&self, tensors: &mut Named, meta: &mut HashMap<String, String>) {
        if let Some(aug) = &self.augment {
            meta.insert("augment_state".into(), aug.rng.state().to_string());
        }
        if let Some(ema) = &self.ema {
            tensors.extend(ema.state());
            meta.insert("ema_updates".into(), ema.updates.to_string());
        }
    }

    /// Restores what [`DataEfficient::save`] wrote. A checkpoint from a run without an option
    /// that is now on starts it fresh (augmentation from its seed, the average at the loaded G).
    pub fn load(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        meta: &HashMap<String, String>,
        g_params: &Named,
    ) -> Result<(), TchError> {
        let num = |k: &str| meta.get(k).map(|v| v.parse::<u64>().map_err(|e| invalid(format!("{k}: {e}")))).transpose();
        if let (Some(aug), Some(state)) = (self.augment.as_mut(), num("augment_state")?) {
            aug.rng = crate::rng::SplitMix64::new(state);
        }
        if let Some(ema) = self.ema.as_mut() {
            match num("ema_updates")? {
                Some(updates) => ema.load(&|k| tensors.get(k).map(Tensor::shallow_clone), updates)?,
                None => *ema = Ema::new(ema.decay, g_params),
            }
        }
        Ok(())
    }
}
