//! The schedule of a run: epochs of batches from the loader, one [`Run::advance`] per
//! iteration (the trainer's step, then the loss log, sample grids and checkpoints when due),
//! and [`Run::finish`] to close it. [`Run::fit`] runs the schedule to its end; Python drives
//! `advance` itself so that its callbacks, evaluation and notebooks sit between iterations.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::TchError;

use super::checkpoint;
use super::run_dir;
use super::samples::SamplePairs;
use super::step::StepLosses;
use super::trainer::{GradientSync, Trainer};
use crate::data::dataset::UnalignedDataset;
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
struct RunState {
    dataset: Arc<UnalignedDataset>,
    samples: SamplePairs,
    /// The loss log (`None` on a process that does not write).
    log: Option<File>,
    /// The batches of the epoch in progress (`None` between epochs).
    batches: Option<EpochBatches>,
    iters_per_epoch: usize,
    summary: Summary,
}

/// A trainer driven through its schedule, with the run's data, log and outputs (opened by the
/// first `advance`).
pub struct Run {
    pub trainer: Trainer,
    state: Option<RunState>,
    /// The losses of the last iteration, kept for the summary.
    last: Option<StepLosses>,
}

impl Run {
    pub fn new(trainer: Trainer) -> Self {
        Run { trainer, state: None, last: None }
    }

    pub fn run_dir(&self) -> PathBuf {
        Path::new(&self.trainer.cfg.checkpoints_dir).join(&self.trainer.cfg.name)
    }

    pub fn last_epoch(&self) -> i64 {
        self.trainer.cfg.n_epochs + self.trainer.cfg.n_epochs_decay
    }

    /// The loss terms of the last iteration of the schedule.
    pub fn last_losses(&self) -> Option<&StepLosses> {
        self.last.as_ref()
    }

    /// The schedule is complete (all epochs, or `max_iters` iterations).
    pub fn finished(&self) -> bool {
        let t = &self.trainer;
        t.epoch > self.last_epoch() || t.cfg.max_iters.is_some_and(|m| t.total_iters >= m)
    }

    /// Makes the trainer one process of a data-parallel run (see [`Trainer::distribute`]);
    /// only before the first iteration.
    pub fn distribute(&mut self, rank: usize, world_size: usize, sync: Box<dyn GradientSync>) -> Result<(), TchError> {
        if self.state.is_some() {
            return Err(invalid("distribute() must be called before the first iteration"));
        }
        self.trainer.distribute(rank, world_size, sync)
    }

    /// The loader's view of the options (this process's shard in a distributed run).
    fn loader_config(&self) -> LoaderConfig {
        let cfg = &self.trainer.cfg;
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            workers: cfg.num_threads.max(1),
            prefetch: 4,
            serial_batches: cfg.serial_batches,
            shard: self.trainer.shard,
        }
    }

    fn open(&mut self) -> Result<&mut RunState, TchError> {
        if self.state.is_none() {
            let run_dir = self.run_dir();
            let cfg = &self.trainer.cfg;
            let root = PathBuf::from(&cfg.dataroot);
            let dataset = Arc::new(UnalignedDataset::open(&root, "train", cfg.direction)?);
            let log_path = run_dir.join("loss_log.jsonl");
            let (log, samples) = if self.trainer.writer {
                run_dir::prepare(&run_dir, self.trainer.resumed_at, cfg.overwrite)?;
                std::fs::create_dir_all(run_dir.join("samples"))
                    .map_err(|e| invalid(format!("{}: {e}", run_dir.display())))?;
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .map_err(|e| invalid(format!("{}: {e}", log_path.display())))?;
                (Some(log), SamplePairs::open(&root, cfg.direction, cfg.num_samples, cfg.crop_size)?)
            } else {
                (None, SamplePairs::empty())
            };
            let summary = Summary { run_dir, log: log_path, ..Summary::default() };
            self.state = Some(RunState { dataset, samples, log, batches: None, iters_per_epoch: 0, summary });
        }
        Ok(self.state.as_mut().expect("opened above"))
    }

    /// Starts the epoch in progress: its learning rate and its batches.
    fn start_epoch(&mut self) -> Result<(), TchError> {
        self.trainer.set_lr();
        let cfg = &self.trainer.cfg;
        // Decay-phase rule (docs/algorithm.md §2, Q21): no resize jitter after n_epochs.
        let load_size = if self.trainer.epoch > cfg.n_epochs { cfg.crop_size } else { cfg.load_size };
        let transform = TransformConfig { load_size, crop_size: cfg.crop_size, flip: !cfg.no_flip };
        let loader = self.loader_config();
        let (epoch, epoch_iter, batch_size) = (self.trainer.epoch as u64, self.trainer.epoch_iter, cfg.batch_size);
        let state = self.open()?;
        let batches = epoch_batches_from(state.dataset.clone(), transform, &loader, epoch, epoch_iter);
        if batches.num_batches() == 0 {
            return Err(invalid(format!(
                "the training set has fewer images than batch_size = {batch_size} (times the number of processes)"
            )));
        }
        state.iters_per_epoch = batches.num_batches();
        state.batches = Some(batches);
        Ok(())
    }

    /// Trains one iteration of the schedule (opening the data on the first call, starting
    /// epochs as they come) and writes what is due: the loss log line, a sample grid, the
    /// latest and the epoch checkpoints. `None` once the schedule is complete.
    pub fn advance(&mut self) -> Result<Option<Progress>, TchError> {
        if self.finished() {
            return Ok(None);
        }
        if self.open()?.batches.is_none() {
            self.start_epoch()?;
        }
        let next = self.open()?.batches.as_mut().and_then(Iterator::next);
        let batch = match next {
            Some(batch) => batch?,
            None => {
                // a resumed epoch with no batch left: close it and go on with the next
                self.end_epoch()?;
                return self.advance();
            }
        };
        let losses = self.trainer.step(&batch.a, &batch.b)?;
        let t = &mut self.trainer;
        t.epoch_iter += 1;
        t.total_iters += 1;
        let (epoch, epoch_iter, total_iters, lr) = (t.epoch, t.epoch_iter, t.total_iters, t.lr());
        let (print_freq, display_freq, save_latest_freq) =
            (t.cfg.print_freq, t.cfg.display_freq, t.cfg.save_latest_freq);
        let logging = total_iters % print_freq.max(1) == 0;
        if logging {
            t.guard.verify()?; // the losses are read from the device here anyway
        }
        let values = logging.then(|| losses.values());
        let state = self.open()?;
        if let (Some(values), Some(log)) = (&values, state.log.as_mut()) {
            write_log_line(log, epoch, epoch_iter, total_iters, lr, values)?;
            state.summary.final_losses = values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        }
        let iters_per_epoch = state.iters_per_epoch;
        self.last = Some(losses);
        if total_iters % display_freq.max(1) == 0 {
            self.write_samples()?;
        }
        if total_iters % save_latest_freq.max(1) == 0 {
            self.save_latest()?;
        }
        let mut progress = Progress {
            epoch,
            last_epoch: self.last_epoch(),
            epoch_iter,
            iters_per_epoch,
            total_iters,
            losses: values,
            epoch_end: false,
        };
        if epoch_iter >= iters_per_epoch {
            self.end_epoch()?;
            progress.epoch_end = true;
        }
        Ok(Some(progress))
    }

    /// Closes the epoch in progress: its checkpoint when due, then the next epoch's position.
    fn end_epoch(&mut self) -> Result<(), TchError> {
        let t = &self.trainer;
        if t.writer && (t.epoch - t.cfg.epoch_count + 1) % t.cfg.save_epoch_freq.max(1) == 0 {
            checkpoint::save(t, &self.run_dir().join(format!("epoch_{}.safetensors", t.epoch)))?;
        }
        self.trainer.epoch += 1;
        self.trainer.epoch_iter = 0;
        if let Some(state) = self.state.as_mut() {
            state.batches = None;
        }
        Ok(())
    }

    /// Ends a run (schedule complete or stopped early, `interrupted`): a last sample grid
    /// unless one was just written, and the latest checkpoint. Returns the summary; a later
    /// `advance` continues the schedule.
    pub fn finish(&mut self, interrupted: bool) -> Result<Summary, TchError> {
        let no_grid_yet = self.open()?.summary.samples.is_empty();
        if self.trainer.total_iters % self.trainer.cfg.display_freq.max(1) != 0 || no_grid_yet {
            self.write_samples()?;
        }
        self.save_latest()?;
        let total_iters = self.trainer.total_iters;
        let state = self.state.as_mut().expect("opened above");
        if state.summary.final_losses.is_empty() {
            if let Some(last) = &self.last {
                state.summary.final_losses = last.values().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            }
        }
        state.summary.total_iters = total_iters;
        state.summary.interrupted = interrupted;
        Ok(state.summary.clone())
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
        if self.trainer.writer {
            checkpoint::save(&self.trainer, &path)?;
            if let Some(state) = self.state.as_mut() {
                state.summary.latest_checkpoint = Some(path.clone());
            }
        }
        Ok(path)
    }

    /// A grid of test translations (see `samples.rs`) by the averaged G when `ema_decay` is
    /// on, on the writing process.
    fn write_samples(&mut self) -> Result<(), TchError> {
        if !self.trainer.writer {
            return Ok(());
        }
        let path = self.run_dir().join("samples").join(format!("iter_{:07}.png", self.trainer.total_iters));
        self.open()?;
        let (trainer, state) = (&mut self.trainer, self.state.as_mut().expect("opened above"));
        let rows = trainer.with_averaged_g(|t| state.samples.rows(t.nets.g.as_ref(), t.device))?;
        image_io::save_grid(&rows, &path)?;
        state.summary.samples.push(path);
        Ok(())
    }
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
    let losses: serde_json::Map<String, serde_json::Value> =
        values.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    let line =
        serde_json::json!({"epoch": epoch, "epoch_iter": epoch_iter, "iter": total_iters, "lr": lr, "losses": losses});
    writeln!(log, "{line}").map_err(|e| invalid(format!("writing the loss log: {e}")))
}
