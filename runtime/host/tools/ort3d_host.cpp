// ort3d-host: the example executable of the C++ host (docs/cpp-host.md).
//
//   ort3d-host --engines DIR [--out DIR] [--steps N] [--seed S] [--device cpu|cuda]
//              [--format auto|aoti|tensorrt] [--no-cuda-graphs] [--ply-raw] IMAGE.png [IMAGE.png ...]
//
// Writes OUT/<stem>_views.png and OUT/<stem>.ply like ort3d-run (same defaults: 25 steps, seed
// 42, ./ort3d_out). Bad input: one line on stderr, exit 2; a failure while running: exit 1.
#include <c10/util/Exception.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "ort3d/host.h"

namespace {

constexpr int kExitOk = 0, kExitRuntime = 1, kExitInput = 2;
constexpr const char* kUsage =
    "usage: ort3d-host --engines DIR [--out DIR] [--steps N] [--seed S] [--device cpu|cuda] "
    "[--format auto|aoti|tensorrt] [--no-cuda-graphs] [--ply-raw] IMAGE.png [IMAGE.png ...]";

struct Args {
  std::string engines, out = "ort3d_out";
  ort3d::HostOptions host;
  ort3d::RunOptions run;
  bool ply_raw = false;
  std::vector<std::string> images;
};

long long parse_integer(const std::string& flag, const std::string& text, long long min) {
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < min) {
    throw ort3d::InputError(flag + ": expected an integer >= " + std::to_string(min) + ", got \"" + text + "\"");
  }
  return value;
}

Args parse_args(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ort3d::InputError(arg + ": expected a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage << "\n";
      std::exit(kExitOk);
    } else if (arg == "--engines") {
      args.engines = value();
    } else if (arg == "--out") {
      args.out = value();
    } else if (arg == "--steps") {
      args.run.steps = static_cast<int>(parse_integer(arg, value(), 2));
    } else if (arg == "--seed") {
      args.run.seed = static_cast<std::uint64_t>(parse_integer(arg, value(), 0));
    } else if (arg == "--device") {
      args.host.device = value();
    } else if (arg == "--format") {
      args.host.format = value();
    } else if (arg == "--no-cuda-graphs") {
      args.host.cuda_graphs = false;
    } else if (arg == "--ply-raw") {
      args.ply_raw = true;
    } else if (arg.rfind("-", 0) == 0) {
      throw ort3d::InputError("unknown option " + arg + " (" + kUsage + ")");
    } else {
      args.images.push_back(arg);
    }
  }
  if (args.engines.empty()) throw ort3d::InputError(std::string("--engines DIR is required (") + kUsage + ")");
  if (args.images.empty()) throw ort3d::InputError(std::string("no input image (") + kUsage + ")");
  std::set<std::string> stems;
  for (const auto& image : args.images) {
    if (!stems.insert(std::filesystem::path(image).stem().string()).second) {
      throw ort3d::InputError(image + ": another input has the same name; its outputs would "
                              "replace this one's (run them separately)");
    }
  }
  return args;
}

// c10::Error messages carry a C++ backtrace after the first line; users get the first line.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

int fail(int code, const std::string& message) {
  std::cerr << "ort3d-host: error: " << first_line(message) << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const ort3d::InputError& err) {
    return fail(kExitInput, err.what());
  }
  try {
    ort3d::Host host(args.engines, args.host);
    std::filesystem::create_directories(args.out);
    for (const auto& path : args.images) {
      const ort3d::Image image = ort3d::read_png(path);
      const auto started = std::chrono::steady_clock::now();
      const ort3d::Result result = host.run(image, args.run);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const auto stem = (std::filesystem::path(args.out) / std::filesystem::path(path).stem()).string();
      ort3d::write_views_png(stem + "_views.png", result);
      const int written = ort3d::write_ply(stem + ".ply", result.gaussians, args.ply_raw);
      std::cout << std::fixed << std::setprecision(3) << path << ": " << stem << "_views.png, " << stem
                << ".ply (" << written << " Gaussians; mask: " << result.background << "; " << host.format() << ", "
                << args.run.steps << " steps " << result.loop << ", " << seconds << " s";
      if (result.loop == "captured") std::cout << ", capture " << result.capture_seconds << " s";
      std::cout << ")\n";
    }
  } catch (const ort3d::InputError& err) {
    return fail(kExitInput, err.what());
  } catch (const c10::Error& err) {
    return fail(kExitRuntime, err.what_without_backtrace());
  } catch (const std::exception& err) {
    return fail(kExitRuntime, err.what());
  }
  return kExitOk;
}
