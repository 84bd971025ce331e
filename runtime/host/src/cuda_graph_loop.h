// The host's denoising loop as CUDA graphs, with the capture rules of the Python graph backend
// (runtime/backend_graph.py; docs/cpp-host.md#cuda-graphs): one graph per step index, all in one
// memory pool, captured after an eager warm-up on the first image, replayed for later images.
//
// What a graph holds is a step's networks (UNet -> Euler -> VAE decode -> LGM). The feedback stage
// runs between the graphs, eagerly: its package composites in a while_loop whose condition the
// AOTInductor runtime reads on the host after every round, which a capture cannot contain.
#pragma once

#include <memory>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>

#include "loop.h"

namespace ort3d {

class CudaGraphLoop {
 public:
  // Runs `steps` steps on `state` (this image's inputs; on return, its results) on the current
  // CUDA stream, which must not be the legacy default stream (capture forbids it): step i is
  // networks(state, i), captured, then between(state, i), never captured.
  // Returns "captured" (the steps ran eagerly, then their networks were captured) or "replayed".
  const char* run(LoopState& state, int steps, const StepFunction& networks, const StepFunction& between);

  double capture_seconds() const { return capture_seconds_; }  // of the last capture

 private:
  std::vector<std::unique_ptr<at::cuda::CUDAGraph>> graphs_;
  LoopState buffers_;  // the tensors the graphs read and write
  double capture_seconds_ = 0;
};

}  // namespace ort3d
