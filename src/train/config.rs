//! Training options: the reference's names and defaults (docs/algorithm.md §11.1), plus ours.
//! Parsed from JSON (the Python layer and the CLI send a dict) and checked once, when read:
//! named options are enums, numbers must be finite and sizes positive, and every error names
//! its option; unknown options are an error.
use serde::{Deserialize, Deserializer, Serialize};
use tch::TchError;

use super::augment::Policy;
use super::guard::OnNonFinite;
use super::options::{Mode, TrainDevice};
use super::precision::Precision;
use crate::data::Direction;
use crate::error::invalid;
use crate::losses::GanMode;
use crate::nets::init::InitType;
use crate::nets::projector::default_qs_slots;
use crate::ops::{LocalLayout, QsMode};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Folder with trainA/ trainB/ (and testA/ testB/ for samples).
    pub dataroot: String,
    /// Run name: checkpoints and logs go to `<checkpoints_dir>/<name>/`.
    pub name: String,
    pub checkpoints_dir: String,
    /// A QS-Attn mode, or "none" (plain CUT).
    pub mode: Mode,
    /// The local windows' layout ("reference": the authors', docs/algorithm.md §8.3).
    pub local_layout: LocalLayout,
    pub window: i64,
    /// Slots (indices into nce_layers) that use QS-Attn; None = every slot from index 3 on.
    pub qs_slots: Option<Vec<usize>>,
    pub per_image_ids: bool,
    pub direction: Direction,
    pub batch_size: usize,
    pub load_size: u32,
    pub crop_size: u32,
    pub no_flip: bool,
    pub serial_batches: bool,
    pub num_threads: usize,
    pub n_epochs: i64,
    pub n_epochs_decay: i64,
    pub epoch_count: i64,
    /// Stop after this many iterations in total (None: run all epochs).
    pub max_iters: Option<u64>,
    #[serde(deserialize_with = "finite")]
    pub lr: f64,
    #[serde(deserialize_with = "finite")]
    pub beta1: f64,
    #[serde(deserialize_with = "finite")]
    pub beta2: f64,
    pub gan_mode: GanMode,
    /// Weight of the WGAN-GP gradient penalty (our extension, gan_mode "wgangp" only; 0 = the
    /// reference's plain WGAN loss, docs/algorithm.md Q14).
    #[serde(deserialize_with = "finite")]
    pub lambda_gp: f64,
    #[serde(rename = "lambda_GAN", deserialize_with = "finite")]
    pub lambda_gan: f64,
    #[serde(rename = "lambda_NCE", deserialize_with = "finite")]
    pub lambda_nce: f64,
    pub nce_idt: bool,
    pub nce_layers: Vec<usize>,
    #[serde(rename = "nce_T", deserialize_with = "finite")]
    pub nce_t: f64,
    pub num_patches: i64,
    #[serde(rename = "netF_nc")]
    pub netf_nc: i64,
    pub flip_equivariance: bool,
    pub ngf: i64,
    pub ndf: i64,
    pub n_blocks: usize,
    pub n_layers_d: usize,
    pub no_antialias: bool,
    pub no_antialias_up: bool,
    pub init_type: InitType,
    #[serde(deserialize_with = "finite")]
    pub init_gain: f64,
    pub seed: u64,
    /// "cpu", "cuda", "cuda:N".
    pub device: TrainDevice,
    /// "fp32", or "bf16": autocast to bfloat16 for G and D (the opt-in fast path; F, QS-Attn
    /// and PatchNCE stay float32). See `train::precision`.
    pub precision: Precision,
    /// Store convolution weights and images channels-last (NHWC): cuDNN's convolutions (in
    /// bfloat16 above all) read it without transposes, and the pads, resampling steps, instance
    /// norms and patch sampling keep that layout (no NCHW copies between them); whether it
    /// pays is measured in docs/benchmarks.md.
    pub channels_last: bool,
    /// On CUDA, let cuDNN time its convolution algorithms on the first iterations and keep the
    /// fastest (`torch.backends.cudnn.benchmark`, a process-wide switch; training shapes are
    /// fixed). Results are then not bit-reproducible across runs.
    pub cudnn_benchmark: bool,
    pub print_freq: u64,
    pub display_freq: u64,
    pub save_latest_freq: u64,
    pub save_epoch_freq: i64,
    /// Number of test images in each sample grid.
    pub num_samples: usize,
    /// DiffAugment policy for D's inputs (our extension, `train::augment`): "" (off, the
    /// reference) or a comma-separated subset of "color", "translation", "cutout".
    pub diff_augment: Policy,
    /// Decay of the moving average of G's weights (our extension, `train::ema`); 0 = off (the
    /// reference). When on, samples, evaluations, export and translation use the average.
    #[serde(deserialize_with = "finite")]
    pub ema_decay: f64,
    /// A NaN or infinite loss or gradient: "stop" (an error) or "skip" (that update). See
    /// `train::guard`.
    pub on_nonfinite: OnNonFinite,
    /// Start a new run in a directory that holds an earlier one, removing its checkpoints and
    /// log (otherwise refused). See `train::run_dir`.
    pub overwrite: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dataroot: String::new(),
            name: "experiment".into(),
            checkpoints_dir: "runs".into(),
            mode: Mode(Some(QsMode::Global)),
            local_layout: LocalLayout::Geometric,
            window: 7,
            qs_slots: None,
            per_image_ids: false,
            direction: Direction::AtoB,
            batch_size: 1,
            load_size: 286,
            crop_size: 256,
            no_flip: false,
            serial_batches: false,
            num_threads: 2,
            n_epochs: 200,
            n_epochs_decay: 200,
            epoch_count: 1,
            max_iters: None,
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            gan_mode: GanMode::Lsgan,
            lambda_gp: 0.0,
            lambda_gan: 1.0,
            lambda_nce: 1.0,
            nce_idt: true,
            nce_layers: vec![0, 4, 8, 12, 16],
            nce_t: 0.07,
            num_patches: 256,
            netf_nc: 256,
            flip_equivariance: false,
            ngf: 64,
            ndf: 64,
            n_blocks: 9,
            n_layers_d: 3,
            no_antialias: false,
            no_antialias_up: false,
            init_type: InitType::Xavier,
            init_gain: 0.02,
            seed: 0,
            device: TrainDevice::Cpu,
            precision: Precision::Fp32,
            channels_last: false,
            cudnn_benchmark: true,
            print_freq: 100,
            display_freq: 400,
            save_latest_freq: 5000,
            save_epoch_freq: 5,
            num_samples: 4,
            diff_augment: Policy::default(),
            ema_decay: 0.0,
            on_nonfinite: OnNonFinite::Stop,
            overwrite: false,
        }
    }
}

/// A number that must be finite. The Python layer sends a non-finite float as the text
/// `NaN`, `Infinity` or `-Infinity` (JSON has no such numbers), refused here by name.
fn finite<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Value(f64),
        Text(String),
    }
    match Number::deserialize(d)? {
        Number::Value(v) if v.is_finite() => Ok(v),
        Number::Value(v) => Err(serde::de::Error::custom(format!("must be a finite number, got {v}"))),
        Number::Text(t) => Err(serde::de::Error::custom(format!("must be a finite number, got {t}"))),
    }
}

impl TrainConfig {
    /// Reads and checks the options (see [`TrainConfig::validate`]); an error names the
    /// option.
    pub fn from_json(json: &str) -> Result<Self, TchError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("invalid training options: {e}")))?;
        let cfg = Self::from_value(value)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The options of a JSON object, each read as its field's type (no combination checks).
    pub fn from_value(value: serde_json::Value) -> Result<Self, TchError> {
        serde_json::from_value::<TrainConfig>(value.clone()).map_err(|e| {
            // serde's message does not say which option it was reading: the first option that
            // fails on its own is the one
            let alone = |k: &String, v: &serde_json::Value| {
                serde_json::from_value::<TrainConfig>(serde_json::json!({ k.clone(): v.clone() })).err()
            };
            let culprit = value.as_object().and_then(|m| m.iter().find_map(|(k, v)| alone(k, v).map(|e| (k, v, e))));
            match culprit {
                Some((k, v, e)) => invalid(format!("invalid training option {k} = {v}: {e}")),
                None => invalid(format!("invalid training options: {e}")),
            }
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the config serialises")
    }

    /// The feature-map side of the last tapped layer for a crop: the generator halves the size
    /// twice before the residual blocks (layers ≥ 12), so QS slots see `crop/4`.
    fn qs_map_positions(&self) -> i64 {
        let side = (self.crop_size / 4) as i64;
        side * side
    }

    /// Checks values and combinations that cannot work, with messages naming the options.
    pub fn validate(&self) -> Result<(), TchError> {
        let mut errors = Vec::new();
        if self.crop_size < 16 || self.crop_size % 4 != 0 {
            errors.push(format!("crop_size must be a multiple of 4 and >= 16, got {}", self.crop_size));
        }
        if self.load_size < self.crop_size {
            errors.push(format!("load_size ({}) must be >= crop_size ({})", self.load_size, self.crop_size));
        }
        if self.batch_size < 1 {
            errors.push("batch_size must be >= 1".into());
        }
        if self.num_samples < 1 {
            errors.push("num_samples must be >= 1 (the images of each sample grid)".into());
        }
        for (name, value) in
            [("num_patches", self.num_patches), ("ngf", self.ngf), ("ndf", self.ndf), ("netF_nc", self.netf_nc)]
        {
            if value < 1 {
                errors.push(format!("{name} must be >= 1, got {value}"));
            }
        }
        if self.mode.qs().is_some() && self.qs_map_positions() < self.num_patches {
            let side = self.crop_size / 4;
            errors.push(format!(
                "crop_size {} gives {side}x{side} = {} positions on the QS-Attn layers, fewer than num_patches = {} \
                 (docs/algorithm.md Q23): use crop_size >= {} or fewer patches",
                self.crop_size,
                self.qs_map_positions(),
                self.num_patches,
                4 * (self.num_patches as f64).sqrt().ceil() as i64
            ));
        }
        if self.n_epochs < 0 || self.n_epochs_decay < 0 || self.n_epochs + self.n_epochs_decay < 1 {
            errors.push("n_epochs + n_epochs_decay must be >= 1 (and neither negative)".into());
        }
        if self.nce_layers.is_empty() || self.nce_layers.iter().any(|&l| l > 20) {
            errors.push(format!("nce_layers must be indices of generator layers (0..=20), got {:?}", self.nce_layers));
        }
        if let Some(slots) = &self.qs_slots {
            if slots.iter().any(|&s| s >= self.nce_layers.len()) {
                errors.push(format!("qs_slots {:?} must index nce_layers (length {})", slots, self.nce_layers.len()));
            }
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            errors.push(format!("ema_decay must be in [0, 1) (0 = off), got {}", self.ema_decay));
        }
        if !(self.nce_t > 0.0 && self.lr > 0.0) {
            errors.push("nce_T and lr must be positive".into());
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                errors.push(format!("{name} must be in [0, 1), got {beta}"));
            }
        }
        let numbers = [
            ("lr", self.lr),
            ("nce_T", self.nce_t),
            ("lambda_GAN", self.lambda_gan),
            ("lambda_NCE", self.lambda_nce),
            ("lambda_gp", self.lambda_gp),
            ("init_gain", self.init_gain),
        ];
        for (name, value) in numbers {
            if !value.is_finite() {
                errors.push(format!("{name} must be a finite number, got {value}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(errors.join("; ")))
        }
    }

    /// The QS-Attn slots: explicit, or every slot from index 3 on (the reference,
    /// docs/algorithm.md Q4).
    pub fn qs_slot_list(&self) -> Vec<usize> {
        match (&self.qs_slots, self.mode.qs()) {
            (_, None) => vec![],
            (Some(s), _) => s.clone(),
            (None, _) => default_qs_slots(self.nce_layers.len()),
        }
    }

    /// Learning-rate multiplier for the 1-based `epoch` (docs/algorithm.md §11.3):
    /// `1 − max(0, e + epoch_count − n_epochs) / (n_epochs_decay + 1)` with `e = epoch − epoch_count`
    /// completed epochs.
    pub fn lr_multiplier(&self, epoch: i64) -> f64 {
        let completed = epoch - self.epoch_count;
        1.0 - ((completed + self.epoch_count - self.n_epochs).max(0) as f64) / ((self.n_epochs_decay + 1) as f64)
    }
}
