//! Host → device copies that do not stall the GPU. A copy from ordinary (pageable) host memory
//! makes CUDA wait for everything queued on the stream before it starts, so a copy inside a
//! training step (patch ids, the batch) serialises the CPU with the GPU. Staged through pinned
//! memory the copy is queued like a kernel and the host goes on; torch's caching host
//! allocator keeps the pinned buffer alive until the copy has run.
use tch::{Device, Tensor};

/// `t` on `device`: CPU → CUDA through pinned memory without blocking the host; anything else
/// as `Tensor::to_device` (a no-op when `t` is already there).
pub fn to_device_async(t: &Tensor, device: Device) -> Tensor {
    if device.is_cuda() && t.device() == Device::Cpu {
        t.pin_memory(device).to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}
