// The recursive loop of runtime/pipeline.py over AOTInductor packages, op for op: the same
// tensor operations in the same order, so a CPU run matches Python's with the same seed.
#include "ort3d/host.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>
#include <torch/torch.h>

#include <map>

#include "manifest.h"
#include "preprocess.h"
#include "schedule.h"

namespace ort3d {

namespace {

// SVD micro-conditioning and guidance of the reference (models/svd.py, PipelineOptions).
constexpr int kFps = 7;
constexpr int kMotionBucketId = 127;
constexpr double kNoiseAugStrength = 0.02;
constexpr double kGuidanceMin = 1.0, kGuidanceMax = 3.0;

using Tensors = std::vector<torch::Tensor>;

}  // namespace

struct Host::State {
  Manifest manifest;
  torch::Device device{torch::kCPU};
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> packages;

  Tensors call(const std::string& name, Tensors inputs) const {
    for (auto& tensor : inputs) tensor = tensor.to(device, torch::kFloat32).contiguous();
    return packages.at(name)->run(inputs);
  }
};

Host::Host(const std::string& engines, const std::string& device) : state_(std::make_unique<State>()) {
  if (device != "cpu" && device != "cuda") {
    throw InputError("--device: \"" + device + "\" is not one of cpu, cuda");
  }
  state_->device = torch::Device(device);
  if (state_->device.is_cuda() && !torch::cuda::is_available()) {
    throw InputError("--device cuda: no CUDA device is visible to libtorch");
  }
  state_->manifest = read_manifest(engines, device, TORCH_VERSION);
  for (const std::string& name : kHostNetworks) {
    state_->packages[name] = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        state_->manifest.networks.at(name).package, "model", false, 1,
        state_->device.is_cuda() ? state_->device.index() : -1);
  }
}

Host::~Host() = default;

const std::string& Host::preset() const { return state_->manifest.preset; }
int Host::image_size() const { return static_cast<int>(state_->manifest.image_size); }
int Host::num_views() const { return static_cast<int>(state_->manifest.num_views); }

Result Host::run(const Image& image, const RunOptions& options) const {
  torch::InferenceMode inference;
  const State& st = *state_;
  const Manifest& m = st.manifest;
  const int64_t F = m.num_views, s = m.image_size / 8;
  const auto on_device = torch::TensorOptions().dtype(torch::kFloat32).device(st.device);
  Schedule schedule;
  try {
    schedule = Schedule::create(options.steps, m.sigma_min, m.sigma_max, m.timestep_spacing);
  } catch (const std::invalid_argument& err) {
    throw InputError(std::string("--steps: ") + err.what());
  }
  schedule = schedule.to(st.device);

  Conditioning cond = preprocess(image, static_cast<int>(m.image_size), "input image");
  const torch::Tensor input = cond.image.to(st.device, torch::kFloat32);

  // A fresh generator seeded like torch.Generator(device).manual_seed(seed); RNG order as the
  // reference: the condition noise first, then the initial latents.
  at::Generator generator = at::globalContext().defaultGenerator(st.device).clone();
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_current_seed(options.seed);
  }
  const torch::Tensor noise = torch::randn(input.sizes(), generator, on_device);
  const torch::Tensor embedding = st.call("image_encoder", {input})[0];
  torch::Tensor cond_latent = st.call("vae_encoder", {input.add(noise.mul(kNoiseAugStrength))})[0];
  const torch::Tensor clip_cfg = torch::cat({torch::zeros_like(embedding), embedding});
  cond_latent = cond_latent.unsqueeze(1).repeat({1, F, 1, 1, 1});
  torch::Tensor latents = torch::randn({1, F, 4, s, s}, generator, on_device)
                              .mul(schedule.init_noise_sigma);
  const torch::Tensor latent_cfg = torch::cat({torch::zeros_like(cond_latent), cond_latent});
  const torch::Tensor time_ids = torch::tensor({static_cast<float>(kFps - 1), static_cast<float>(kMotionBucketId),
                                                static_cast<float>(kNoiseAugStrength)})
                                     .view({1, 3}).repeat({2, 1}).to(st.device);
  const torch::Tensor guidance = torch::linspace(kGuidanceMin, kGuidanceMax, F, on_device).view({1, F, 1, 1, 1});
  const double latent_unscale = 1 / m.vae_scaling_factor;

  // Step 0 is conditioned on all-zero feedback (docs/quirks.md#q6).
  const torch::Tensor zeros = torch::zeros({F, kUnshuffledChannels, s, s}, on_device);
  Tensors features = st.call("adapters", {zeros, zeros});
  torch::Tensor decoded, gaussians;
  for (int i = 0; i < options.steps; ++i) {
    const torch::Tensor t = schedule.timesteps[i].reshape({1});
    torch::Tensor model_in = schedule.scale_input(torch::cat({latents, latents}), i);
    model_in = torch::cat({model_in, latent_cfg}, 2);
    Tensors unet_inputs = {model_in, t, clip_cfg, time_ids};
    unet_inputs.insert(unet_inputs.end(), features.begin(), features.end());
    const torch::Tensor out = st.call("unet", unet_inputs)[0];
    auto halves = out.chunk(2);
    const torch::Tensor velocity = halves[0].add(guidance.mul(halves[1].sub(halves[0])));
    auto [latents_next, x0] = schedule.step(velocity, latents, i);
    decoded = st.call("vae_decoder", {x0.flatten(0, 1).mul(latent_unscale)})[0];
    gaussians = st.call("lgm", {decoded.unsqueeze(0), t})[0];
    if (i + 1 < options.steps) {  // the last step's feedback would feed no further step
      Tensors maps = st.call("feedback", {gaussians});
      features = st.call("adapters", {maps[0], maps[1]});
    }
    latents = latents_next;
  }
  Result result;
  result.views = decoded.div(2).add(0.5).clamp(0, 1).cpu();
  result.gaussians = gaussians[0].cpu();
  result.input = cond.image[0].add(1).div(2).clamp(0, 1);
  result.background = cond.background;
  if (!torch::isfinite(result.gaussians).all().item<bool>() ||
      !torch::isfinite(result.views).all().item<bool>()) {
    throw std::runtime_error("the loop produced NaN or infinite values (views or Gaussians)");
  }
  return result;
}

}  // namespace ort3d
