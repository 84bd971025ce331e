#include "json.h"

#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace ort3d::json {

const Value* Value::find(const std::string& key) const {
  for (const auto& [name, value] : object) {
    if (name == key) return &value;
  }
  return nullptr;
}

bool Value::is_integer() const {
  return type == Type::Number && std::isfinite(number) && std::floor(number) == number;
}

const char* Value::type_name() const { return json::type_name(type); }

const char* type_name(Type type) {
  switch (type) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

namespace {

constexpr int kMaxDepth = 64;  // manifests nest 6 levels; deeper input is refused, not recursed

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  Value document() {
    Value value = parse_value(0);
    skip_space();
    if (pos_ != s_.size()) fail("unexpected data after the JSON value");
    return value;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument(what + " at byte " + std::to_string(pos_));
  }

  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' ||
                                s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  char peek() {
    if (pos_ >= s_.size()) fail("unexpected end of input");
    return s_[pos_];
  }

  void expect_word(const char* word) {
    for (const char* c = word; *c; ++c, ++pos_) {
      if (pos_ >= s_.size() || s_[pos_] != *c) fail(std::string("invalid literal, expected ") + word);
    }
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 64 levels");
    skip_space();
    Value value;
    switch (peek()) {
      case '{': parse_object(value, depth); break;
      case '[': parse_array(value, depth); break;
      case '"': value.type = Type::String; value.string = parse_string(); break;
      case 't': expect_word("true"); value.type = Type::Bool; value.boolean = true; break;
      case 'f': expect_word("false"); value.type = Type::Bool; break;
      case 'n': expect_word("null"); break;
      default: value.type = Type::Number; value.number = parse_number(); break;
    }
    return value;
  }

  // "<open> [item (',' item)*] <close>" with pos_ on <open>; read_item parses one member.
  template <typename ReadItem>
  void parse_sequence(char close, ReadItem read_item) {
    ++pos_;
    skip_space();
    if (peek() == close) { ++pos_; return; }
    while (true) {
      read_item();
      skip_space();
      char c = peek();
      ++pos_;
      if (c == close) return;
      if (c != ',') { --pos_; fail(std::string("expected ',' or '") + close + "'"); }
    }
  }

  void parse_object(Value& value, int depth) {
    value.type = Type::Object;
    parse_sequence('}', [&] {
      skip_space();
      if (peek() != '"') fail("expected a string key");
      std::string key = parse_string();
      if (value.find(key)) fail("duplicate key \"" + key + "\"");
      skip_space();
      if (peek() != ':') fail("expected ':'");
      ++pos_;
      value.object.emplace_back(std::move(key), parse_value(depth + 1));
    });
  }

  void parse_array(Value& value, int depth) {
    value.type = Type::Array;
    parse_sequence(']', [&] { value.array.push_back(parse_value(depth + 1)); });
  }

  unsigned hex4() {
    unsigned code = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      char c = peek();
      code <<= 4;
      if (c >= '0' && c <= '9') code |= c - '0';
      else if (c >= 'a' && c <= 'f') code |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') code |= c - 'A' + 10;
      else fail("invalid \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      char c = peek();
      ++pos_;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) { --pos_; fail("control character in a string"); }
      if (c != '\\') { out += c; continue; }
      char e = peek();
      ++pos_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = hex4();
          if (code >= 0xD800 && code <= 0xDBFF) {  // a surrogate pair encodes one code point
            if (pos_ + 1 >= s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') fail("lone surrogate");
            pos_ += 2;
            unsigned low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("invalid surrogate pair");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xDC00 && code <= 0xDFFF) {
            fail("lone surrogate");
          }
          append_utf8(out, code);
          break;
        }
        default: --pos_; fail("invalid escape");
      }
    }
  }

  double parse_number() {
    const size_t start = pos_;
    auto digits = [&] {
      size_t first = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == first) fail("invalid number");
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else {
      digits();
    }
    if (pos_ < s_.size() && s_[pos_] == '.') { ++pos_; digits(); }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      digits();
    }
    // strtod is locale-dependent only for the decimal point; JSON's '.' is the C locale's.
    std::string token = s_.substr(start, pos_ - start);
    return std::strtod(token.c_str(), nullptr);
  }
};

}  // namespace

Value parse(const std::string& text) { return Parser(text).document(); }

}  // namespace ort3d::json
