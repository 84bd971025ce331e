// C++ unit tests of the host, run by ctest (CMakeLists.txt) from tests/host/test_cpp_host.py,
// which also writes the fixtures (engine-set variants, Python's scheduler tables).
//
//   ort3d_host_tests json                     the JSON reader's acceptances and refusals
//   ort3d_host_tests sha256 DIR               digests of known inputs
//   ort3d_host_tests manifest CASES           every CASES/<case>/ is read; expect.txt holds "ok" or
//                                             the text its one-line error must contain; an optional
//                                             request.txt (key=value lines) sets the device, the
//                                             format, a TensorRT identity and the expected format
//   ort3d_host_tests schedule FILE            Python's tables, bit for bit
//   ort3d_host_tests preprocess PNG SIZE OUT  the conditioning image as raw float32 (for pytest)
//   ort3d_host_tests ply GAUSSIANS OUT LAYOUT  raw float32 [N,14] -> .ply, viewer|raw (for pytest)
#include <torch/headeronly/version.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "json.h"
#include "manifest.h"
#include "ort3d/host.h"
#include "preprocess.h"
#include "schedule.h"
#include "sha256.h"

namespace fs = std::filesystem;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

std::string parse_error(const std::string& text) {
  try {
    ort3d::json::parse(text);
  } catch (const std::invalid_argument& err) {
    return err.what();
  }
  return "";
}

int test_json() {
  using ort3d::json::Type;
  const auto doc = ort3d::json::parse(
      R"( {"a": [1, -2.5e3, true, false, null], "b": {"c": "x\"\\\/\n\u00e9\ud83d\ude00"}, "d": 0} )");
  check(doc.type == Type::Object && doc.object.size() == 3, "object with 3 keys");
  const auto& a = *doc.find("a");
  check(a.array.size() == 5 && a.array[1].number == -2500.0 && a.array[2].boolean &&
            a.array[4].type == Type::Null,
        "array values");
  check(doc.find("b")->find("c")->string == "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80", "string escapes");
  check(doc.object[0].first == "a" && doc.object[2].first == "d", "key order kept");
  check(a.array[0].is_integer() && !ort3d::json::parse("0.5").is_integer(), "integers");
  const auto empty = ort3d::json::parse(R"({"o": { }, "a": [ ]})");
  check(empty.find("o")->type == Type::Object && empty.find("o")->object.empty() &&
            empty.find("a")->type == Type::Array && empty.find("a")->array.empty(),
        "empty object and array");
  const char* refused[] = {"", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "01", "1.", ".5", "+1",
                           "\"\\x\"", "\"a", "tru", "[1] [2]", "{\"a\":1,\"a\":2}", "\"\\ud800\"",
                           "\"tab\there\"", "nul", "-", "1e"};
  for (const char* text : refused) {
    check(!parse_error(text).empty(), std::string("refuses ") + text);
  }
  check(parse_error("[1, 2,\n x]").find("at byte 8") != std::string::npos, "error names the byte");
  std::string deep(100, '[');
  check(parse_error(deep).find("nesting") != std::string::npos, "refuses deep nesting");
  return failures;
}

int test_sha256(const fs::path& dir) {
  fs::create_directories(dir);
  const std::pair<std::string, std::string> cases[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"}};
  int index = 0;
  for (const auto& [content, digest] : cases) {
    const fs::path path = dir / ("sha256_case_" + std::to_string(index++));
    std::ofstream(path, std::ios::binary) << content;
    check(ort3d::sha256_file(path.string()) == digest, "sha256 of a " + std::to_string(content.size()) + "-byte file");
  }
  return failures;
}

std::string read_text(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  std::string out = text.str();
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::map<std::string, std::string> read_settings(const fs::path& path) {
  std::map<std::string, std::string> settings;
  std::istringstream lines(fs::exists(path) ? read_text(path) : "");
  for (std::string line; std::getline(lines, line);) {
    const size_t equals = line.find('=');
    if (equals != std::string::npos) settings[line.substr(0, equals)] = line.substr(equals + 1);
  }
  return settings;
}

// The reader's request for a case: this host's CPU defaults, changed by its request.txt settings.
ort3d::ManifestRequest read_request(std::map<std::string, std::string> settings) {
  ort3d::ManifestRequest request;
  request.device = settings.count("device") ? settings["device"] : "cpu";
  request.torch_version = TORCH_VERSION;
  if (settings.count("format")) {
    request.format = settings["format"] == "tensorrt" ? ort3d::EngineFormat::TensorRT : ort3d::EngineFormat::Aoti;
  }
  if (settings.count("tensorrt_version")) {
    request.tensorrt = ort3d::TensorRTIdentity{settings["tensorrt_version"], settings["gpu_name"],
                                               settings["compute_capability"]};
  }
  return request;
}

int test_manifest(const fs::path& cases) {
  if (!fs::is_directory(cases)) {
    std::cerr << "FAIL: " << cases << " is missing: the fixtures are written by tests/host/test_cpp_host.py\n";
    return 1;
  }
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(cases)) {
    if (entry.is_directory()) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  check(!dirs.empty(), "at least one manifest case");
  for (const fs::path& dir : dirs) {
    const std::string expect = read_text(dir / "expect.txt");
    auto settings = read_settings(dir / "request.txt");
    std::string error;
    try {
      const ort3d::Manifest m = ort3d::read_manifest(dir.string(), read_request(settings));
      check(m.networks.size() == ort3d::kHostNetworks.size(), dir.filename().string() + ": all networks read");
      const std::string format = settings["expect_format"];
      check(format.empty() || format == ort3d::format_name(m.format),
            dir.filename().string() + ": read as " + ort3d::format_name(m.format) + ", expected " + format);
    } catch (const ort3d::InputError& err) {
      error = err.what();
    }
    const std::string name = dir.filename().string();
    if (expect == "ok") {
      check(error.empty(), name + ": expected success, got: " + error);
    } else {
      check(error.find(expect) != std::string::npos, name + ": expected an error containing \"" + expect +
                                                            "\", got: \"" + error + "\"");
      check(error.find('\n') == std::string::npos, name + ": the error is one line");
    }
    std::cout << name << ": " << (error.empty() ? "accepted" : error) << "\n";
  }
  return failures;
}

std::vector<std::uint32_t> bits(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous().reshape({-1});
  std::vector<std::uint32_t> out(c.numel());
  std::memcpy(out.data(), c.data_ptr<float>(), out.size() * sizeof(float));
  return out;
}

int test_schedule(const fs::path& file) {
  std::ifstream in(file);
  if (!in) {
    std::cerr << "FAIL: " << file << " is missing: the fixture is written by tests/host/test_cpp_host.py\n";
    return 1;
  }
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    std::istringstream header(line);
    std::string tag, spacing;
    int steps = 0;
    double sigma_min = 0, sigma_max = 0;
    if (!(header >> tag >> steps >> sigma_min >> sigma_max >> spacing) || tag != "case") continue;
    const ort3d::Schedule s = ort3d::Schedule::create(steps, sigma_min, sigma_max, spacing);
    const std::pair<const char*, torch::Tensor> tables[] = {
        {"sigmas", s.sigmas}, {"timesteps", s.timesteps}, {"c_out", s.c_out},
        {"init_noise_sigma", s.init_noise_sigma}};
    for (const auto& [name, tensor] : tables) {
      std::getline(in, line);
      std::istringstream row(line);
      std::string label;
      row >> label;
      std::vector<std::uint32_t> want;
      std::string word;
      while (row >> word) want.push_back(static_cast<std::uint32_t>(std::stoul(word, nullptr, 16)));
      check(label == name && bits(tensor) == want,
            std::string(name) + " for " + std::to_string(steps) + " steps, " + spacing);
    }
    ++cases;
  }
  check(cases > 0, "at least one schedule case");
  std::cout << cases << " schedule cases\n";
  return failures;
}

int run_preprocess(const std::string& png, int size, const std::string& out) {
  const ort3d::Conditioning cond = ort3d::preprocess(ort3d::read_png(png), size, png);
  const torch::Tensor image = cond.image.contiguous();
  std::ofstream file(out, std::ios::binary);
  file.write(reinterpret_cast<const char*>(image.data_ptr<float>()),
             static_cast<std::streamsize>(image.numel() * sizeof(float)));
  std::cout << cond.background << "\n";
  return file ? 0 : 1;
}

int run_ply(const std::string& source, const std::string& out, const std::string& layout) {
  std::ifstream file(source, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const auto count = static_cast<int64_t>(bytes.size() / (14 * sizeof(float)));
  const torch::Tensor gaussians = torch::from_blob(bytes.data(), {count, 14}, torch::kFloat32).clone();
  ort3d::write_ply(out, gaussians, layout == "raw");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "json") return test_json();
    if (command == "sha256" && argc == 3) return test_sha256(argv[2]);
    if (command == "manifest" && argc == 3) return test_manifest(argv[2]);
    if (command == "schedule" && argc == 3) return test_schedule(argv[2]);
    if (command == "preprocess" && argc == 5) return run_preprocess(argv[2], std::stoi(argv[3]), argv[4]);
    if (command == "ply" && argc == 5) return run_ply(argv[2], argv[3], argv[4]);
  } catch (const std::exception& err) {
    std::cerr << "FAIL: " << command << ": " << err.what() << "\n";
    return 1;
  }
  std::cerr << "usage: ort3d_host_tests json | sha256 DIR | manifest CASES | schedule FILE | "
               "preprocess PNG SIZE OUT | ply GAUSSIANS OUT viewer|raw\n";
  return 2;
}
