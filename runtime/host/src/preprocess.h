// Input image -> the conditioning image, exactly like runtime/preprocess.py: the alpha channel is
// the object mask (the whole image when it is opaque), `recenter` as kiui.op.recenter with
// OpenCV's INTER_AREA (runtime/area_resize.py), white background, bilinear resize.
#pragma once

#include <string>

#include <torch/types.h>

#include "ort3d/host.h"

namespace ort3d {

struct Conditioning {
  torch::Tensor image;     // [1,3,S,S] float32 in [-1,1]
  std::string background;  // "alpha" | "none"
};

// Throws InputError (one line, naming `source`) for images outside the size limits or with an
// empty mask.
Conditioning preprocess(const Image& image, int image_size, const std::string& source);

// The size limits of runtime/preprocess.py (8..8192 px a side, 50 MP), checked from the header
// before any pixel is decoded; InputError naming `source`.
void check_image_size(int width, int height, const std::string& source);

// cv2.resize(src, (width, height), interpolation=INTER_AREA) for float32 [H,W,C] images.
torch::Tensor resize_area(const torch::Tensor& src, int width, int height);

}  // namespace ort3d
