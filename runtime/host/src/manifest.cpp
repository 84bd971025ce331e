#include "manifest.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "json.h"
#include "ort3d/host.h"
#include "sha256.h"

#ifndef ORT3D_VERSION
#error "ORT3D_VERSION must be defined by the build (CMakeLists.txt reads models/version.py)"
#endif

namespace ort3d {

const char* format_name(EngineFormat format) {
  return format == EngineFormat::TensorRT ? "tensorrt" : "aoti";
}

const std::vector<std::string> kHostNetworks = {"image_encoder", "vae_encoder", "adapters", "unet",
                                                "vae_decoder",   "lgm",         "feedback"};

namespace {

namespace fs = std::filesystem;
using json::Type;
using json::Value;

constexpr int kFormatVersion = 1;

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string brief(const Value& value) {
  switch (value.type) {
    case Type::String: return "\"" + value.string.substr(0, 40) + "\"";
    case Type::Number: {
      std::ostringstream out;
      out << value.number;
      return out.str();
    }
    case Type::Bool: return value.boolean ? "true" : "false";
    default: return value.type_name();
  }
}

class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw InputError(path_ + ": field " + field + " " + problem);
  }

  const Value& get(const Value& object, const std::string& field, const std::string& key,
                   Type type) const {
    const std::string name = field.empty() ? key : field + "." + key;
    const Value* value = object.find(key);
    if (value == nullptr) fail(name, "is missing");
    if (value->type != type) {
      fail(name, std::string("is ") + value->type_name() + " " + brief(*value) + ", expected " +
                     json::type_name(type));
    }
    return *value;
  }

  std::string string(const Value& object, const std::string& field, const std::string& key) const {
    return get(object, field, key, Type::String).string;
  }

  double number(const Value& object, const std::string& field, const std::string& key) const {
    return get(object, field, key, Type::Number).number;
  }

  std::vector<TensorInfo> tensors(const Value& network, const std::string& field,
                                  const std::string& side) const {
    std::vector<TensorInfo> out;
    const Value& list = get(network, field, side, Type::Array);
    for (size_t i = 0; i < list.array.size(); ++i) {
      const std::string where = field + "." + side + "[" + std::to_string(i) + "]";
      const Value& item = list.array[i];
      if (item.type != Type::Object) fail(where, "is not an object");
      TensorInfo tensor{string(item, where, "name"), {}};
      for (const Value& dim : get(item, where, "shape", Type::Array).array) {
        if (!dim.is_integer() || dim.number < 1) fail(where + ".shape", "holds " + brief(dim) +
                                                                       ", expected positive integers");
        tensor.shape.push_back(static_cast<std::int64_t>(dim.number));
      }
      const std::string dtype = string(item, where, "dtype");
      if (dtype != "float32") fail(where + ".dtype", "is \"" + dtype + "\"; the host runs float32 I/O");
      out.push_back(std::move(tensor));
    }
    return out;
  }

 private:
  std::string path_;
};

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  if (!file.good() && !file.eof()) throw InputError(path.string() + ": cannot be read");
  return text.str();
}

// The I/O table every network must have, from the base sizes of the set.
std::map<std::string, std::pair<std::vector<TensorInfo>, std::vector<TensorInfo>>> expected_io(
    const Manifest& m) {
  const std::int64_t S = m.image_size, F = m.num_views, s = S / 8, D = m.clip_dim;
  std::vector<TensorInfo> features;
  for (const char* kind : {"rgb", "ccm"}) {
    for (int level = 0; level < 4; ++level) {
      features.push_back({std::string(kind) + "_feat_" + std::to_string(level),
                          {F, m.adapter_channels[level], s >> level, s >> level}});
    }
  }
  const std::vector<TensorInfo> maps = {{"rgb", {F, kUnshuffledChannels, s, s}},
                                        {"ccm", {F, kUnshuffledChannels, s, s}}};
  std::vector<TensorInfo> unet_inputs = {{"sample", {2, F, 8, s, s}},
                                         {"timestep", {1}},
                                         {"encoder_hidden_states", {2, 1, D}},
                                         {"added_time_ids", {2, 3}}};
  unet_inputs.insert(unet_inputs.end(), features.begin(), features.end());
  return {
      {"image_encoder", {{{"image", {1, 3, S, S}}}, {{"image_embeds", {1, 1, D}}}}},
      {"vae_encoder", {{{"image", {1, 3, S, S}}}, {{"latent", {1, 4, s, s}}}}},
      {"adapters", {maps, features}},
      {"unet", {unet_inputs, {{"noise_pred", {2, F, 4, s, s}}}}},
      {"vae_decoder", {{{"latents", {F, 4, s, s}}}, {{"images", {F, 3, S, S}}}}},
      {"lgm", {{{"images", {1, F, 3, S, S}}, {"timestep", {1}}}, {{"gaussians", {1, m.num_gaussians, 14}}}}},
      {"feedback", {{{"gaussians", {1, m.num_gaussians, 14}}}, maps}},
  };
}

std::string tensor_text(const TensorInfo& tensor) {
  return tensor.name + " " + shape_text(tensor.shape);
}

// One size of the set read from a network's I/O table, e.g. the image size from image_encoder.
std::int64_t base_size(const Reader& reader, const Manifest& m, const std::string& network,
                       bool output, size_t index, size_t axis) {
  const NetworkInfo& info = m.networks.at(network);
  const auto& tensors = output ? info.outputs : info.inputs;
  const std::string field = "networks." + network + (output ? ".outputs" : ".inputs");
  if (index >= tensors.size()) reader.fail(field, "has " + std::to_string(tensors.size()) + " tensor(s)");
  if (axis >= tensors[index].shape.size()) {
    reader.fail(field + "[" + std::to_string(index) + "].shape",
                "is " + shape_text(tensors[index].shape) + ", too few dimensions");
  }
  return tensors[index].shape[axis];
}

// The file an entry (aoti or engine) names, checked: a plain name, present, with the sha256 the
// manifest recorded (a corrupt or foreign plan crashes TensorRT's deserialiser).
std::string checked_file(const Reader& reader, const fs::path& dir, const Value& entry,
                         const std::string& field, bool verify_hashes) {
  static const std::regex file_pattern("^[A-Za-z0-9_.-]+$");
  const std::string file = reader.string(entry, field, "file");
  if (!std::regex_match(file, file_pattern)) reader.fail(field + ".file", "is not a plain file name");
  const fs::path path = dir / file;
  if (!fs::is_regular_file(path)) throw InputError(path.string() + ": file named by " + field + " is missing");
  const std::string sha256 = reader.string(entry, field, "sha256");
  if (verify_hashes && sha256_file(path.string()) != sha256) {
    throw InputError(path.string() + ": sha256 does not match " + field +
                     ".sha256 (file corrupt or replaced; rebuild the set)");
  }
  return fs::absolute(path).string();
}

// A network's entry of `kind` ("aoti" or "engine") at `field`; `missing`: why its absence matters.
const Value& artefact(const Reader& reader, const Value& network, const std::string& kind,
                      const std::string& field, const std::string& missing) {
  const Value* entry = network.find(kind);
  if (entry == nullptr || entry->type == Type::Null) reader.fail(field, missing);
  if (entry->type != Type::Object) reader.fail(field, "is not an object");
  return *entry;
}

// Every (item, value) must be the entry key's; `differs`: what the refusal says after the values.
void check_key(const Reader& reader, const Value& entry, const std::string& field,
               const std::vector<std::pair<std::string, std::string>>& wanted,
               const std::function<std::string(const std::string&)>& differs) {
  const Value& key = reader.get(entry, field, "key", Type::Object);
  for (const auto& [item, want] : wanted) {
    std::string got = reader.string(key, field + ".key", item);
    if (item == "torch_version") got = got.substr(0, got.find('+'));  // "2.13.0+cpu": the release
    if (got != want) reader.fail(field + ".key." + item, "is \"" + got + "\" but " + differs(want));
  }
}

// A network's AOTInductor package (check_aoti_set): compiled by this ort3d, for this device, by
// this torch release.
std::string checked_package(const Reader& reader, const fs::path& dir, const Value& network,
                            const std::string& name, const ManifestRequest& request) {
  const std::string field = "networks." + name + ".aoti";
  const Value& package = artefact(reader, network, "aoti", field,
                                  "is missing: no AOTInductor package was built for \"" + name +
                                      "\"; rebuild the set with --formats aoti");
  const std::string torch_release = request.torch_version.substr(0, request.torch_version.find('+'));
  check_key(reader, package, field,
            {{"ort3d_version", ORT3D_VERSION}, {"device", request.device}, {"torch_version", torch_release}},
            [](const std::string& want) { return "this host needs \"" + want + "\"; rebuild the set here"; });
  return checked_file(reader, dir, package, field, request.verify_hashes);
}

// A network's TensorRT plan (check_engine_set): built by this ort3d, by this TensorRT version,
// for this GPU model.
std::string checked_engine(const Reader& reader, const fs::path& dir, const Value& network,
                           const std::string& name, const TensorRTIdentity& identity,
                           bool verify_hashes) {
  const std::string field = "networks." + name + ".engine";
  const Value& engine = artefact(reader, network, "engine", field,
                                 "is null: no TensorRT engine was built for \"" + name +
                                     "\" (ONNX only); build on a host with TensorRT");
  check_key(reader, engine, field, {{"ort3d_version", ORT3D_VERSION}},
            [](const std::string&) { return std::string("this is ort3d " ORT3D_VERSION); });
  check_key(reader, engine, field,
            {{"tensorrt_version", identity.version},
             {"gpu_name", identity.gpu_name},
             {"compute_capability", identity.compute_capability}},
            [](const std::string& want) { return "this host has \"" + want + "\"; rebuild the engines here"; });
  return checked_file(reader, dir, engine, field, verify_hashes);
}

// The format of the six networks: as asked, or (not asked) TensorRT when this process can run it
// and every one of them has an engine entry.
EngineFormat choose_format(const Value& networks, const ManifestRequest& request) {
  if (request.format == EngineFormat::TensorRT && !request.tensorrt) {
    throw std::invalid_argument("read_manifest: TensorRT asked for without this process's identity");
  }
  if (request.format) return *request.format;
  if (!request.tensorrt) return EngineFormat::Aoti;
  for (const std::string& name : kHostNetworks) {
    if (name == kFeedbackNetwork) continue;
    const Value* entry = networks.find(name);
    const Value* engine = entry != nullptr ? entry->find("engine") : nullptr;
    if (engine == nullptr || engine->type != Type::Object) return EngineFormat::Aoti;
  }
  return EngineFormat::TensorRT;
}

}  // namespace

Manifest read_manifest(const std::string& directory, const ManifestRequest& request) {
  const fs::path dir(directory);
  const fs::path path = dir / "manifest.json";
  if (!fs::is_regular_file(path)) {
    throw InputError(path.string() + ": no engine-set manifest here (build one with `ort3d-build "
                     "--formats aoti --out " + directory + "`)");
  }
  Value doc;
  try {
    doc = json::parse(read_text(path));
  } catch (const std::invalid_argument& err) {
    throw InputError(path.string() + ": not valid JSON (" + err.what() + ")");
  }
  const Reader reader(path.string());
  if (doc.type != Type::Object) reader.fail("(top level)", "is not an object");
  Manifest m;
  m.path = path.string();
  const std::string format = reader.string(doc, "", "format");
  if (format != "ort3d-engine-set") reader.fail("format", "is \"" + format + "\", expected \"ort3d-engine-set\"");
  const Value& version = reader.get(doc, "", "format_version", Type::Number);
  if (version.number != kFormatVersion) {
    reader.fail("format_version", "is " + brief(version) + "; this host reads format version " +
                                      std::to_string(kFormatVersion));
  }
  const std::string ort3d_version = reader.string(doc, "", "ort3d_version");
  if (ort3d_version != ORT3D_VERSION) {
    reader.fail("ort3d_version", "is \"" + ort3d_version + "\" but this is ort3d " ORT3D_VERSION
                                 "; rebuild the set with this version");
  }
  m.preset = reader.string(doc, "", "preset");
  const Value& schedule = reader.get(doc, "", "schedule", Type::Object);
  m.sigma_min = reader.number(schedule, "schedule", "sigma_min");
  m.sigma_max = reader.number(schedule, "schedule", "sigma_max");
  if (!(m.sigma_min > 0) || !(m.sigma_max > m.sigma_min)) {
    reader.fail("schedule", "needs 0 < sigma_min < sigma_max");
  }
  m.timestep_spacing = reader.string(schedule, "schedule", "timestep_spacing");
  if (m.timestep_spacing != "linspace" && m.timestep_spacing != "leading" &&
      m.timestep_spacing != "trailing") {
    reader.fail("schedule.timestep_spacing", "is \"" + m.timestep_spacing +
                                                 "\", expected linspace, leading or trailing");
  }

  const Value& networks = reader.get(doc, "", "networks", Type::Object);
  m.format = choose_format(networks, request);
  for (const std::string& name : kHostNetworks) {
    const std::string field = "networks." + name;
    const Value* entry = networks.find(name);
    if (entry == nullptr) {
      std::string present;
      for (const auto& item : networks.object) present += (present.empty() ? "" : ", ") + item.first;
      reader.fail(field, "is missing: the set has no \"" + name + "\" network (has " + present + ")");
    }
    if (entry->type != Type::Object) reader.fail(field, "is not an object");
    NetworkInfo info{reader.tensors(*entry, field, "inputs"), reader.tensors(*entry, field, "outputs"),
                     EngineFormat::Aoti, {}};
    if (m.format == EngineFormat::TensorRT && name != kFeedbackNetwork) {
      info.format = EngineFormat::TensorRT;
      info.file = checked_engine(reader, dir, *entry, name, *request.tensorrt, request.verify_hashes);
    } else {
      info.file = checked_package(reader, dir, *entry, name, request);
    }
    m.networks[name] = std::move(info);
  }

  const Value& decoder_options = reader.get(*networks.find("vae_decoder"), "networks.vae_decoder",
                                            "options", Type::Object);
  m.vae_scaling_factor = reader.number(decoder_options, "networks.vae_decoder.options", "scaling_factor");
  if (!(m.vae_scaling_factor > 0)) reader.fail("networks.vae_decoder.options.scaling_factor", "must be positive");

  // The cameras are folded into three packages; they must all hold the same ones.
  std::string cameras;
  for (const char* name : {"unet", "lgm", "feedback"}) {
    const std::string field = std::string("networks.") + name + ".options";
    const Value& options = reader.get(*networks.find(name), std::string("networks.") + name, "options", Type::Object);
    const std::string sha = reader.string(options, field, "cameras_sha256");
    if (!cameras.empty() && sha != cameras) {
      reader.fail(field + ".cameras_sha256", "differs from networks.unet's: the packages were "
                                             "exported for different cameras; rebuild the set");
    }
    cameras = sha;
  }

  m.image_size = base_size(reader, m, "image_encoder", false, 0, 3);
  m.clip_dim = base_size(reader, m, "image_encoder", true, 0, 2);
  m.num_views = base_size(reader, m, "adapters", false, 0, 0);
  m.num_gaussians = base_size(reader, m, "lgm", true, 0, 1);
  for (size_t level = 0; level < 4; ++level) {
    m.adapter_channels.push_back(base_size(reader, m, "adapters", true, level, 1));
  }
  if (m.image_size % 64 != 0) {
    reader.fail("networks.image_encoder.inputs[0].shape", "has image size " +
                                                              std::to_string(m.image_size) +
                                                              ", not a multiple of 64");
  }
  for (const auto& [name, io] : expected_io(m)) {
    const NetworkInfo& info = m.networks[name];
    const std::pair<const char*, const std::vector<TensorInfo>*> sides[] = {
        {"inputs", &io.first}, {"outputs", &io.second}};
    for (const auto& [side, want] : sides) {
      const auto& got = std::string(side) == "inputs" ? info.inputs : info.outputs;
      const std::string field = "networks." + name + "." + side;
      if (got.size() != want->size()) {
        reader.fail(field, "has " + std::to_string(got.size()) + " tensors but preset \"" + m.preset +
                               "\" needs " + std::to_string(want->size()));
      }
      for (size_t i = 0; i < got.size(); ++i) {  // the first tensor that differs, by name and shape
        if (got[i].name != (*want)[i].name || got[i].shape != (*want)[i].shape) {
          reader.fail(field + "[" + std::to_string(i) + "]", "is " + tensor_text(got[i]) + " but preset \"" +
                                                                 m.preset + "\" needs " + tensor_text((*want)[i]));
        }
      }
    }
  }
  return m;
}

}  // namespace ort3d
