#include "schedule.h"

#include <cmath>
#include <stdexcept>
#include <vector>

namespace ort3d {

namespace {
constexpr double kKarrasRho = 7.0;
constexpr int kMinSteps = 2;
}  // namespace

Schedule Schedule::create(int steps, double sigma_min, double sigma_max,
                          const std::string& timestep_spacing) {
  if (steps < kMinSteps) {
    throw std::invalid_argument("steps must be at least " + std::to_string(kMinSteps) + ", got " +
                                std::to_string(steps));
  }
  // numpy.linspace(0, 1, steps) (i·step, the last exactly 1) and the float64 ramp of
  // diffusers' _convert_to_karras, then rounded to float32.
  const double min_inv_rho = std::pow(sigma_min, 1 / kKarrasRho);
  const double max_inv_rho = std::pow(sigma_max, 1 / kKarrasRho);
  const double step = 1.0 / (steps - 1);
  std::vector<float> values(steps + 1, 0.0f);
  for (int i = 0; i < steps; ++i) {
    const double ramp = i == steps - 1 ? 1.0 : i * step;
    values[i] = static_cast<float>(std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), kKarrasRho));
  }
  Schedule s;
  s.sigmas = torch::tensor(values, torch::kFloat32);
  const torch::Tensor sigma = s.sigmas.slice(0, 0, steps);
  const torch::Tensor max_sigma = s.sigmas.max();
  // "leading" spacing scales the initial noise by sqrt(σ_max² + 1), the others by σ_max.
  s.init_noise_sigma = timestep_spacing == "leading" ? max_sigma.pow(2).add(1).pow(0.5) : max_sigma;
  s.timesteps = sigma.log().mul(0.25);
  s.c_out = sigma.neg().div(sigma.pow(2).add(1).pow(0.5));
  return s;
}

Schedule Schedule::to(const torch::Device& device) const {
  return {sigmas.to(device), timesteps.to(device), c_out.to(device), init_noise_sigma.to(device)};
}

torch::Tensor Schedule::scale_input(const torch::Tensor& x, int i) const {
  return x.div(sigmas[i].pow(2).add(1).pow(0.5));
}

std::pair<torch::Tensor, torch::Tensor> Schedule::step(const torch::Tensor& v, const torch::Tensor& x,
                                                       int i) const {
  const torch::Tensor sigma = sigmas[i];
  const torch::Tensor x0 = v.mul(c_out[i]).add(x.div(sigma.pow(2).add(1)));
  const torch::Tensor derivative = x.sub(x0).div(sigma);
  return {x.add(derivative.mul(sigmas[i + 1].sub(sigma))), x0};
}

}  // namespace ort3d
