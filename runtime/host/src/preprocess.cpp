#include "preprocess.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

namespace ort3d {

namespace {

constexpr int kMinSide = 8;
constexpr int kMaxSide = 8192;
constexpr std::int64_t kMaxPixels = 50'000'000;
constexpr double kBorderRatio = 0.2;

using Accessor = torch::TensorAccessor<float, 3>;

// Both axes shrink by exact integers: OpenCV's block average, its 2×2 SIMD path for 4 channels.
torch::Tensor block_average(const torch::Tensor& img, int ix, int iy, int width, int height) {
  const int channels = static_cast<int>(img.size(2));
  torch::Tensor out = torch::empty({height, width, channels}, torch::kFloat32);
  auto src = img.accessor<float, 3>();
  auto dst = out.accessor<float, 3>();
  const float inverse = static_cast<float>(1.0 / (ix * iy));
  const bool simd = ix == 2 && iy == 2 && channels == 4;
  std::vector<float> pixels;  // one block's values, reused for every output pixel
  pixels.reserve(static_cast<size_t>(ix) * iy);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        if (simd) {
          const float top = src[2 * y][2 * x][c] + src[2 * y][2 * x + 1][c];
          const float bottom = src[2 * y + 1][2 * x][c] + src[2 * y + 1][2 * x + 1][c];
          dst[y][x][c] = (top + bottom) * 0.25f;
          continue;
        }
        // The scalar loop: block pixels in row-major order, added four at a time.
        pixels.clear();
        for (int sy = 0; sy < iy; ++sy) {
          for (int sx = 0; sx < ix; ++sx) pixels.push_back(src[y * iy + sy][x * ix + sx][c]);
        }
        float total = 0.0f;
        size_t k = 0;
        for (; k + 4 <= pixels.size(); k += 4) {
          total = total + (((pixels[k] + pixels[k + 1]) + pixels[k + 2]) + pixels[k + 3]);
        }
        for (; k < pixels.size(); ++k) total = total + pixels[k];
        dst[y][x][c] = total * inverse;
      }
    }
  }
  return out;
}

struct Taps {
  std::vector<std::vector<std::pair<int, float>>> rows;  // per output pixel: (source, weight)
};

// computeResizeAreaTab: the exact fractional box filter's taps, weights rounded to float32.
Taps box_taps(int src_size, int dst_size, double scale) {
  Taps taps;
  for (int d = 0; d < dst_size; ++d) {
    const double fs1 = d * scale, fs2 = fs1 + scale;
    const double cell = std::min(scale, src_size - fs1);
    int s1 = static_cast<int>(std::ceil(fs1));
    const int s2 = std::min(static_cast<int>(std::floor(fs2)), src_size - 1);
    s1 = std::min(s1, s2);
    std::vector<std::pair<int, float>> row;
    if (s1 - fs1 > 1e-3) row.emplace_back(s1 - 1, static_cast<float>((s1 - fs1) / cell));
    for (int s = s1; s < s2; ++s) row.emplace_back(s, static_cast<float>(1.0 / cell));
    if (fs2 - s2 > 1e-3) {
      row.emplace_back(s2, static_cast<float>(std::min(std::min(fs2 - s2, 1.0), cell) / cell));
    }
    taps.rows.push_back(std::move(row));
  }
  return taps;
}

torch::Tensor box_filter(const torch::Tensor& img, double scale_x, double scale_y, int width,
                         int height) {
  const int in_h = static_cast<int>(img.size(0)), in_w = static_cast<int>(img.size(1));
  const int channels = static_cast<int>(img.size(2));
  const Taps xt = box_taps(in_w, width, scale_x), yt = box_taps(in_h, height, scale_y);
  auto src = img.accessor<float, 3>();
  // Horizontal: buf += S[si]·alpha, taps left to right.
  std::vector<float> rows(static_cast<size_t>(in_h) * width * channels, 0.0f);
  for (int y = 0; y < in_h; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        float sum = 0.0f;
        for (const auto& [s, w] : xt.rows[x]) sum = sum + src[y][s][c] * w;
        rows[(static_cast<size_t>(y) * width + x) * channels + c] = sum;
      }
    }
  }
  // Vertical: sum = beta0·buf0, then sum += beta_j·buf_j, rows top to bottom.
  torch::Tensor out = torch::empty({height, width, channels}, torch::kFloat32);
  auto dst = out.accessor<float, 3>();
  for (int y = 0; y < height; ++y) {
    const auto& taps = yt.rows[y];
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        auto at = [&](int row) { return rows[(static_cast<size_t>(row) * width + x) * channels + c]; };
        float sum = taps.empty() ? 0.0f : taps[0].second * at(taps[0].first);
        for (size_t j = 1; j < taps.size(); ++j) sum = sum + taps[j].second * at(taps[j].first);
        dst[y][x][c] = sum;
      }
    }
  }
  return out;
}

// An axis grows: OpenCV's area-mode linear interpolation (left index, weights 1-f and f).
void linear_taps(int src_size, int dst_size, bool clamp_right, std::vector<int>& left,
                 std::vector<float>& w0, std::vector<float>& w1) {
  const double inv_scale = static_cast<double>(dst_size) / src_size;
  const double scale = 1.0 / inv_scale;
  for (int d = 0; d < dst_size; ++d) {
    int s = static_cast<int>(std::floor(d * scale));
    float f = static_cast<float>((d + 1) - (s + 1) * inv_scale);
    f = f <= 0 ? 0.0f : f - static_cast<float>(std::floor(f));
    if (clamp_right && s + 1 >= src_size) {  // past the last interval: copy the last pixel
      s = src_size - 1;
      f = 0.0f;
    }
    left.push_back(s);
    w0.push_back(1.0f - f);
    w1.push_back(f);
  }
}

torch::Tensor area_linear(const torch::Tensor& img, int width, int height) {
  const int in_h = static_cast<int>(img.size(0)), in_w = static_cast<int>(img.size(1));
  const int channels = static_cast<int>(img.size(2));
  std::vector<int> x0, y0;
  std::vector<float> ax0, ax1, by0, by1;
  linear_taps(in_w, width, true, x0, ax0, ax1);
  linear_taps(in_h, height, false, y0, by0, by1);
  auto src = img.accessor<float, 3>();
  std::vector<float> rows(static_cast<size_t>(in_h) * width * channels);
  for (int y = 0; y < in_h; ++y) {
    for (int x = 0; x < width; ++x) {
      const bool last = x0[x] >= in_w - 1;
      const int x1 = std::min(x0[x] + 1, in_w - 1);
      for (int c = 0; c < channels; ++c) {
        rows[(static_cast<size_t>(y) * width + x) * channels + c] =
            last ? src[y][x0[x]][c] : src[y][x0[x]][c] * ax0[x] + src[y][x1][c] * ax1[x];
      }
    }
  }
  torch::Tensor out = torch::empty({height, width, channels}, torch::kFloat32);
  auto dst = out.accessor<float, 3>();
  for (int y = 0; y < height; ++y) {
    const int top = std::clamp(y0[y], 0, in_h - 1), bottom = std::clamp(y0[y] + 1, 0, in_h - 1);
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        auto at = [&](int row) { return rows[(static_cast<size_t>(row) * width + x) * channels + c]; };
        dst[y][x][c] = at(top) * by0[y] + at(bottom) * by1[y];
      }
    }
  }
  return out;
}

}  // namespace

torch::Tensor resize_area(const torch::Tensor& src, int width, int height) {
  const int in_h = static_cast<int>(src.size(0)), in_w = static_cast<int>(src.size(1));
  if (in_h == height && in_w == width) return src.clone();
  // OpenCV derives the scales from the inverse ratio.
  const double scale_x = 1.0 / (static_cast<double>(width) / in_w);
  const double scale_y = 1.0 / (static_cast<double>(height) / in_h);
  if (scale_x >= 1 && scale_y >= 1) {
    const int ix = static_cast<int>(std::lround(scale_x)), iy = static_cast<int>(std::lround(scale_y));
    if (std::abs(scale_x - ix) < DBL_EPSILON && std::abs(scale_y - iy) < DBL_EPSILON) {
      return block_average(src, ix, iy, width, height);
    }
    return box_filter(src, scale_x, scale_y, width, height);
  }
  return area_linear(src, width, height);
}

void check_image_size(int width, int height, const std::string& source) {
  if (width > kMaxSide || height > kMaxSide ||
      static_cast<std::int64_t>(width) * height > kMaxPixels) {
    throw InputError(source + ": image too large (" + std::to_string(width) + "x" +
                     std::to_string(height) + " px; the limit is 8192 px a side and 50 MP)");
  }
  if (width < kMinSide || height < kMinSide) {
    throw InputError(source + ": image too small (" + std::to_string(width) + "x" +
                     std::to_string(height) + " px; need at least 8 px on each side)");
  }
}

Conditioning preprocess(const Image& image, int image_size, const std::string& source) {
  const int width = image.width, height = image.height;
  check_image_size(width, height, source);
  if (image.rgba.size() != static_cast<size_t>(width) * height * 4) {
    throw InputError(source + ": RGBA buffer holds " + std::to_string(image.rgba.size()) +
                     " bytes, expected width*height*4");
  }
  // The mask: alpha > 0 (an opaque image's alpha is all 255: the whole image is the object).
  const std::uint8_t* px = image.rgba.data();
  int top = height, left = width, bottom = -1, right = -1;
  bool had_alpha = false;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const std::uint8_t a = px[(static_cast<size_t>(y) * width + x) * 4 + 3];
      had_alpha |= a < 255;
      if (a > 0) {
        top = std::min(top, y); bottom = std::max(bottom, y);
        left = std::min(left, x); right = std::max(right, x);
      }
    }
  }
  if (bottom < 0) {
    throw InputError(source + ": the object mask is empty (fully transparent image or no object found)");
  }
  // kiui.op.recenter: the box excludes the last masked row and column.
  const int size = std::max(height, width);
  const int box_h = bottom - top, box_w = right - left;
  const int desired = static_cast<int>(size * (1 - kBorderRatio));
  const double scale = static_cast<double>(desired) / std::max({box_h, box_w, 1});
  const int out_h = static_cast<int>(box_h * scale), out_w = static_cast<int>(box_w * scale);
  if (out_h == 0 || out_w == 0) {
    throw InputError(source + ": the object is too thin to recentre (mask box " +
                     std::to_string(box_w + 1) + "x" + std::to_string(box_h + 1) + " px)");
  }
  torch::Tensor pixels = torch::from_blob(const_cast<std::uint8_t*>(px), {height, width, 4}, torch::kUInt8);
  torch::Tensor crop = pixels.slice(0, top, top + box_h).slice(1, left, left + box_w)
                           .to(torch::kFloat32).div(255).contiguous();
  torch::Tensor canvas = torch::zeros({size, size, 4}, torch::kFloat32);
  const int y0 = (size - out_h) / 2, x0 = (size - out_w) / 2;
  canvas.slice(0, y0, y0 + out_h).slice(1, x0, x0 + out_w).copy_(resize_area(crop, out_w, out_h));
  torch::Tensor square = canvas.mul(255).to(torch::kUInt8);  // truncation, like astype(uint8)

  // White background, [-1, 1], bilinear resize (align_corners=False, no antialias).
  torch::Tensor img = square.to(torch::kFloat32).div(255);
  torch::Tensor alpha = img.slice(2, 3, 4);
  torch::Tensor rgb = img.slice(2, 0, 3).mul(alpha).add(alpha.neg().add(1));
  torch::Tensor x = rgb.mul(2).sub(1).permute({2, 0, 1}).unsqueeze(0).contiguous();
  x = torch::upsample_bilinear2d(x, {image_size, image_size}, /*align_corners=*/false);
  return {x, had_alpha ? "alpha" : "none"};
}

}  // namespace ort3d
