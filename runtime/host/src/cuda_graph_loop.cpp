#include "cuda_graph_loop.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <chrono>

namespace ort3d {

namespace {

void copy_state(LoopState& into, LoopState& from) {
  const auto targets = into.tensors();
  const auto sources = from.tensors();
  for (size_t i = 0; i < targets.size(); ++i) targets[i]->copy_(*sources[i]);
}

}  // namespace

const char* CudaGraphLoop::run(LoopState& state, int steps, const StepFunction& networks,
                               const StepFunction& between) {
  if (static_cast<int>(graphs_.size()) == steps) {
    copy_state(buffers_, state);
    for (int i = 0; i < steps; ++i) {
      graphs_[i]->replay();
      between(buffers_, i);
    }
    state = buffers_;
    return "replayed";
  }
  // The graphs of another step count (other scheduler tables) are released first.
  graphs_.clear();
  // Warm-up: this image's steps run eagerly (AOTInductor folds its constants and TensorRT does
  // its deferred set-up on a first call, neither of which may happen inside a capture); their
  // result is this image's result. The eager run's cached blocks are freed so the graphs' pool
  // starts from the allocator's free memory.
  for (int i = 0; i < steps; ++i) {
    networks(state, i);
    between(state, i);
  }
  c10::cuda::device_synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();

  // Capturing records the steps' networks without running them: `state` keeps the warm-up's
  // result.
  // capture_begin/end on one shared pool: the graphs replay in capture order, as required.
  const auto started = std::chrono::steady_clock::now();
  const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
  for (int i = 0; i < steps; ++i) {
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    graph->capture_begin(pool);
    try {
      networks(state, i);
    } catch (...) {
      try {
        graph->capture_end();  // ends the stream's capture; the step's error is the one reported
      } catch (...) {
      }
      graphs_.clear();
      throw;
    }
    graph->capture_end();
    graphs_.push_back(std::move(graph));
  }
  c10::cuda::device_synchronize();
  capture_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  buffers_ = state;
  return "captured";
}

}  // namespace ort3d
