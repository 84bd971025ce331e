#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "network.h"

namespace ort3d {

namespace {

class AotiNetwork final : public Network {
 public:
  AotiNetwork(const NetworkInfo& info, const torch::Device& device)
      : device_(device),
        // On CUDA the package runs single-threaded: the default runner records and waits on an
        // event per call to hand its model instance back, which a CUDA graph capture forbids.
        package_(info.file, "model", /*run_single_threaded=*/device.is_cuda(), /*num_runners=*/1,
                 device.is_cuda() ? device.index() : -1) {}

  Tensors run(const Tensors& inputs) override {
    Tensors args;
    args.reserve(inputs.size());
    for (const auto& tensor : inputs) args.push_back(tensor.to(device_, torch::kFloat32).contiguous());
    return package_.run(args);
  }

 private:
  torch::Device device_;
  torch::inductor::AOTIModelPackageLoader package_;
};

}  // namespace

std::unique_ptr<Network> load_aoti_network(const NetworkInfo& info, const torch::Device& device) {
  return std::make_unique<AotiNetwork>(info, device);
}

}  // namespace ort3d
