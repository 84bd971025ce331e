// manifest.json of an engine set, read and checked like Python's ort3d.export.manifest
// (read_manifest + check_aoti_set + the exported backends' shape checks; docs/manifest.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ort3d {

struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> shape;
};

struct NetworkInfo {
  std::vector<TensorInfo> inputs;
  std::vector<TensorInfo> outputs;
  std::string package;  // absolute path of the AOTInductor .pt2
};

struct Manifest {
  std::string path;      // of manifest.json
  std::string preset;
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

// Reads <directory>/manifest.json; any problem -> ort3d::InputError naming the file and field.
// device: "cpu" or "cuda" (the packages must have been compiled for it); torch_version: the
// linked libtorch's ("2.13.0"); verify_hashes: compare every package's sha256 with the manifest.
Manifest read_manifest(const std::string& directory, const std::string& device,
                       const std::string& torch_version, bool verify_hashes = true);

}  // namespace ort3d
