// The recursive loop of runtime/pipeline.py over an engine set, op for op: the same tensor
// operations in the same order, so a CPU run matches Python's with the same seed.
#include "ort3d/host.h"

#include <torch/headeronly/version.h>
#include <torch/torch.h>

#include <map>
#include <optional>

#include "loop.h"
#include "manifest.h"
#include "network.h"
#include "preprocess.h"
#include "schedule.h"

#ifdef ORT3D_HOST_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_graph_loop.h"
#endif

namespace ort3d {

namespace {

// SVD micro-conditioning and guidance of the reference (models/svd.py, PipelineOptions).
constexpr int kFps = 7;
constexpr int kMotionBucketId = 127;
constexpr double kNoiseAugStrength = 0.02;
constexpr double kGuidanceMin = 1.0, kGuidanceMax = 3.0;

}  // namespace

std::vector<torch::Tensor*> LoopState::tensors() {
  std::vector<torch::Tensor*> all = {&latents, &latent_cfg, &clip_cfg, &time_ids, &guidance, &decoded, &gaussians};
  for (auto& feature : features) all.push_back(&feature);
  return all;
}

struct Host::State {
  Manifest manifest;
  HostOptions options;
  torch::Device device{torch::kCPU};
  std::map<std::string, std::unique_ptr<Network>> networks;
  std::map<int, Schedule> schedules;  // per step count, on the device; captured graphs read them
#ifdef ORT3D_HOST_CUDA
  std::optional<c10::cuda::CUDAStream> stream;  // the host's CUDA work: never the legacy default
  std::unique_ptr<CudaGraphLoop> graphs;
#endif

  Tensors call(const std::string& name, const Tensors& inputs) const { return networks.at(name)->run(inputs); }

  const Schedule& schedule(int steps) {
    auto found = schedules.find(steps);
    if (found != schedules.end()) return found->second;
    Schedule table;
    try {
      table = Schedule::create(steps, manifest.sigma_min, manifest.sigma_max, manifest.timestep_spacing);
    } catch (const std::invalid_argument& err) {
      throw InputError(std::string("--steps: ") + err.what());
    }
    return schedules.emplace(steps, table.to(device)).first->second;
  }

  // A denoising step in two parts that write their results into `s` in place.
  // The networks: CFG + Euler on the UNet's velocity, VAE decode, LGM.
  void networks_step(LoopState& s, const Schedule& schedule, int i) const {
    const torch::Tensor t = schedule.timesteps[i].reshape({1});
    torch::Tensor model_in = schedule.scale_input(torch::cat({s.latents, s.latents}), i);
    model_in = torch::cat({model_in, s.latent_cfg}, 2);
    Tensors unet_inputs = {model_in, t, s.clip_cfg, s.time_ids};
    unet_inputs.insert(unet_inputs.end(), s.features.begin(), s.features.end());
    const torch::Tensor out = call("unet", unet_inputs)[0];
    auto halves = out.chunk(2);
    const torch::Tensor velocity = halves[0].add(s.guidance.mul(halves[1].sub(halves[0])));
    auto [latents_next, x0] = schedule.step(velocity, s.latents, i);
    s.decoded.copy_(call("vae_decoder", {x0.flatten(0, 1).mul(1 / manifest.vae_scaling_factor)})[0]);
    s.gaussians.copy_(call("lgm", {s.decoded.unsqueeze(0), t})[0]);
    s.latents.copy_(latents_next);
  }

  // The feedback: render -> CCM -> unshuffle, then the adapters, for the next step's UNet (none
  // after the last step, whose feedback would feed no further step).
  void feedback_step(LoopState& s, int i, int steps) const {
    if (i + 1 == steps) return;
    const Tensors maps = call(kFeedbackNetwork, {s.gaussians});
    const Tensors features = call("adapters", {maps[0], maps[1]});
    for (size_t k = 0; k < features.size(); ++k) s.features[k].copy_(features[k]);
  }
};

Host::Host(const std::string& engines, const HostOptions& options) : state_(std::make_unique<State>()) {
  State& st = *state_;
  st.options = options;
  if (options.device != "cpu" && options.device != "cuda") {
    throw InputError("--device: \"" + options.device + "\" is not one of cpu, cuda");
  }
  if (options.format != "auto" && options.format != "aoti" && options.format != "tensorrt") {
    throw InputError("--format: \"" + options.format + "\" is not one of auto, aoti, tensorrt");
  }
  ManifestRequest request;
  request.device = options.device;
  request.torch_version = TORCH_VERSION;
  if (options.format != "auto") {
    request.format = options.format == "tensorrt" ? EngineFormat::TensorRT : EngineFormat::Aoti;
  }
  if (options.device == "cuda") {
#ifdef ORT3D_HOST_CUDA
    if (!torch::cuda::is_available()) throw InputError("--device cuda: no CUDA device is visible to libtorch");
    st.device = torch::Device(torch::kCUDA, 0);
    st.stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, st.device.index());
    if (options.cuda_graphs) st.graphs = std::make_unique<CudaGraphLoop>();
#else
    throw InputError("--device cuda: this ort3d_host was built against a CPU-only libtorch");
#endif
  }
#ifdef ORT3D_HOST_TENSORRT
  if (st.device.is_cuda()) request.tensorrt = tensorrt_identity(st.device);
#endif
  if (request.format == EngineFormat::TensorRT && !request.tensorrt) {
    throw InputError(std::string("--format tensorrt: ") +
                     (st.device.is_cuda()
                          ? "this ort3d_host was built without TensorRT (see docs/cpp-host.md#tensorrt)"
                          : "TensorRT engines run on --device cuda"));
  }
  st.manifest = read_manifest(engines, request);
  for (const std::string& name : kHostNetworks) {
    const NetworkInfo& info = st.manifest.networks.at(name);
#ifdef ORT3D_HOST_TENSORRT
    if (info.format == EngineFormat::TensorRT) {
      st.networks[name] = load_tensorrt_network(name, info, st.device);
      continue;
    }
#endif
    st.networks[name] = load_aoti_network(info, st.device);
  }
}

Host::~Host() = default;

const std::string& Host::preset() const { return state_->manifest.preset; }
int Host::image_size() const { return static_cast<int>(state_->manifest.image_size); }
int Host::num_views() const { return static_cast<int>(state_->manifest.num_views); }
std::string Host::format() const { return format_name(state_->manifest.format); }

Result Host::run(const Image& image, const RunOptions& options) {
  torch::InferenceMode inference;
  State& st = *state_;
#ifdef ORT3D_HOST_CUDA
  std::optional<c10::cuda::CUDAStreamGuard> on_stream;
  if (st.stream) on_stream.emplace(*st.stream);
#endif
  const Manifest& m = st.manifest;
  const int64_t F = m.num_views, s = m.image_size / 8;
  const auto on_device = torch::TensorOptions().dtype(torch::kFloat32).device(st.device);
  const Schedule& schedule = st.schedule(options.steps);

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
  const torch::Tensor cond_latent = st.call("vae_encoder", {input.add(noise.mul(kNoiseAugStrength))})[0]
                                        .unsqueeze(1)
                                        .repeat({1, F, 1, 1, 1});
  LoopState loop;
  loop.clip_cfg = torch::cat({torch::zeros_like(embedding), embedding});
  loop.latents = torch::randn({1, F, 4, s, s}, generator, on_device).mul(schedule.init_noise_sigma);
  loop.latent_cfg = torch::cat({torch::zeros_like(cond_latent), cond_latent});
  loop.time_ids = torch::tensor({static_cast<float>(kFps - 1), static_cast<float>(kMotionBucketId),
                                 static_cast<float>(kNoiseAugStrength)})
                      .view({1, 3})
                      .repeat({2, 1})
                      .to(st.device);
  loop.guidance = torch::linspace(kGuidanceMin, kGuidanceMax, F, on_device).view({1, F, 1, 1, 1});
  // Step 0 is conditioned on all-zero feedback (docs/quirks.md#q6).
  const torch::Tensor zeros = torch::zeros({F, kUnshuffledChannels, s, s}, on_device);
  for (const auto& feature : st.call("adapters", {zeros, zeros})) loop.features.push_back(feature.clone());
  loop.decoded = torch::zeros({F, 3, m.image_size, m.image_size}, on_device);
  loop.gaussians = torch::zeros({1, m.num_gaussians, 14}, on_device);

  const auto networks = [&](LoopState& state, int i) { st.networks_step(state, schedule, i); };
  const auto feedback = [&](LoopState& state, int i) { st.feedback_step(state, i, options.steps); };
  Result result;
  result.loop = "eager";
#ifdef ORT3D_HOST_CUDA
  if (st.graphs) {
    result.loop = st.graphs->run(loop, options.steps, networks, feedback);
    if (result.loop == "captured") result.capture_seconds = st.graphs->capture_seconds();
  } else
#endif
  {
    for (int i = 0; i < options.steps; ++i) {
      networks(loop, i);
      feedback(loop, i);
    }
  }
  result.views = loop.decoded.div(2).add(0.5).clamp(0, 1).cpu();
  result.gaussians = loop.gaussians[0].cpu();
  result.input = cond.image[0].add(1).div(2).clamp(0, 1);
  result.background = cond.background;
  if (!torch::isfinite(result.gaussians).all().item<bool>() ||
      !torch::isfinite(result.views).all().item<bool>()) {
    throw std::runtime_error("the loop produced NaN or infinite values (views or Gaussians)");
  }
  return result;
}

}  // namespace ort3d
