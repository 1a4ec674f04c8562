//! Training checkpoints: everything needed to continue a run (weights, optimiser states,
//! position, random generator states, the full config as JSON metadata), in the file format of
//! `file.rs`, and resuming from them.
pub mod file;
pub mod integrity;

use std::collections::HashMap;
use std::path::Path;

use tch::{TchError, Tensor};

use super::config::TrainConfig;
use super::guard;
use super::networks::Parts;
use super::trainer::Trainer;
use crate::error::invalid;
use crate::ops::PatchSampler;
use crate::rng::SplitMix64;

/// The `format` metadata of a training checkpoint.
const FORMAT: &str = "qs_attn-checkpoint-1";

/// Writes the trainer's state to `path` (atomically). Refused once the trainer has diverged or
/// when a weight or optimiser moment is not finite: the last good checkpoint stays.
pub fn save(trainer: &Trainer, path: &Path) -> Result<(), TchError> {
    trainer.guard.verify()?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (prefix, state) in trainer.states()? {
        tensors.extend(state.into_iter().map(|(name, t)| (format!("{prefix}.{name}"), t)));
    }
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("config".to_string(), trainer.cfg.to_json()),
        ("epoch".to_string(), trainer.epoch.to_string()),
        ("epoch_iter".to_string(), trainer.epoch_iter.to_string()),
        ("total_iters".to_string(), trainer.total_iters.to_string()),
        ("sampler_state".to_string(), trainer.sampler.state().to_string()),
        ("coins_state".to_string(), trainer.coins.state().to_string()),
        ("supplied_parts".to_string(), trainer.supplied.join(",")),
        ("world_size".to_string(), trainer.shard.1.to_string()),
    ]);
    for (prefix, opt) in
        [("opt_G", Some(&trainer.opt_g)), ("opt_D", Some(&trainer.opt_d)), ("opt_F", trainer.opt_f.as_ref())]
    {
        if let Some(opt) = opt {
            let (state, step) = opt.state();
            tensors.extend(state.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
            meta.insert(format!("{prefix}.step"), step.to_string());
        }
    }
    trainer.extras.save(&mut tensors, &mut meta);
    guard::ensure_finite(&tensors)?;
    file::save(path, &tensors, meta)
}

/// Continues a run from a checkpoint written by [`save`]. `overrides` (a JSON object) may
/// change options such as `n_epochs`, `max_iters` or `device`; a checkpoint trained with a
/// supplied network needs one again in `parts` (with the same `state_dict` keys); the losses
/// are not stored.
pub fn resume(path: &Path, overrides: Option<&str>, parts: Parts) -> Result<Trainer, TchError> {
    let (tensors, meta) = file::load(path)?;
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
    let cfg = config_with_overrides(get("config")?, overrides)?;
    let mut trainer = Trainer::with_parts(cfg, parts)?;
    for (prefix, state) in trainer.states()? {
        for (name, mut var) in state {
            let key = format!("{prefix}.{name}");
            let t = tensors.get(&key).ok_or_else(|| invalid(format!("checkpoint has no tensor '{key}'")))?;
            if t.size() != var.size() {
                return Err(invalid(format!(
                    "checkpoint tensor '{key}' has shape {:?}, the network's {:?}",
                    t.size(),
                    var.size()
                )));
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
    let g_params = trainer.nets.g.parameters()?;
    trainer.extras.load(&tensors, &meta, &g_params)?;
    trainer.resumed_at = Some(trainer.total_iters);
    Ok(trainer)
}

/// The checkpoint's config (JSON) with `overrides` (a JSON object) applied.
fn config_with_overrides(saved: &str, overrides: Option<&str>) -> Result<TrainConfig, TchError> {
    let mut cfg_json: serde_json::Value =
        serde_json::from_str(saved).map_err(|e| invalid(format!("config metadata: {e}")))?;
    if let Some(o) = overrides {
        let o: serde_json::Value = serde_json::from_str(o).map_err(|e| invalid(format!("overrides: {e}")))?;
        if let (Some(base), Some(over)) = (cfg_json.as_object_mut(), o.as_object()) {
            base.extend(over.clone());
        }
    }
    TrainConfig::from_json(&cfg_json.to_string())
}
