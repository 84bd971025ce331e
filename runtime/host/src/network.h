// One engine of a set behind one call, whatever its format (docs/cpp-host.md#engine-formats-and-where-each-runs):
// float32 tensors in, in the manifest's input order, float32 tensors out, in its output order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "manifest.h"

namespace ort3d {

using Tensors = std::vector<torch::Tensor>;

class Network {
 public:
  virtual ~Network() = default;
  // Every call is ordered on the current stream. It synchronises with the host only where the
  // engine's own control flow reads the device (the feedback package's while_loop), so the other
  // networks' calls can be captured in a CUDA graph. The outputs may be buffers the network
  // reuses: they hold until its next call.
  virtual Tensors run(const Tensors& inputs) = 0;
};

// An AOTInductor package, loaded for `device` (the manifest checked it was compiled for it).
std::unique_ptr<Network> load_aoti_network(const NetworkInfo& info, const torch::Device& device);

#ifdef ORT3D_HOST_TENSORRT
// A TensorRT plan on a CUDA device: static buffers bound once by name, enqueueV3 per call.
std::unique_ptr<Network> load_tensorrt_network(const std::string& name, const NetworkInfo& info,
                                               const torch::Device& device);
// This process's TensorRT library and the GPU of `device`, as an engine key records them.
TensorRTIdentity tensorrt_identity(const torch::Device& device);
#endif

}  // namespace ort3d
