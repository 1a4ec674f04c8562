//! The training step as a CUDA graph (option `cuda_graph`): after a few ordinary iterations the
//! whole step — D's forward, backward and Adam step, then G's and F's — is captured once and
//! replayed at every later iteration with one launch, instead of ~2,000 kernel launches from
//! the host (the eager step on an H200 is bound by launching, see docs/benchmarks.md).
//!
//! What a replay needs, and how it gets it:
//! * the batch: copied into the tensors the capture read (`Captured::a`, `b`);
//! * the random patch ids: the capture recorded the sampler's draws, which are made anew into
//!   their device tensors before each replay (the same ids, in the same order, as an eager step
//!   draws: a run gives the same iterations with or without the graph);
//! * Adam's step count and learning rate: kept on the device (`Adam::keep_state_on_device`);
//! * no host decision inside the step: the flip-equivariance coin, the WGAN-GP penalty's
//!   global generator, gradient averaging across processes and supplied parts (which may read
//!   values back) are rejected with this option (`TrainConfig::validate`, `Trainer::with_parts`).
//!
//! The losses and visuals of a replay are the capture's output tensors, overwritten by the next
//! replay. A batch of another shape (an epoch's last, smaller batch) runs eagerly.
use tch::{TchError, Tensor};

use super::trainer::{StepLosses, Trainer, Visuals};
use crate::cuda_graph::{CudaGraph, SideStream};
use crate::device::to_device_async;
use crate::ops::RecordedDraw;

/// Eager iterations, on the capture's stream, before the capture: cuDNN's benchmark, cuBLAS's
/// workspace and the allocator settle on them.
const WARMUP_STEPS: usize = 3;

pub(super) struct GraphedStep {
    stream: SideStream,
    warmups_left: usize,
    captured: Option<Captured>,
}

/// A captured step and the tensors its replays read and write.
struct Captured {
    graph: CudaGraph,
    /// The batch the graph reads (on the device, the shape of the captured batch).
    a: Tensor,
    b: Tensor,
    /// The patch-id draws of the step, refilled before each replay.
    draws: Vec<RecordedDraw>,
    /// Outputs: each replay overwrites them.
    losses: StepLosses,
    visuals: Visuals,
}

impl GraphedStep {
    pub(super) fn new(device: tch::Device) -> Result<Self, TchError> {
        Ok(GraphedStep { stream: SideStream::new(device)?, warmups_left: WARMUP_STEPS, captured: None })
    }
}

impl Trainer {
    /// One training iteration through the CUDA graph (warming up and capturing it first).
    pub(super) fn graphed_step(&mut self, graphed: &mut GraphedStep, a: &Tensor, b: &Tensor) -> Result<StepLosses, TchError> {
        if graphed.captured.is_none() {
            if graphed.warmups_left > 0 {
                graphed.warmups_left -= 1;
                return graphed.stream.run(|| self.eager_step(a, b, true, None));
            }
            graphed.captured = Some(self.capture(&graphed.stream, a, b)?);
        }
        let captured = graphed.captured.as_ref().expect("captured above");
        if captured.a.size() != a.size() || captured.b.size() != b.size() {
            return self.eager_step(a, b, true, None);
        }
        let device = self.device;
        for (input, batch) in [(&captured.a, a), (&captured.b, b)] {
            input.shallow_clone().f_copy_(&to_device_async(batch, device))?;
        }
        self.sampler.redraw(&captured.draws)?;
        captured.graph.replay()?;
        self.count_replayed_step(1);
        self.visuals = Some(captured.visuals.shallow_clone());
        Ok(captured.losses.shallow_clone())
    }

    /// Captures one step on a batch shaped like `a`, `b` (recorded, not run).
    fn capture(&mut self, stream: &SideStream, a: &Tensor, b: &Tensor) -> Result<Captured, TchError> {
        let (a, b) = (to_device_async(a, self.device).copy(), to_device_async(b, self.device).copy());
        self.sampler.record_draws();
        let captured = CudaGraph::capture(stream, || self.eager_step(&a, &b, true, None));
        let draws = self.sampler.finish_recording();
        let (graph, losses) = captured?;
        // the optimisers counted the captured step on the host; it runs at the first replay
        self.count_replayed_step(-1);
        let visuals = self.visuals.take().expect("the step sets the visuals");
        Ok(Captured { graph, a, b, draws, losses: losses.detached(), visuals })
    }
}
