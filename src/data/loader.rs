//! One epoch of training batches (the loader of docs/algorithm.md §2: shuffle unless
//! `serial_batches`, `drop_last`), computed by worker threads ahead of the consumer and yielded in
//! order.
//!
//! Determinism: every random draw of item `i` comes from `SplitMix64::from_parts([seed, epoch, i])`
//! and the A order from `SplitMix64::from_parts([seed, epoch])`, so the batches depend on
//! `(seed, epoch)` only, never on the number of workers or their timing.
//!
//! Data-parallel runs: with `shard = (r, W)` the global batch `k` is the `W·B` items
//! `k·W·B ..`, and process `r` takes its `r`-th block of `B` (disjoint shards of one shared
//! shuffle, `DistributedSampler` semantics); the union over the ranks is exactly the batch a
//! single process with batch size `W·B` sees.
//!
//! Threads: worker `w` of `W` computes batches `w, w + W, w + 2W, …` and hands them over its
//! own bounded channel (capacity `ceil(prefetch / W)`); the consumer reads channel `k mod W`
//! for batch `k`, so batches come in order with no reordering buffer, and at most about
//! `prefetch + W` batches exist at once. Dropping the iterator sets a stop flag, closes the
//! channels and joins the workers (each finishes at most the batch it is computing).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use image::RgbImage;
use tch::{TchError, Tensor};

use super::dataset::UnalignedDataset;
use super::image_io::decode_rgb;
use super::transform::{augment, push_chw, TransformConfig};
use crate::error::{invalid, message};
use crate::rng::SplitMix64;

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch; only full batches are yielded (`drop_last`).
    pub batch_size: usize,
    pub seed: u64,
    /// Worker threads; 0 computes the batches on the caller's thread when it asks for them.
    pub workers: usize,
    /// Batches computed ahead, in all (at least one per worker is always in flight).
    pub prefetch: usize,
    /// No shuffling: item `i` pairs `A[i mod |A|]` with `B[i mod |B|]`.
    pub serial_batches: bool,
    /// `(rank, world_size)` of a data-parallel run; `(0, 1)` in a single process.
    pub shard: (usize, usize),
}

/// A batch of `B` items: `a`, `b` are B×3×H×W f32 CPU tensors in [−1, 1]; the paths are the
/// files actually used (after any replacement of an unreadable file).
#[derive(Debug)]
pub struct Batch {
    pub a: Tensor,
    pub b: Tensor,
    pub a_paths: Vec<PathBuf>,
    pub b_paths: Vec<PathBuf>,
}

/// Files found unreadable so far in this process (each warned about once, then skipped).
static UNREADABLE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// The files the loader has found unreadable and skipped so far in this process, sorted.
pub fn unreadable_images() -> Vec<PathBuf> {
    UNREADABLE.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default()
}

fn known_unreadable(path: &Path) -> bool {
    UNREADABLE.lock().map(|s| s.contains(path)).unwrap_or(false)
}

/// Records an unreadable file; the first time, warns on stderr.
fn mark_unreadable(path: &Path, err: &TchError) {
    let first = UNREADABLE.lock().map(|mut s| s.insert(path.to_path_buf())).unwrap_or(true);
    if first {
        eprintln!("qs_attn: warning: skipping unreadable image {}: {}", path.display(), message(err));
    }
}

/// Decodes `files[start]`, or, when it cannot be read, the next file of the domain (cyclically)
/// that can: a deterministic replacement, whatever thread runs it.
fn load_or_next(files: &[PathBuf], start: usize, domain: &str) -> Result<(PathBuf, RgbImage), TchError> {
    for off in 0..files.len() {
        let path = &files[(start + off) % files.len()];
        if known_unreadable(path) {
            continue;
        }
        match decode_rgb(path) {
            Ok(img) => return Ok((path.clone(), img)),
            Err(e) => mark_unreadable(path, &e),
        }
    }
    Err(invalid(format!(
        "none of the {} images of domain {domain} could be read (e.g. {})",
        files.len(),
        files.first().map_or_else(String::new, |p| p.display().to_string())
    )))
}

/// Everything needed to compute any batch of the epoch; shared by the workers.
struct EpochPlan {
    dataset: Arc<UnalignedDataset>,
    transform: TransformConfig,
    batch_size: usize,
    shard: (usize, usize),
    seed: u64,
    epoch: u64,
    serial: bool,
    /// Item `i` uses `A[order[i] mod |A|]`.
    order: Vec<usize>,
}

impl EpochPlan {
    /// Item `i`: its A and B images transformed and appended (C×H×W) to the buffers; returns
    /// the two paths used and the (width, height) of the images.
    fn item(
        &self,
        i: usize,
        a_buf: &mut Vec<f32>,
        b_buf: &mut Vec<f32>,
    ) -> Result<(PathBuf, PathBuf, (u32, u32)), TchError> {
        let ds = &self.dataset;
        let mut rng = SplitMix64::from_parts(&[self.seed, self.epoch, i as u64]);
        // which files: A in epoch order; B uniform with replacement, or serial
        let a_idx = self.order[i] % ds.a.len();
        let b_idx = if self.serial { i % ds.b.len() } else { rng.below(ds.b.len()) };
        // independent crop/flip draws for A and B
        let (mut rng_a, mut rng_b) = (rng.split(), rng.split());
        let (a_path, a_img) = load_or_next(&ds.a, a_idx, "A")?;
        let (b_path, b_img) = load_or_next(&ds.b, b_idx, "B")?;
        let a = augment(&a_img, &self.transform, &mut rng_a)?;
        let b = augment(&b_img, &self.transform, &mut rng_b)?;
        if a.dimensions() != b.dimensions() {
            return Err(invalid("internal error: A and B images of one item differ in size"));
        }
        push_chw(&a, a_buf);
        push_chw(&b, b_buf);
        Ok((a_path, b_path, a.dimensions()))
    }

    /// Batch `k` of this shard: items `(k·W + r)·B .. (k·W + r + 1)·B`, stacked.
    fn batch(&self, k: usize) -> Result<Batch, TchError> {
        let (mut a_buf, mut b_buf) = (Vec::new(), Vec::new());
        let (mut a_paths, mut b_paths) = (Vec::new(), Vec::new());
        let mut size = None;
        let (rank, world) = self.shard;
        let first = (k * world + rank) * self.batch_size;
        for i in first..first + self.batch_size {
            let (pa, pb, dims) = self.item(i, &mut a_buf, &mut b_buf)?;
            if size.is_some_and(|s| s != dims) {
                return Err(invalid("internal error: images of one batch differ in size"));
            }
            size = Some(dims);
            a_paths.push(pa);
            b_paths.push(pb);
        }
        let (w, h) = size.unwrap_or((0, 0));
        let shape = [self.batch_size as i64, 3, h as i64, w as i64];
        Ok(Batch {
            a: Tensor::from_slice(&a_buf).view(shape),
            b: Tensor::from_slice(&b_buf).view(shape),
            a_paths,
            b_paths,
        })
    }
}

enum Source {
    /// The configuration was invalid: yield this error once.
    Invalid(Option<TchError>),
    /// `workers = 0`: computed on demand on the caller's thread.
    Inline(EpochPlan),
    Threads {
        /// The batch the workers started at.
        first: usize,
        receivers: Vec<Receiver<Result<Batch, TchError>>>,
        stop: Arc<AtomicBool>,
        handles: Vec<JoinHandle<()>>,
    },
}

/// The batches of one epoch, in order: `Iterator<Item = Result<Batch, TchError>>`.
pub struct EpochBatches {
    num_batches: usize,
    next: usize,
    source: Source,
}

impl EpochBatches {
    /// Full batches in this epoch: `len / batch_size` (0 when the configuration is invalid).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

/// Starts one epoch (`epoch` as the trainer counts it, e.g. from 1). An invalid configuration
/// (batch size 0, empty domain, crop larger than load size) yields a single error.
pub fn epoch_batches(
    dataset: Arc<UnalignedDataset>,
    transform: TransformConfig,
    cfg: &LoaderConfig,
    epoch: u64,
) -> EpochBatches {
    epoch_batches_from(dataset, transform, cfg, epoch, 0)
}

/// [`epoch_batches`] from batch `first` on (a resumed epoch): the earlier batches are neither
/// computed nor yielded.
pub fn epoch_batches_from(
    dataset: Arc<UnalignedDataset>,
    transform: TransformConfig,
    cfg: &LoaderConfig,
    epoch: u64,
    first: usize,
) -> EpochBatches {
    let invalid_source = |e| EpochBatches { num_batches: 0, next: 0, source: Source::Invalid(Some(e)) };
    if cfg.batch_size == 0 {
        return invalid_source(invalid("batch_size must be positive"));
    }
    let (rank, world) = cfg.shard;
    if rank >= world {
        return invalid_source(invalid(format!("rank {rank} is not below the world size {world}")));
    }
    if dataset.a.is_empty() || dataset.b.is_empty() {
        return invalid_source(invalid("the dataset needs at least one image in each domain"));
    }
    if let Err(e) = transform.validate() {
        return invalid_source(e);
    }
    let len = dataset.len();
    // A order: a seeded Fisher–Yates shuffle of 0..len, or the identity for serial batches
    let mut order: Vec<usize> = (0..len).collect();
    if !cfg.serial_batches {
        let mut rng = SplitMix64::from_parts(&[cfg.seed, epoch]);
        for i in (1..len).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    let num_batches = len / (cfg.batch_size * world); // drop_last
    let first = first.min(num_batches);
    let plan = EpochPlan {
        dataset,
        transform,
        batch_size: cfg.batch_size,
        shard: cfg.shard,
        seed: cfg.seed,
        epoch,
        serial: cfg.serial_batches,
        order,
    };
    if cfg.workers == 0 || num_batches == first {
        return EpochBatches { num_batches, next: first, source: Source::Inline(plan) };
    }
    let workers = cfg.workers.min(num_batches - first);
    let capacity = cfg.prefetch.div_ceil(workers);
    let plan = Arc::new(plan);
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let (tx, rx) = sync_channel(capacity);
        let (plan, worker_stop) = (Arc::clone(&plan), Arc::clone(&stop));
        let spawned = std::thread::Builder::new().name(format!("qs_attn-data-{w}")).spawn(move || {
            for k in (first + w..num_batches).step_by(workers) {
                if worker_stop.load(Ordering::Relaxed) {
                    break;
                }
                // an error stays in its slot; a closed channel (iterator dropped) ends the worker
                if tx.send(plan.batch(k)).is_err() {
                    break;
                }
            }
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                drop(receivers);
                handles.into_iter().for_each(|h: JoinHandle<()>| drop(h.join()));
                return invalid_source(invalid(format!("cannot start a data loader thread: {e}")));
            }
        }
        receivers.push(rx);
    }
    EpochBatches { num_batches, next: first, source: Source::Threads { first, receivers, stop, handles } }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch, TchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let k = self.next;
        match &mut self.source {
            Source::Invalid(e) => e.take().map(Err),
            _ if k >= self.num_batches => None,
            Source::Inline(plan) => {
                self.next += 1;
                Some(plan.batch(k))
            }
            Source::Threads { receivers, first, .. } => {
                self.next += 1;
                match receivers[(k - *first) % receivers.len()].recv() {
                    Ok(batch) => Some(batch),
                    Err(_) => {
                        // the worker died (a panic): report once and end the epoch
                        self.next = self.num_batches;
                        Some(Err(invalid(format!("data loader worker stopped unexpectedly before batch {k}"))))
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match &self.source {
            Source::Invalid(e) => e.is_some() as usize,
            _ => self.num_batches - self.next,
        };
        (left, Some(left))
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        if let Source::Threads { receivers, stop, handles, .. } = &mut self.source {
            // stop flag first, then close the channels so a worker blocked on send wakes up
            stop.store(true, Ordering::Relaxed);
            receivers.clear();
            for h in handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}
