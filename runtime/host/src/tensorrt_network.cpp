// TensorRT plans in the host (built only when CMake finds TensorRT; docs/cpp-host.md#tensorrt).
// The runtime API used here is the same in TensorRT 10.12+ and 11 (NvInferRuntime.h of both):
// createInferRuntime, IRuntime::deserializeCudaEngine, the engine's I/O tensor table
// (getNbIOTensors, getIOTensorName, getTensorShape, getTensorDataType, getTensorIOMode),
// IExecutionContext::setTensorAddress and enqueueV3.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <map>

#include "network.h"
#include "ort3d/host.h"

namespace ort3d {

namespace {

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
  }
};

Logger& logger() {
  static Logger instance;  // outlives every runtime and engine of the process
  return instance;
}

std::vector<std::int64_t> dims(const nvinfer1::Dims& shape) {
  return std::vector<std::int64_t>(shape.d, shape.d + std::max(shape.nbDims, 0));
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

class TensorRTNetwork final : public Network {
 public:
  TensorRTNetwork(const std::string& name, const NetworkInfo& info, const torch::Device& device)
      : device_(device) {
    const c10::cuda::CUDAGuard guard(device);
    std::ifstream file(info.file, std::ios::binary);
    const std::vector<char> plan((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (!file.good() && !file.eof()) throw InputError(info.file + ": cannot be read");
    runtime_.reset(nvinfer1::createInferRuntime(logger()));
    if (!runtime_) throw std::runtime_error("TensorRT: createInferRuntime failed");
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) throw InputError(info.file + ": TensorRT could not deserialise the engine (see its log above)");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error(info.file + ": TensorRT could not create an execution context");
    check_io(name, info);
    // Static buffers in the manifest's order, bound once: a call only copies inputs in.
    const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    for (const auto* side : {&info.inputs, &info.outputs}) {
      for (const TensorInfo& tensor : *side) {
        torch::Tensor buffer = torch::empty(tensor.shape, options);
        if (!context_->setTensorAddress(tensor.name.c_str(), buffer.data_ptr())) {
          throw std::runtime_error(info.file + ": TensorRT refused the address of tensor " + tensor.name);
        }
        (side == &info.inputs ? inputs_ : outputs_).push_back(buffer);
      }
    }
  }

  Tensors run(const Tensors& inputs) override {
    if (inputs.size() != inputs_.size()) {
      throw std::invalid_argument("TensorRT network: " + std::to_string(inputs.size()) + " inputs given, " +
                                  std::to_string(inputs_.size()) + " expected");
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].data_ptr() != inputs_[i].data_ptr()) inputs_[i].copy_(inputs[i]);
    }
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device_.index()).stream();
    if (!context_->enqueueV3(stream)) throw std::runtime_error("TensorRT: enqueueV3 failed (see its log above)");
    return outputs_;
  }

 private:
  // The engine's I/O tensors must be the manifest's: names, static shapes, float32, direction.
  void check_io(const std::string& name, const NetworkInfo& info) const {
    const std::string where = info.file + ": engine of networks." + name;
    std::map<std::string, std::pair<std::vector<std::int64_t>, nvinfer1::TensorIOMode>> wanted;
    for (const auto& tensor : info.inputs) wanted[tensor.name] = {tensor.shape, nvinfer1::TensorIOMode::kINPUT};
    for (const auto& tensor : info.outputs) wanted[tensor.name] = {tensor.shape, nvinfer1::TensorIOMode::kOUTPUT};
    const int count = engine_->getNbIOTensors();
    if (count != static_cast<int>(wanted.size())) {
      throw InputError(where + " has " + std::to_string(count) + " I/O tensors, the manifest " +
                       std::to_string(wanted.size()));
    }
    for (int i = 0; i < count; ++i) {
      const char* tensor = engine_->getIOTensorName(i);
      const auto found = wanted.find(tensor);
      if (found == wanted.end()) throw InputError(where + " has tensor " + tensor + ", which the manifest lacks");
      const std::vector<std::int64_t> shape = dims(engine_->getTensorShape(tensor));
      if (shape != found->second.first || engine_->getTensorIOMode(tensor) != found->second.second) {
        throw InputError(where + ": tensor " + tensor + " " + shape_text(shape) + " differs from the manifest's " +
                         shape_text(found->second.first));
      }
      if (engine_->getTensorDataType(tensor) != nvinfer1::DataType::kFLOAT) {
        throw InputError(where + ": tensor " + tensor + " is not float32 (the host runs float32 I/O)");
      }
    }
  }

  torch::Device device_;
  // Destroyed in reverse order: the context before its engine, the engine before the runtime.
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  Tensors inputs_, outputs_;
};

}  // namespace

std::unique_ptr<Network> load_tensorrt_network(const std::string& name, const NetworkInfo& info,
                                               const torch::Device& device) {
  return std::make_unique<TensorRTNetwork>(name, info, device);
}

TensorRTIdentity tensorrt_identity(const torch::Device& device) {
  cudaDeviceProp properties{};
  C10_CUDA_CHECK(cudaGetDeviceProperties(&properties, device.index()));
  return {std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
              std::to_string(getInferLibPatchVersion()) + "." + std::to_string(getInferLibBuildVersion()),
          properties.name, std::to_string(properties.major) + "." + std::to_string(properties.minor)};
}

}  // namespace ort3d
