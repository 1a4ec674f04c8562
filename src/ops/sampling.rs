//! Random patch positions for the CUT slots (spec §7.2): the first `min(N, P)` entries of a
//! uniformly random permutation of `0..P`, shared by all images of the batch (the reference,
//! Q2) or drawn per image. Seedable and independent of torch's global RNG, so a run's patch
//! positions are reproducible on every device.
//!
//! For a CUDA graph the draws of the captured step are recorded instead of made
//! ([`PatchSampler::record_draws`]): each returns a device tensor that the graph reads, and
//! [`PatchSampler::redraw`] fills them anew before every replay, consuming the generator exactly
//! as the draws of an uncaptured step would.
use std::sync::Mutex;

use tch::{Device, Kind, TchError, Tensor};

use crate::device::to_device_async;
use crate::error::invalid;
use crate::rng::SplitMix64;

/// Seedable sampler of random patch positions.
#[derive(Debug)]
pub struct PatchSampler {
    rng: SplitMix64,
    /// While recording (a CUDA-graph capture), the draws asked for, in order (behind a mutex
    /// for `Sync`: they hold tensors).
    recording: Option<Mutex<Vec<RecordedDraw>>>,
}

/// A draw asked for while recording: its arguments, and the device tensor that receives the
/// ids before every replay.
#[derive(Debug)]
pub struct RecordedDraw {
    num_positions: i64,
    num_patches: i64,
    num_images: i64,
    per_image: bool,
    ids: Tensor,
}

impl PatchSampler {
    pub fn new(seed: u64) -> Self {
        PatchSampler { rng: SplitMix64::new(seed), recording: None }
    }

    /// From now on, until [`PatchSampler::finish_recording`], `sample` draws nothing: it records
    /// the draw and returns an uninitialised device tensor of the ids' shape for it.
    pub fn record_draws(&mut self) {
        self.recording = Some(Mutex::new(Vec::new()));
    }

    /// Ends recording; the draws asked for since [`PatchSampler::record_draws`].
    pub fn finish_recording(&mut self) -> Vec<RecordedDraw> {
        self.recording.take().map(|draws| draws.into_inner().unwrap_or_else(|e| e.into_inner())).unwrap_or_default()
    }

    /// Makes each recorded draw, in order, into its device tensor (queued copies, nothing
    /// waits): the same ids, from the same generator state, as those draws would have given.
    pub fn redraw(&mut self, draws: &[RecordedDraw]) -> Result<(), TchError> {
        for d in draws {
            let ids = self.draw(d.num_positions, d.num_patches, d.num_images, d.per_image);
            d.ids.shallow_clone().f_copy_(&to_device_async(&ids, d.ids.device()))?;
        }
        Ok(())
    }

    /// The generator's state, e.g. to store in a checkpoint; `PatchSampler::new(state)` resumes.
    pub fn state(&self) -> u64 {
        self.rng.state()
    }

    /// The first `k` entries of a uniform random permutation of `0..p` (partial Fisher–Yates).
    fn partial_permutation(&mut self, p: i64, k: i64) -> Vec<i64> {
        let mut perm: Vec<i64> = (0..p).collect();
        for i in 0..k as usize {
            let j = i + self.rng.below(p as usize - i);
            perm.swap(i, j);
        }
        perm.truncate(k as usize);
        perm
    }

    /// Patch ids for `num_positions` positions: `(min(N, P),)` shared by the batch, or
    /// `(num_images, min(N, P))` when `per_image`.
    pub fn sample(
        &mut self,
        num_positions: i64,
        num_patches: i64,
        num_images: i64,
        per_image: bool,
        device: Device,
    ) -> Result<Tensor, TchError> {
        if num_positions < 1 || num_patches < 1 || num_images < 1 {
            return Err(invalid(format!(
                "num_positions, num_patches and num_images must be >= 1, got {num_positions}, {num_patches}, {num_images}"
            )));
        }
        if let Some(recorded) = &mut self.recording {
            let recorded = recorded.get_mut().unwrap_or_else(|e| e.into_inner());
            let k = num_patches.min(num_positions);
            let shape = if per_image { vec![num_images, k] } else { vec![k] };
            let ids = Tensor::empty(shape, (Kind::Int64, device));
            recorded.push(RecordedDraw { num_positions, num_patches, num_images, per_image, ids: ids.shallow_clone() });
            return Ok(ids);
        }
        let ids = self.draw(num_positions, num_patches, num_images, per_image);
        Ok(to_device_async(&ids, device))
    }

    /// The ids of one draw (arguments checked by `sample`), int64 on the host.
    fn draw(&mut self, num_positions: i64, num_patches: i64, num_images: i64, per_image: bool) -> Tensor {
        let k = num_patches.min(num_positions);
        if per_image {
            let rows: Vec<i64> = (0..num_images).flat_map(|_| self.partial_permutation(num_positions, k)).collect();
            Tensor::from_slice(&rows).view([num_images, k])
        } else {
            Tensor::from_slice(&self.partial_permutation(num_positions, k))
        }
    }
}
