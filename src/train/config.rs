//! Training options: the reference's names and defaults (spec §11.1), plus ours. Parsed from
//! JSON (the Python layer and the CLI send a dict); unknown options are an error.
use serde::{Deserialize, Serialize};
use tch::TchError;

use super::precision::Precision;
use crate::error::invalid;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Folder with trainA/ trainB/ (and testA/ testB/ for samples).
    pub dataroot: String,
    /// Run name: checkpoints and logs go to `<checkpoints_dir>/<name>/`.
    pub name: String,
    pub checkpoints_dir: String,
    /// QS-Attn mode: "global" | "local" | "local_global" | "cross", or "none" (plain CUT).
    pub mode: String,
    /// "geometric" or "reference" (the authors' local windows, spec §8.3).
    pub local_layout: String,
    pub window: i64,
    /// Slots (indices into nce_layers) that use QS-Attn; None = every slot from index 3 on.
    pub qs_slots: Option<Vec<usize>>,
    pub per_image_ids: bool,
    pub direction: String,
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
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub gan_mode: String,
    /// Weight of the WGAN-GP gradient penalty (our extension, gan_mode "wgangp" only; 0 = the
    /// reference's plain WGAN loss, Q14).
    pub lambda_gp: f64,
    #[serde(rename = "lambda_GAN")]
    pub lambda_gan: f64,
    #[serde(rename = "lambda_NCE")]
    pub lambda_nce: f64,
    pub nce_idt: bool,
    pub nce_layers: Vec<usize>,
    #[serde(rename = "nce_T")]
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
    pub init_type: String,
    pub init_gain: f64,
    pub seed: u64,
    /// "cpu", "cuda", "cuda:N".
    pub device: String,
    /// "fp32", or "bf16": autocast to bfloat16 for G and D (the opt-in fast path; F, QS-Attn
    /// and PatchNCE stay float32). See `train::precision`.
    pub precision: String,
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
    /// A NaN or infinite loss or gradient: "stop" (an error) or "skip" (that update). See
    /// `train::guard`.
    pub on_nonfinite: String,
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
            mode: "global".into(),
            local_layout: "geometric".into(),
            window: 7,
            qs_slots: None,
            per_image_ids: false,
            direction: "AtoB".into(),
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
            gan_mode: "lsgan".into(),
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
            init_type: "xavier".into(),
            init_gain: 0.02,
            seed: 0,
            device: "cpu".into(),
            precision: "fp32".into(),
            channels_last: false,
            cudnn_benchmark: true,
            print_freq: 100,
            display_freq: 400,
            save_latest_freq: 5000,
            save_epoch_freq: 5,
            num_samples: 4,
            on_nonfinite: "stop".into(),
            overwrite: false,
        }
    }
}

impl TrainConfig {
    pub fn from_json(json: &str) -> Result<Self, TchError> {
        serde_json::from_str(json).map_err(|e| invalid(format!("invalid training options: {e}")))
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

    /// Checks combinations that cannot work, with messages naming the options.
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
        if self.num_patches < 1 {
            errors.push(format!("num_patches must be >= 1, got {}", self.num_patches));
        }
        if self.mode != "none" && self.qs_map_positions() < self.num_patches {
            let side = self.crop_size / 4;
            errors.push(format!(
                "crop_size {} gives {side}x{side} = {} positions on the QS-Attn layers, fewer than num_patches = {} \
                 (spec Q23): use crop_size >= {} or fewer patches",
                self.crop_size,
                self.qs_map_positions(),
                self.num_patches,
                4 * (self.num_patches as f64).sqrt().ceil() as i64
            ));
        }
        if !["global", "local", "local_global", "cross", "none"].contains(&self.mode.as_str()) {
            errors.push(format!("mode must be global, local, local_global, cross or none, got '{}'", self.mode));
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
        if let Err(e) = self.precision.parse::<Precision>() {
            errors.push(e.to_string());
        }
        if self.nce_t <= 0.0 || self.lr <= 0.0 {
            errors.push("nce_T and lr must be positive".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(errors.join("; ")))
        }
    }

    /// The QS-Attn slots: explicit, or every slot from index 3 on (the reference, Q4).
    pub fn qs_slot_list(&self) -> Vec<usize> {
        match (&self.qs_slots, self.mode.as_str()) {
            (_, "none") => vec![],
            (Some(s), _) => s.clone(),
            (None, _) => (3..self.nce_layers.len()).collect(),
        }
    }

    /// Learning-rate multiplier for the 1-based `epoch` (spec §11.3):
    /// `1 − max(0, e + epoch_count − n_epochs) / (n_epochs_decay + 1)` with `e = epoch − epoch_count`
    /// completed epochs.
    pub fn lr_multiplier(&self, epoch: i64) -> f64 {
        let completed = epoch - self.epoch_count;
        1.0 - ((completed + self.epoch_count - self.n_epochs).max(0) as f64) / ((self.n_epochs_decay + 1) as f64)
    }
}
