// ort3d C++ host: runs an engine set built by `ort3d-build --formats aoti` (docs/cpp-host.md)
// without Python: decoded RGBA8 pixels in, 3D Gaussians and the generated views out.
//
//   ort3d::Host host("engines/tiny");                 // reads and checks manifest.json
//   ort3d::Host gpu("engines/h200", ort3d::HostOptions{"cuda"});  // TensorRT plans if built with it
//   ort3d::Image image{width, height, rgba_bytes};     // the application decodes its images
//   ort3d::Result result = host.run(image, ort3d::RunOptions{25, 42});   // steps, seed
//   result.gaussians;   // [N,14] float32: pos(3) opacity(1) scale(3) rot(4, raw) rgb(3)
//   result.views;       // [F,3,S,S] float32 in [0,1]
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/types.h>

namespace ort3d {

// Bad input (image, engine folder, manifest, settings): the message is one line and names the
// file or field. Other failures (a NaN in the loop, a package that fails to run) are
// std::runtime_error.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgba;  // width * height * 4 bytes, row-major, straight alpha
};

struct HostOptions {
  std::string device = "cpu";  // "cpu" or "cuda" (cuda:0); the set must have been built for it
  // The six networks' engines: "aoti" (AOTInductor packages), "tensorrt" (TensorRT plans; a CUDA
  // host built with TensorRT) or "auto": TensorRT when this host can run it and the set has a plan
  // for each, else AOTInductor. The feedback stage is an AOTInductor package in every format.
  std::string format = "auto";
  bool cuda_graphs = true;  // on CUDA: capture the steps on the first image, replay them after
};

struct RunOptions {
  int steps = 25;          // denoising steps (at least 2), as ort3d-run
  std::uint64_t seed = 42;
};

struct Result {
  torch::Tensor gaussians;  // [N,14] float32, the last step's LGM output
  torch::Tensor views;      // [F,3,S,S] float32 in [0,1], the last step's decoded views
  torch::Tensor input;      // [3,S,S] float32 in [0,1], the conditioning image
  std::string background;   // "alpha" (the image's alpha is the mask) or "none" (opaque image)
  // How the steps ran: "eager", "captured" (on CUDA: ran eagerly, then captured as CUDA graphs)
  // or "replayed" (the captured graphs ran); capture_seconds: the capture's time when captured.
  std::string loop;
  double capture_seconds = 0;
};

class Host {
 public:
  // engines: a folder with manifest.json and the engine files. Throws InputError when the set
  // cannot run here (see docs/manifest.md).
  explicit Host(const std::string& engines, const HostOptions& options = {});
  ~Host();
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  // One image at a time: on CUDA the captured graphs and their buffers are the Host's.
  Result run(const Image& image, const RunOptions& options = {});

  const std::string& preset() const;
  std::string format() const;  // of the six networks: "aoti" or "tensorrt"
  int image_size() const;
  int num_views() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Writers for ort3d-run's two files: the views grid PNG and the 3DGS .ply (docs/ply.md).
// raw_ply: the LGM's raw quaternions and scales instead of the covariance's unit rotation.
void write_views_png(const std::string& path, const Result& result);
int write_ply(const std::string& path, const torch::Tensor& gaussians, bool raw_ply = false);
// Reads a PNG into RGBA8 (palette, grey and 16-bit images converted); InputError if unreadable.
Image read_png(const std::string& path);

}  // namespace ort3d
