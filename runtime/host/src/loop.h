// The tensors one denoising step reads and writes (runtime/pipeline.py's LoopState).
#pragma once

#include <functional>

#include "network.h"

namespace ort3d {

// A step writes its results into these tensors in place, so they keep their addresses from step
// to step: on CUDA the captured graphs of the steps read and write exactly them.
struct LoopState {
  torch::Tensor latents;     // [1,F,4,s,s] the noisy latents; after a step, the next step's
  torch::Tensor latent_cfg;  // [2,F,4,s,s] the conditioning latents, zeros in the unconditional half
  torch::Tensor clip_cfg;    // [2,1,D]     the image embedding, zeros in the unconditional half
  torch::Tensor time_ids;    // [2,3]       SVD's micro-conditioning
  torch::Tensor guidance;    // [1,F,1,1,1] the per-view CFG scale
  Tensors features;          // the adapters' 8 features for the next step's UNet
  torch::Tensor decoded;     // [F,3,S,S]   the last step's decoded views, in [-1,1]
  torch::Tensor gaussians;   // [1,N,14]    the last step's Gaussians

  // Every tensor, in one order (for copying one state into another).
  std::vector<torch::Tensor*> tensors();
};

using StepFunction = std::function<void(LoopState& state, int step)>;

}  // namespace ort3d
