// A small strict JSON reader (RFC 8259) for manifest.json: objects keep their key order, numbers
// are doubles, errors name the byte offset. No writer: the host only reads manifests.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ort3d::json {

enum class Type { Null, Bool, Number, String, Array, Object };

const char* type_name(Type type);  // "null", "boolean", "number", "string", "array", "object"

class Value {
 public:
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;

  const Value* find(const std::string& key) const;  // nullptr if absent (or not an object)
  bool is_integer() const;
  const char* type_name() const;
};

// Throws std::invalid_argument("... at byte N") for anything that is not exactly one JSON value.
Value parse(const std::string& text);

}  // namespace ort3d::json
