// CUDA graphs for the trainer's fixed-shape step (src/cuda_graph.rs holds the safe wrapper and
// src/train/graphed.rs the use): a side stream to warm up and capture on (capture is illegal on
// the default stream), and at::cuda::CUDAGraph's capture / replay. tch binds none of them.
//
// Compiled with QS_WITH_CUDA when the torch build has CUDA headers (build.rs); without it every
// entry point reports that CUDA graphs are unavailable.
#include <exception>
#include <string>

#ifdef QS_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {
// The last error of this thread, valid until its next call here.
thread_local std::string last_error;

const char* fail(const char* what) {
  last_error = what;
  return last_error.c_str();
}

template <typename F>
const char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}

#ifdef QS_WITH_CUDA
// A side stream and, while entered, the stream it replaced as the device's current one.
struct SideStream {
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStream previous;
};
#endif
}  // namespace

extern "C" {
#ifdef QS_WITH_CUDA
// A stream of device `device` from torch's pool, for warm-up and capture.
const char* qs_side_stream_new(int device, void** out) {
  return guarded([&] {
    auto side = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    *out = new SideStream{side, c10::cuda::getCurrentCUDAStream(side.device_index())};
  });
}

// Makes the side stream current after everything queued so far has run (a host sync: warm-up
// and capture happen a few times per run, not per step).
const char* qs_side_stream_enter(void* stream) {
  return guarded([&] {
    auto* s = static_cast<SideStream*>(stream);
    c10::cuda::device_synchronize();
    s->previous = c10::cuda::getCurrentCUDAStream(s->side.device_index());
    c10::cuda::setCurrentCUDAStream(s->side);
  });
}

// Waits for the side stream's work and makes the replaced stream current again.
const char* qs_side_stream_exit(void* stream) {
  return guarded([&] {
    auto* s = static_cast<SideStream*>(stream);
    c10::cuda::device_synchronize();
    c10::cuda::setCurrentCUDAStream(s->previous);
  });
}

void qs_side_stream_free(void* stream) { delete static_cast<SideStream*>(stream); }

// Starts capturing the current (side) stream's work into a new graph with its own memory pool.
// Thread-local capture mode: the data loader's threads may go on using CUDA meanwhile.
const char* qs_graph_capture_begin(void** out) {
  return guarded([&] {
    auto* graph = new at::cuda::CUDAGraph();
    try {
      graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      delete graph;
      throw;
    }
    *out = graph;
  });
}

// Ends the capture begun by qs_graph_capture_begin and instantiates the graph. Also to be
// called when the captured code failed: the capture is then ended (and the error reported).
const char* qs_graph_capture_end(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->capture_end(); });
}

// Launches the graph on the current stream.
const char* qs_graph_replay(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->replay(); });
}

void qs_graph_free(void* graph) { delete static_cast<at::cuda::CUDAGraph*>(graph); }
#else
static const char* unavailable() {
  return fail("CUDA graphs need a CUDA build of torch (qs_attn was built without CUDA headers)");
}
const char* qs_side_stream_new(int, void**) { return unavailable(); }
const char* qs_side_stream_enter(void*) { return unavailable(); }
const char* qs_side_stream_exit(void*) { return unavailable(); }
void qs_side_stream_free(void*) {}
const char* qs_graph_capture_begin(void**) { return unavailable(); }
const char* qs_graph_capture_end(void*) { return unavailable(); }
const char* qs_graph_replay(void*) { return unavailable(); }
void qs_graph_free(void*) {}
#endif
}
