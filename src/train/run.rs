//! The schedule of a run: epochs of batches from the loader, one [`Trainer::advance`] per
//! iteration (the step, then the loss log, sample grids and checkpoints when due), and
//! [`Trainer::finish`] to close it. [`Trainer::fit`] runs the schedule to its end; Python drives
//! `advance` itself so that its callbacks, evaluation and notebooks sit between iterations.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, TchError, Tensor};

use super::run_dir;
use super::trainer::{StepLosses, Trainer};
use crate::data::dataset::{Direction, UnalignedDataset};
use crate::data::image_io;
use crate::data::loader::{epoch_batches_from, EpochBatches, LoaderConfig};
use crate::data::transform::TransformConfig;
use crate::error::invalid;

/// What an iteration reports.
#[derive(Debug, Clone)]
pub struct Progress {
    pub epoch: i64,
    pub last_epoch: i64,
    /// Batches of `epoch` trained on, this one included.
    pub epoch_iter: usize,
    pub iters_per_epoch: usize,
    pub total_iters: u64,
    /// Present on logging iterations (every `print_freq`).
    pub losses: Option<Vec<(&'static str, f64)>>,
    /// This iteration ended its epoch (`epoch` is the epoch it ended).
    pub epoch_end: bool,
}

/// What a run produced when it stopped.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub latest_checkpoint: Option<PathBuf>,
    pub samples: Vec<PathBuf>,
    pub log: PathBuf,
    pub final_losses: Vec<(String, f64)>,
    pub total_iters: u64,
    pub interrupted: bool,
}

/// The open data and outputs of a run.
pub(super) struct RunState {
    dataset: Arc<UnalignedDataset>,
    sample_pairs: Vec<(Tensor, Tensor)>,
    /// The loss log (`None` on a process that does not write).
    log: Option<File>,
    /// The batches of the epoch in progress (`None` between epochs).
    batches: Option<EpochBatches>,
    iters_per_epoch: usize,
    summary: Summary,
    /// The losses of the last iteration, kept for the summary.
    last: Option<StepLosses>,
}

impl Trainer {
    pub fn run_dir(&self) -> PathBuf {
        Path::new(&self.cfg.checkpoints_dir).join(&self.cfg.name)
    }

    pub fn last_epoch(&self) -> i64 {
        self.cfg.n_epochs + self.cfg.n_epochs_decay
    }

    /// The loss terms of the last iteration of the schedule.
    pub fn last_losses(&self) -> Option<&StepLosses> {
        self.run.as_ref().and_then(|r| r.last.as_ref())
    }

    /// The schedule is complete (all epochs, or `max_iters` iterations).
    pub fn finished(&self) -> bool {
        self.epoch > self.last_epoch() || self.cfg.max_iters.is_some_and(|m| self.total_iters >= m)
    }

    /// The loader's view of the options (this process's shard in a distributed run).
    fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.cfg.batch_size,
            seed: self.cfg.seed,
            workers: self.cfg.num_threads.max(1),
            prefetch: 4,
            serial_batches: self.cfg.serial_batches,
            shard: self.shard,
        }
    }

    fn open_run(&mut self) -> Result<(), TchError> {
        if self.run.is_some() {
            return Ok(());
        }
        let run_dir = self.run_dir();
        let root = PathBuf::from(&self.cfg.dataroot);
        let direction: Direction = self.cfg.direction.parse()?;
        let dataset = Arc::new(UnalignedDataset::open(&root, "train", direction)?);
        let log_path = run_dir.join("loss_log.jsonl");
        let (log, sample_pairs) = if self.writer {
            run_dir::prepare(&run_dir, self.resumed_at, self.cfg.overwrite)?;
            std::fs::create_dir_all(run_dir.join("samples")).map_err(|e| invalid(format!("{}: {e}", run_dir.display())))?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| invalid(format!("{}: {e}", log_path.display())))?;
            (Some(log), sample_images(&root, direction, self.cfg.num_samples, self.cfg.crop_size)?)
        } else {
            (None, Vec::new())
        };
        let summary = Summary { run_dir, log: log_path, ..Summary::default() };
        self.run = Some(RunState { dataset, sample_pairs, log, batches: None, iters_per_epoch: 0, summary, last: None });
        Ok(())
    }

    /// Trains one iteration of the schedule (opening the data on the first call, starting
    /// epochs as they come) and writes what is due: the loss log line, a sample grid, the
    /// latest and the epoch checkpoints. `None` once the schedule is complete.
    pub fn advance(&mut self) -> Result<Option<Progress>, TchError> {
        if self.finished() {
            return Ok(None);
        }
        self.open_run()?;
        if self.run.as_ref().is_some_and(|r| r.batches.is_none()) {
            self.set_lr();
            // Decay-phase rule (§2, Q21): no resize jitter after n_epochs.
            let load_size = if self.epoch > self.cfg.n_epochs { self.cfg.crop_size } else { self.cfg.load_size };
            let transform = TransformConfig { load_size, crop_size: self.cfg.crop_size, flip: !self.cfg.no_flip };
            let loader = self.loader_config();
            let run = self.run.as_mut().expect("opened above");
            let batches = epoch_batches_from(run.dataset.clone(), transform, &loader, self.epoch as u64, self.epoch_iter);
            if batches.num_batches() == 0 {
                return Err(invalid(format!(
                    "the training set has fewer images than batch_size = {} (times the number of processes)",
                    self.cfg.batch_size
                )));
            }
            run.iters_per_epoch = batches.num_batches();
            run.batches = Some(batches);
        }
        let run = self.run.as_mut().expect("opened above");
        let next = run.batches.as_mut().and_then(Iterator::next);
        let batch = match next {
            Some(batch) => batch?,
            None => {
                // a resumed epoch with no batch left: close it and go on with the next
                self.end_epoch()?;
                return self.advance();
            }
        };
        let losses = self.step(&batch.a, &batch.b)?;
        self.epoch_iter += 1;
        self.total_iters += 1;
        let logging = self.total_iters % self.cfg.print_freq.max(1) == 0;
        if logging {
            self.guard.verify()?; // the losses are read from the device here anyway
        }
        let values = logging.then(|| losses.values());
        let lr = self.cfg.lr * self.cfg.lr_multiplier(self.epoch);
        let run = self.run.as_mut().expect("opened above");
        if let (Some(values), Some(log)) = (&values, run.log.as_mut()) {
            write_log_line(log, self.epoch, self.epoch_iter, self.total_iters, lr, values)?;
            run.summary.final_losses = values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        }
        run.last = Some(losses);
        let iters_per_epoch = run.iters_per_epoch;
        if self.total_iters % self.cfg.display_freq.max(1) == 0 {
            self.write_samples()?;
        }
        if self.total_iters % self.cfg.save_latest_freq.max(1) == 0 {
            self.save_latest()?;
        }
        let mut progress = Progress {
            epoch: self.epoch,
            last_epoch: self.last_epoch(),
            epoch_iter: self.epoch_iter,
            iters_per_epoch,
            total_iters: self.total_iters,
            losses: values,
            epoch_end: false,
        };
        if self.epoch_iter >= iters_per_epoch {
            self.end_epoch()?;
            progress.epoch_end = true;
        }
        Ok(Some(progress))
    }

    /// Closes the epoch in progress: its checkpoint when due, then the next epoch's position.
    fn end_epoch(&mut self) -> Result<(), TchError> {
        if self.writer && (self.epoch - self.cfg.epoch_count + 1) % self.cfg.save_epoch_freq.max(1) == 0 {
            self.save(&self.run_dir().join(format!("epoch_{}.safetensors", self.epoch)))?;
        }
        self.epoch += 1;
        self.epoch_iter = 0;
        if let Some(run) = self.run.as_mut() {
            run.batches = None;
        }
        Ok(())
    }

    /// Ends a run (schedule complete or stopped early, `interrupted`): a last sample grid
    /// unless one was just written, and the latest checkpoint. Returns the summary; a later
    /// `advance` continues the schedule.
    pub fn finish(&mut self, interrupted: bool) -> Result<Summary, TchError> {
        self.open_run()?;
        if self.total_iters % self.cfg.display_freq.max(1) != 0 || self.run.as_ref().is_some_and(|r| r.summary.samples.is_empty()) {
            self.write_samples()?;
        }
        self.save_latest()?;
        let total_iters = self.total_iters;
        let run = self.run.as_mut().expect("opened above");
        if run.summary.final_losses.is_empty() {
            if let Some(last) = &run.last {
                run.summary.final_losses = last.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            }
        }
        run.summary.total_iters = total_iters;
        run.summary.interrupted = interrupted;
        Ok(run.summary.clone())
    }

    /// Trains from the current position to the end of the schedule (or `max_iters`, or until
    /// `on_progress` returns false, e.g. on Ctrl-C), writing logs, sample grids and checkpoints
    /// into `<checkpoints_dir>/<name>/`. The latest checkpoint is always written before
    /// returning.
    pub fn fit(&mut self, on_progress: &mut dyn FnMut(&Progress) -> bool) -> Result<Summary, TchError> {
        while let Some(progress) = self.advance()? {
            if !on_progress(&progress) {
                return self.finish(true);
            }
        }
        self.finish(false)
    }

    /// Writes `latest.safetensors` (on the writing process) and returns its path.
    pub fn save_latest(&mut self) -> Result<PathBuf, TchError> {
        let path = self.run_dir().join("latest.safetensors");
        if self.writer {
            self.save(&path)?;
            if let Some(run) = self.run.as_mut() {
                run.summary.latest_checkpoint = Some(path.clone());
            }
        }
        Ok(path)
    }

    /// A grid of test translations: per row source | translation | target-domain image |
    /// identity (on the writing process).
    fn write_samples(&mut self) -> Result<(), TchError> {
        let Some(run) = self.run.as_ref().filter(|_| self.writer) else { return Ok(()) };
        let g = &self.nets.g;
        let rows = tch::no_grad(|| -> Result<Vec<Vec<Tensor>>, TchError> {
            run.sample_pairs
                .iter()
                .map(|(a, b)| {
                    let (a, b) = (a.to_device(self.device), b.to_device(self.device));
                    let out = g.translate(&Tensor::cat(&[&a, &b], 0))?.to_device(Device::Cpu);
                    Ok(vec![a.get(0).to_device(Device::Cpu), out.get(0), b.get(0).to_device(Device::Cpu), out.get(1)])
                })
                .collect()
        })?;
        let path = self.run_dir().join("samples").join(format!("iter_{:07}.png", self.total_iters));
        image_io::save_grid(&rows, &path)?;
        if let Some(run) = self.run.as_mut() {
            run.summary.samples.push(path);
        }
        Ok(())
    }
}

/// Up to `n` (source, target) pairs from testA/testB (or the training folders), crop-sized;
/// unreadable files are left out (the loader warns about them). Read before the first
/// iteration: no pair at all is an error then, not at the first sample grid.
fn sample_images(root: &Path, direction: Direction, n: usize, size: u32) -> Result<Vec<(Tensor, Tensor)>, TchError> {
    let set = UnalignedDataset::open(root, "test", direction).or_else(|_| UnalignedDataset::open(root, "train", direction))?;
    let readable = |files: &[PathBuf]| -> Vec<Tensor> {
        files.iter().filter_map(|f| image_io::load_image(f, Some(size)).ok()).take(n).collect()
    };
    let pairs: Vec<(Tensor, Tensor)> = readable(&set.a).into_iter().zip(readable(&set.b)).collect();
    if pairs.is_empty() {
        let folder = |files: &[PathBuf]| files.first().and_then(|f| f.parent()).map_or_else(String::new, |d| d.display().to_string());
        return Err(invalid(if n == 0 {
            "num_samples must be >= 1 (the images of each sample grid)".to_string()
        } else {
            format!("no sample grid can be made: none of the images in {} or none in {} could be read", folder(&set.a), folder(&set.b))
        }));
    }
    Ok(pairs)
}

fn write_log_line(
    log: &mut File,
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
