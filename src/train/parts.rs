//! The swappable parts of the training loop: the three networks (G, D, F) and the two losses
//! (GAN, NCE), as traits the loop calls. The built-in implementations here are the Rust
//! networks of `crate::nets` with their variable stores and the losses of `crate::losses` /
//! `crate::ops`; `crate::python::parts` implements the same traits over user-written
//! `torch.nn.Module`s and callables.
//!
//! A network hands the loop its parameters as shared tensors (the very tensors its forward
//! uses, not copies): the optimiser updates them in place and the gradients of the loop's
//! backward passes land on them, whichever side owns them.
use tch::{nn, TchError, Tensor};

use crate::losses::{gan_loss, GanMode};
use crate::nets::projector::{KeysAndQueries, StackedTerms};
use crate::nets::{Discriminator, Generator, Projector};
use crate::ops::{patch_nce_loss, PatchSampler, Reduction};

/// Tensors by name, in a fixed (sorted) order.
pub type Named = Vec<(String, Tensor)>;

/// A network's tensors, shared with it.
pub trait Network: Send {
    /// The trainable parameters (what the optimiser updates).
    fn parameters(&self) -> Result<Named, TchError>;
    /// Everything a checkpoint holds (parameters and buffers), by `state_dict` key.
    fn state(&self) -> Result<Named, TchError>;
}

/// The generator: `forward_with_taps` serves the training step (the translation and the NCE
/// taps of the same pass), `encode` the taps alone, `translate` the sample grids.
pub trait GeneratorPart: Network {
    fn translate(&self, x: &Tensor) -> Result<Tensor, TchError>;
    fn forward_with_taps(&self, x: &Tensor, layers: &[usize]) -> Result<(Tensor, Vec<Tensor>), TchError>;
    fn encode(&self, x: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>, TchError>;
}

/// The discriminator: images → patch logits.
pub trait DiscriminatorPart: Network {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError>;
}

/// The projector (netF): per tapped layer, the keys sampled from the source maps `feat_k` and
/// the queries at the same places (or through the same attention) of the translated maps
/// `feat_q`. `ids` injects the random patch ids of the random slots (tests).
pub trait ProjectorPart: Network {
    fn keys_and_queries(
        &self,
        feat_k: &[Tensor],
        feat_q: &[Tensor],
        num_patches: i64,
        sampler: &mut PatchSampler,
        ids: Option<&[Option<Tensor>]>,
    ) -> Result<KeysAndQueries, TchError>;

    /// Several NCE terms at once, their images stacked one after the other in the maps.
    /// Returns per term the keys and queries per layer. This default makes one
    /// `keys_and_queries` call per term on its images; the built-in projector batches them.
    fn keys_and_queries_of_terms(
        &self,
        terms: &StackedTerms,
        num_patches: i64,
        sampler: &mut PatchSampler,
    ) -> Result<Vec<KeysAndQueries>, TchError> {
        let mut out = Vec::with_capacity(terms.ids.len());
        for (t, term_ids) in terms.ids.iter().enumerate() {
            let (k, q) = (terms.term_maps(terms.feat_k, t), terms.term_maps(terms.feat_q, t));
            out.push(self.keys_and_queries(&k, &q, num_patches, sampler, *term_ids)?);
        }
        Ok(out)
    }
}

/// A GAN objective: the scalar loss of a discriminator prediction against the real or fake label.
pub trait GanLossPart: Send {
    fn loss(&self, prediction: &Tensor, target_is_real: bool) -> Result<Tensor, TchError>;
}

/// A contrastive objective on one layer: queries and keys `(B·N) × C`, `num_images` = B;
/// returns a scalar (the trainer weights it by λ_NCE and averages over the layers).
pub trait NceLossPart: Send {
    fn loss(&self, queries: &Tensor, keys: &Tensor, num_images: i64) -> Result<Tensor, TchError>;

    /// The losses of several groups at once (the trainer's layers of every NCE term):
    /// `groups[g]` = (queries, keys) of `num_images` images. Returns the 1-D tensor of the
    /// groups' losses. This default makes one `loss` call per group; the built-in PatchNCE
    /// evaluates groups of one shape in one pass.
    fn losses(&self, groups: &[(Tensor, Tensor)], num_images: i64) -> Result<Tensor, TchError> {
        one_call_per_group(self, groups, num_images)
    }
}

/// `[part.loss(q, k, num_images) for (q, k) in groups]` as a 1-D tensor.
fn one_call_per_group<P: NceLossPart + ?Sized>(
    part: &P,
    groups: &[(Tensor, Tensor)],
    num_images: i64,
) -> Result<Tensor, TchError> {
    let each = groups.iter().map(|(q, k)| part.loss(q, k, num_images)).collect::<Result<Vec<_>, _>>()?;
    Tensor::f_stack(&each, 0)
}

/// A Rust network with the variable store that owns its parameters.
pub struct Owned<N> {
    pub vs: nn::VarStore,
    pub net: N,
}

fn sorted(mut named: Named) -> Named {
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

impl<N: Send> Network for Owned<N> {
    fn parameters(&self) -> Result<Named, TchError> {
        Ok(sorted(self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect()))
    }

    fn state(&self) -> Result<Named, TchError> {
        Ok(sorted(self.vs.variables().into_iter().collect()))
    }
}

impl GeneratorPart for Owned<Generator> {
    fn translate(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.net.f_forward(x)
    }

    fn forward_with_taps(&self, x: &Tensor, layers: &[usize]) -> Result<(Tensor, Vec<Tensor>), TchError> {
        self.net.forward_with_taps(x, layers)
    }

    fn encode(&self, x: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>, TchError> {
        self.net.encode(x, layers)
    }
}

impl DiscriminatorPart for Owned<Discriminator> {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.net.f_forward(x)
    }
}

impl ProjectorPart for Owned<Projector> {
    fn keys_and_queries(
        &self,
        feat_k: &[Tensor],
        feat_q: &[Tensor],
        num_patches: i64,
        sampler: &mut PatchSampler,
        ids: Option<&[Option<Tensor>]>,
    ) -> Result<KeysAndQueries, TchError> {
        let (keys, samples) = self.net.sample_source(feat_k, num_patches, sampler, ids)?;
        let queries = self.net.sample_target(feat_q, &samples)?;
        Ok((keys, queries))
    }

    fn keys_and_queries_of_terms(
        &self,
        terms: &StackedTerms,
        num_patches: i64,
        sampler: &mut PatchSampler,
    ) -> Result<Vec<KeysAndQueries>, TchError> {
        self.net.keys_and_queries_of_terms(terms, num_patches, sampler)
    }
}

impl GanLossPart for GanMode {
    fn loss(&self, prediction: &Tensor, target_is_real: bool) -> Result<Tensor, TchError> {
        gan_loss(*self, prediction, target_is_real)
    }
}

/// The built-in PatchNCE loss (docs/algorithm.md §9): temperature τ, negatives from the same image, keys
/// detached, mean over the rows.
pub struct PatchNce {
    pub tau: f64,
}

impl NceLossPart for PatchNce {
    fn loss(&self, queries: &Tensor, keys: &Tensor, num_images: i64) -> Result<Tensor, TchError> {
        patch_nce_loss(queries, keys, self.tau, num_images, Reduction::Mean, true)
    }

    /// Groups of one shape are stacked as more images of one PatchNCE call (negatives are per
    /// image, so each group's rows see only their own image's keys): per-row losses, then the
    /// mean of each group's rows. Groups of differing shapes take one call each.
    fn losses(&self, groups: &[(Tensor, Tensor)], num_images: i64) -> Result<Tensor, TchError> {
        let same_shape = groups.windows(2).all(|w| w[0].0.size() == w[1].0.size() && w[0].1.size() == w[1].1.size());
        if groups.len() < 2 || !same_shape {
            return one_call_per_group(self, groups, num_images);
        }
        let (queries, keys): (Vec<&Tensor>, Vec<&Tensor>) = groups.iter().map(|(q, k)| (q, k)).unzip();
        let (q, k) = (Tensor::f_cat(&queries, 0)?, Tensor::f_cat(&keys, 0)?);
        let per_row = patch_nce_loss(&q, &k, self.tau, num_images * groups.len() as i64, Reduction::None, true)?;
        per_row.f_view([groups.len() as i64, -1])?.f_mean_dim(1, false, None)
    }
}
