// ort3d-run's output files from C++ (runtime/outputs.py): the views grid PNG through libpng and
// the 3DGS .ply, both written under a temporary name and renamed into place.
#include <png.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

#include "ort3d/host.h"
#include "preprocess.h"

namespace ort3d {

namespace {

namespace fs = std::filesystem;

constexpr int kGridColumns = 4;   // views per grid row, as the reference's save_image(nrow=4)
constexpr int kGridPadding = 2;   // px of black between and around the tiles
constexpr double kShC0 = 0.28209479177387814;
constexpr double kOpacityThreshold = 0.005;
constexpr double kScaleFloor = 1e-8;
const char* const kPlyProperties[] = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                      "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2",
                                      "rot_3"};

// Writes through `write(temporary path)`, then renames onto `path`; removes the temporary file
// on any failure, so a reader never sees a partial file.
template <typename Write>
void atomic_write(const std::string& path, Write write) {
  const fs::path target(path);
  std::random_device random;
  const fs::path tmp = target.parent_path() /
                       ("." + target.stem().string() + "." + std::to_string(random()) + ".partial" +
                        target.extension().string());
  try {
    write(tmp.string());
    fs::rename(tmp, target);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

// Σ = R S Sᵀ Rᵀ from the RAW quaternion (kernels/render.py covariance_3d), in the inputs' dtype.
torch::Tensor covariance_3d(const torch::Tensor& scale, const torch::Tensor& quat) {
  auto q = quat.unbind(-1);
  const torch::Tensor &w = q[0], &x = q[1], &y = q[2], &z = q[3];
  auto one_minus_twice = [](const torch::Tensor& t) { return torch::rsub(t.mul(2), 1); };
  torch::Tensor R = torch::stack({one_minus_twice(y * y + z * z), (x * y - w * z).mul(2), (x * z + w * y).mul(2),
                                  (x * y + w * z).mul(2), one_minus_twice(x * x + z * z), (y * z - w * x).mul(2),
                                  (x * z - w * y).mul(2), (y * z + w * x).mul(2), one_minus_twice(x * x + y * y)},
                                 -1).unflatten(-1, {3, 3});
  torch::Tensor M = R * scale.unsqueeze(-2);
  return (M.unsqueeze(-2) * M.unsqueeze(-3)).sum(-1);
}

// Unit quaternions (w >= 0) of proper rotation matrices (runtime/outputs.py, Shepperd's method).
torch::Tensor quaternion_from_rotation(const torch::Tensor& m) {
  auto e = [&](int r, int c) { return m.select(-2, r).select(-1, c); };
  torch::Tensor candidates = torch::stack(
      {torch::stack({(e(0, 0) + 1) + e(1, 1) + e(2, 2), e(2, 1) - e(1, 2), e(0, 2) - e(2, 0), e(1, 0) - e(0, 1)}, -1),
       torch::stack({e(2, 1) - e(1, 2), (e(0, 0) + 1) - e(1, 1) - e(2, 2), e(0, 1) + e(1, 0), e(0, 2) + e(2, 0)}, -1),
       torch::stack({e(0, 2) - e(2, 0), e(0, 1) + e(1, 0), torch::rsub(e(0, 0), 1) + e(1, 1) - e(2, 2), e(1, 2) + e(2, 1)}, -1),
       torch::stack({e(1, 0) - e(0, 1), e(0, 2) + e(2, 0), e(1, 2) + e(2, 1), torch::rsub(e(0, 0), 1) - e(1, 1) + e(2, 2)}, -1)},
      -2);
  torch::Tensor best = torch::diagonal(candidates, 0, -2, -1).argmax(-1);
  torch::Tensor q = torch::take_along_dim(candidates, best.unsqueeze(-1).unsqueeze(-1), -2).squeeze(-2);
  q = q / torch::linalg_vector_norm(q, 2, {-1}, true);
  return torch::where(q.slice(-1, 0, 1) < 0, -q, q);
}

void write_png_rgb(const std::string& path, const torch::Tensor& hwc) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(hwc.size(1));
  image.height = static_cast<png_uint_32>(hwc.size(0));
  image.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&image, path.c_str(), 0, hwc.data_ptr<std::uint8_t>(), 0, nullptr)) {
    throw std::runtime_error(path + ": cannot write PNG (" + image.message + ")");
  }
}

}  // namespace

Image read_png(const std::string& path) {
  if (!fs::exists(path)) throw InputError(path + ": no such file");
  if (fs::is_directory(path)) throw InputError(path + ": is a directory, not an image file");
  if (fs::file_size(path) == 0) throw InputError(path + ": file is empty (0 bytes)");
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    throw InputError(path + ": not a PNG file libpng can read (" + image.message + ")");
  }
  try {
    check_image_size(static_cast<int>(image.width), static_cast<int>(image.height), path);
  } catch (...) {
    png_image_free(&image);
    throw;
  }
  image.format = PNG_FORMAT_RGBA;
  Image out;
  out.width = static_cast<int>(image.width);
  out.height = static_cast<int>(image.height);
  out.rgba.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, out.rgba.data(), 0, nullptr)) {
    throw InputError(path + ": cannot decode image, corrupt or truncated (" + image.message + ")");
  }
  return out;
}

void write_views_png(const std::string& path, const Result& result) {
  const torch::Tensor views = result.views.to(torch::kCPU, torch::kFloat32);
  const int64_t count = views.size(0), height = views.size(2), width = views.size(3);
  const int64_t rows = (count + kGridColumns - 1) / kGridColumns, pad = kGridPadding;
  torch::Tensor grid = torch::zeros({3, rows * (height + pad) + pad, (kGridColumns + 1) * (width + pad) + pad});
  auto cell = [&](int64_t row, int64_t col) {
    const int64_t y = pad + row * (height + pad), x = pad + col * (width + pad);
    return grid.slice(1, y, y + height).slice(2, x, x + width);
  };
  for (int64_t row = 1; row < rows; ++row) cell(row, 0).fill_(1.0);  // white below the input
  cell(0, 0).copy_(result.input.to(torch::kCPU, torch::kFloat32));
  for (int64_t i = 0; i < count; ++i) cell(i / kGridColumns, 1 + i % kGridColumns).copy_(views[i]);
  // torchvision.utils.save_image's conversion: round half up, then clamp.
  torch::Tensor pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch::kUInt8)
                             .permute({1, 2, 0}).contiguous();
  atomic_write(path, [&](const std::string& tmp) { write_png_rgb(tmp, pixels); });
}

int write_ply(const std::string& path, const torch::Tensor& gaussians, bool raw_ply) {
  torch::Tensor g = gaussians.to(torch::kCPU, torch::kFloat32).reshape({-1, 14});
  if (!torch::isfinite(g).all().item<bool>()) {
    throw std::runtime_error("gaussians contain NaN or infinite values");
  }
  g = g.index({g.select(1, 3) >= kOpacityThreshold});
  torch::Tensor pos = g.slice(1, 0, 3), opacity = g.slice(1, 3, 4), scale = g.slice(1, 4, 7);
  torch::Tensor rot = g.slice(1, 7, 11), rgb = g.slice(1, 11, 14);
  torch::Tensor log_scale;
  if (raw_ply) {
    log_scale = scale.add(1e-8).log();
  } else {
    // The scales and unit rotation of the covariance the renderer builds (docs/ply.md).
    auto [eigenvalues, eigenvectors] = torch::linalg_eigh(covariance_3d(scale.to(torch::kFloat64),
                                                                        rot.to(torch::kFloat64)));
    eigenvectors.select(-1, 2).mul_(torch::linalg_det(eigenvectors).sign().unsqueeze(-1));
    log_scale = eigenvalues.clamp_min(kScaleFloor * kScaleFloor).sqrt().log().to(torch::kFloat32);
    rot = quaternion_from_rotation(eigenvectors).to(torch::kFloat32);
  }
  torch::Tensor columns = torch::cat({pos, rgb.sub(0.5).div(kShC0),
                                      opacity.div(torch::rsub(opacity, 1).add(1e-8)).add(1e-8).log(),
                                      log_scale, rot}, 1).contiguous();
  const int64_t count = columns.size(0);
  atomic_write(path, [&](const std::string& tmp) {
    std::ofstream file(tmp, std::ios::binary);
    file << "ply\nformat binary_little_endian 1.0\nelement vertex " << count << "\n";
    for (const char* name : kPlyProperties) file << "property float " << name << "\n";
    file << "end_header\n";
    // float32 little-endian records (the host architectures libtorch supports are little-endian)
    file.write(reinterpret_cast<const char*>(columns.data_ptr<float>()),
               static_cast<std::streamsize>(columns.numel() * sizeof(float)));
    file.close();
    if (!file) throw std::runtime_error(path + ": cannot write the .ply file");
  });
  return static_cast<int>(count);
}

}  // namespace ort3d
