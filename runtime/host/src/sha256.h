// SHA-256 of a file (FIPS 180-4), to check artefacts against the manifest before loading them.
#pragma once

#include <string>

namespace ort3d {

// Lower-case hex digest; throws std::runtime_error if the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace ort3d
