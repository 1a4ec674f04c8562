//! Random patch positions for the CUT slots (docs/algorithm.md §7.2): the first `min(N, P)`
//! entries of a uniformly random permutation of `0..P`, shared by all images of the batch (the
//! reference, docs/algorithm.md Q2) or drawn per image. Seedable and independent of torch's global
//! RNG, so a run's patch positions are reproducible on every device.
use std::collections::HashMap;

use tch::{Device, Kind, TchError, Tensor};

use crate::device::to_device_async;
use crate::error::invalid;
use crate::rng::SplitMix64;

/// The most ids one call returns (2²⁴, 128 MiB of int64; a training step needs thousands): a
/// bound checked before allocating, so an absurd request is an error instead of an allocation
/// failure that aborts the process.
pub const MAX_IDS: i64 = 1 << 24;

/// Seedable sampler of random patch positions.
#[derive(Clone, Debug)]
pub struct PatchSampler {
    rng: SplitMix64,
}

impl PatchSampler {
    pub fn new(seed: u64) -> Self {
        PatchSampler { rng: SplitMix64::new(seed) }
    }

    /// The generator's state, e.g. to store in a checkpoint; `PatchSampler::new(state)` resumes.
    pub fn state(&self) -> u64 {
        self.rng.state()
    }

    /// The first `k` entries of a uniform random permutation of `0..p` (partial Fisher–Yates
    /// over a virtual `0..p`: only the displaced entries are stored, so the memory is O(k)
    /// whatever `p` is). Entry `i` is final once step `i` has swapped it (later swaps reach only
    /// indices above `i`), so the output is the dense algorithm's, draw for draw.
    fn partial_permutation(&mut self, p: i64, k: i64) -> Vec<i64> {
        let mut displaced: HashMap<usize, i64> = HashMap::with_capacity(2 * k as usize);
        let mut out = Vec::with_capacity(k as usize);
        for i in 0..k as usize {
            let j = i + self.rng.below(p as usize - i);
            let value_at = |m: &HashMap<usize, i64>, at: usize| m.get(&at).copied().unwrap_or(at as i64);
            let (vi, vj) = (value_at(&displaced, i), value_at(&displaced, j));
            displaced.insert(j, vi);
            out.push(vj);
        }
        out
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
        let k = num_patches.min(num_positions);
        let rows = if per_image { num_images } else { 1 };
        match k.checked_mul(rows) {
            Some(n) if n <= MAX_IDS => {}
            _ => {
                return Err(invalid(format!(
                    "{rows} x {k} patch ids are too many (at most {MAX_IDS} per call): num_patches or num_images is too large"
                )))
            }
        }
        let ids = if per_image {
            let rows: Vec<i64> = (0..num_images).flat_map(|_| self.partial_permutation(num_positions, k)).collect();
            Tensor::from_slice(&rows).view([num_images, k])
        } else {
            Tensor::from_slice(&self.partial_permutation(num_positions, k))
        };
        Ok(to_device_async(&ids.to_kind(Kind::Int64), device))
    }
}
