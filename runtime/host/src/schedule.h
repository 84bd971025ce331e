// SVD's EDM Euler sampler tables, computed exactly like models/scheduler.py (float64 Karras ramp
// rounded to float32, then the same float32 tensor ops), so C++ and Python step identically.
#pragma once

#include <string>

#include <torch/types.h>

namespace ort3d {

struct Schedule {
  torch::Tensor sigmas;            // [n+1] float32, the last one 0
  torch::Tensor timesteps;         // [n]   0.25·ln σ, what the networks see
  torch::Tensor c_out;             // [n]   -σ / sqrt(σ² + 1)
  torch::Tensor init_noise_sigma;  // 0-dim

  static Schedule create(int steps, double sigma_min, double sigma_max,
                         const std::string& timestep_spacing);
  // The same tables on `device`.
  Schedule to(const torch::Device& device) const;
  // x / sqrt(σ_i² + 1)
  torch::Tensor scale_input(const torch::Tensor& x, int i) const;
  // One Euler step from the v-prediction at latents x: (x_next, x0).
  std::pair<torch::Tensor, torch::Tensor> step(const torch::Tensor& v, const torch::Tensor& x,
                                               int i) const;
};

}  // namespace ort3d
