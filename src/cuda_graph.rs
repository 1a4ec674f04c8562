//! CUDA graphs (csrc/cuda_graph.cpp): record the kernels of a fixed-shape piece of work once,
//! then launch them all with one call. A training step on CUDA is bound by launching ~2,000
//! small kernels (≈ 19 µs each on an H200, more than most of them compute); replaying a graph
//! removes that host cost. The captured code must not read anything back on the host, and its
//! tensors keep the addresses they had at capture: inputs are copied into them before a replay,
//! outputs read from them after.
use std::ffi::{c_char, c_int, c_void, CStr};

use tch::{Device, TchError};

use crate::error::invalid;

fn check(error: *const c_char, what: &str) -> Result<(), TchError> {
    if error.is_null() {
        Ok(())
    } else {
        let msg = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
        Err(invalid(format!("{what}: {msg}")))
    }
}

/// A stream from torch's pool on which warm-up and capture run (capture is illegal on the
/// default stream).
pub struct SideStream(*mut c_void);

// The handle is a c10 stream (a device index and an id): usable from any thread.
unsafe impl Send for SideStream {}

impl SideStream {
    pub fn new(device: Device) -> Result<Self, TchError> {
        let Device::Cuda(index) = device else {
            return Err(invalid(format!("CUDA graphs need a CUDA device, got {device:?}")));
        };
        let mut out = std::ptr::null_mut();
        check(unsafe { qs_side_stream_new(index as c_int, &mut out) }, "side stream")?;
        Ok(SideStream(out))
    }

    /// Runs `work` with this stream as the device's current one, after all work queued before
    /// and waiting for `work`'s kernels at the end (host synchronisations: for warm-up and
    /// capture, not per step).
    pub fn run<T>(&self, work: impl FnOnce() -> Result<T, TchError>) -> Result<T, TchError> {
        check(unsafe { qs_side_stream_enter(self.0) }, "entering the side stream")?;
        let result = work();
        let exited = check(unsafe { qs_side_stream_exit(self.0) }, "leaving the side stream");
        let value = result?;
        exited.map(|_| value)
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        unsafe { qs_side_stream_free(self.0) }
    }
}

/// A captured CUDA graph with its private memory pool (freed with it).
pub struct CudaGraph(*mut c_void);

unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Captures the kernels `work` queues on `stream` (run inside it), without executing them.
    /// If `work` fails, or does something a capture forbids (a host synchronisation), the
    /// capture is ended and the error returned.
    pub fn capture<T>(stream: &SideStream, work: impl FnOnce() -> Result<T, TchError>) -> Result<(Self, T), TchError> {
        stream.run(|| {
            let mut graph = std::ptr::null_mut();
            check(unsafe { qs_graph_capture_begin(&mut graph) }, "beginning a CUDA graph capture")?;
            let graph = CudaGraph(graph);
            let result = work();
            let ended = check(unsafe { qs_graph_capture_end(graph.0) }, "capturing the step in a CUDA graph");
            let value = result?;
            ended.map(|_| (graph, value))
        })
    }

    /// Launches the captured kernels on the current stream (asynchronously).
    pub fn replay(&self) -> Result<(), TchError> {
        check(unsafe { qs_graph_replay(self.0) }, "replaying the CUDA graph")
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        unsafe { qs_graph_free(self.0) }
    }
}

extern "C" {
    fn qs_side_stream_new(device: c_int, out: *mut *mut c_void) -> *const c_char;
    fn qs_side_stream_enter(stream: *mut c_void) -> *const c_char;
    fn qs_side_stream_exit(stream: *mut c_void) -> *const c_char;
    fn qs_side_stream_free(stream: *mut c_void);
    fn qs_graph_capture_begin(out: *mut *mut c_void) -> *const c_char;
    fn qs_graph_capture_end(graph: *mut c_void) -> *const c_char;
    fn qs_graph_replay(graph: *mut c_void) -> *const c_char;
    fn qs_graph_free(graph: *mut c_void);
}
