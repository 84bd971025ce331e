// manifest.json of an engine set, read and checked like Python's ort3d.export.manifest
// (read_manifest + check_aoti_set + the exported backends' shape checks; docs/manifest.md).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ort3d {

struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> shape;
};

// The two engine formats the host runs: AOTInductor packages (every device) and TensorRT plans
// (CUDA, when the host was built with TensorRT). The feedback stage is always a package.
enum class EngineFormat { Aoti, TensorRT };
const char* format_name(EngineFormat format);

struct NetworkInfo {
  std::vector<TensorInfo> inputs;
  std::vector<TensorInfo> outputs;
  EngineFormat format = EngineFormat::Aoti;
  std::string file;  // absolute path of the AOTInductor .pt2 or the TensorRT .plan
};

// What a TensorRT plan must have been built for: this process's TensorRT library and GPU, in
// the form of the engine key (export/manifest.py IDENTITY_FIELDS).
struct TensorRTIdentity {
  std::string version;             // "10.12.0.36", as the tensorrt wheel's __version__
  std::string gpu_name;            // cudaDeviceProp::name, as torch.cuda.get_device_name
  std::string compute_capability;  // "9.0"
};

struct ManifestRequest {
  std::string device = "cpu";  // "cpu" or "cuda": the packages must have been compiled for it
  std::string torch_version;   // of the linked libtorch ("2.13.0"); packages need the same
  // The six networks' format; empty: TensorRT when `tensorrt` is set (a CUDA host built with
  // TensorRT) and the set has an engine for each of them, AOTInductor otherwise.
  std::optional<EngineFormat> format;
  std::optional<TensorRTIdentity> tensorrt;  // this process's, when it can run TensorRT
  bool verify_hashes = true;                 // compare every file's sha256 with the manifest
};

struct Manifest {
  std::string path;      // of manifest.json
  std::string preset;
  EngineFormat format = EngineFormat::Aoti;  // of the six networks (feedback: always AOTInductor)
  double sigma_min = 0, sigma_max = 0;
  std::string timestep_spacing;
  double vae_scaling_factor = 0;
  std::int64_t image_size = 0, num_views = 0, num_gaussians = 0, clip_dim = 0;
  std::vector<std::int64_t> adapter_channels;  // 4 levels
  std::map<std::string, NetworkInfo> networks;
};

// Channels of the adapters' feedback inputs: 3 maps pixel-unshuffled by 8 (kernels/feedback.py).
constexpr int kUnshuffledChannels = 3 * 8 * 8;

// The networks a host run needs, in the order the loop first calls them.
extern const std::vector<std::string> kHostNetworks;
// The stage between LGM and the adapters (render -> CCM -> unshuffle), an AOTInductor package in
// every set: TensorRT builds no engine for it.
inline const std::string kFeedbackNetwork = "feedback";

// Reads <directory>/manifest.json; any problem -> ort3d::InputError naming the file and field.
Manifest read_manifest(const std::string& directory, const ManifestRequest& request);

}  // namespace ort3d
