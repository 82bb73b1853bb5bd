// The Open Inference Protocol (V2) codec, host side: see oip.h.
// The parser reads tensor data straight from the JSON text into typed storage (no document tree, no
// strtod); the small parts (shape, parameters, outputs) go to nlohmann as text slices. Inside this file a
// malformed body unwinds the recursive descent with InferError; it never leaves the file: the API turns
// it into a status.
#include "inference/oip.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/common.h"

namespace ferry::oip {
namespace impl {

namespace internal {

[[noreturn]] inline void Fail(const std::string& message) { throw InferError(400, message); }

inline std::string Where(const std::string& tensor) { return "input '" + tensor + "'"; }

inline const char* Expected(DataType t) {
  switch (t) {
    case DataType::kBool:
      return "true or false";
    case DataType::kFp16:
    case DataType::kFp32:
    case DataType::kFp64:
      return "a number in the datatype's range";
    case DataType::kBytes:
      return "a string";
    default:
      return "an integer in the datatype's range";
  }
}

// A forward-only reader of JSON text. An infer request's tensor data, its only large part, is parsed from
// the text straight into typed storage (no document tree, no strtod); the small parts (shape, parameters,
// outputs) are handed to nlohmann as text slices.
class JsonText {
 public:
  explicit JsonText(std::string_view text) : s_(text) {}
  char Peek() {
    SkipWs();
    return p_ < s_.size() ? s_[p_] : '\0';
  }
  bool AtEnd() {
    SkipWs();
    return p_ >= s_.size();
  }
  bool Consume(char c) {
    if (Peek() != c) return false;
    ++p_;
    return true;
  }
  void Expect(char c) {
    if (!Consume(c)) Syntax(std::string("expected '") + c + "'");
  }
  [[noreturn]] void Syntax(const std::string& what) const {
    throw InferError(400, "request body is not valid JSON: " + what + " at byte " + std::to_string(p_));
  }
  // Calls on_key(key) with the cursor at each member's value; on_key must consume the value.
  template <typename F>
  void Object(F&& on_key) {
    Expect('{');
    if (Consume('}')) return;
    do {
      if (Peek() != '"') Syntax("expected a member name");
      std::string key = String();
      Expect(':');
      on_key(key);
    } while (Consume(','));
    Expect('}');
  }
  // Calls on_element() with the cursor at each element; on_element must consume it.
  template <typename F>
  void Array(F&& on_element) {
    Expect('[');
    if (Consume(']')) return;
    do on_element();
    while (Consume(','));
    Expect(']');
  }
  std::string String() {
    Expect('"');
    std::string out;
    for (;;) {
      size_t end = s_.find_first_of("\"\\", p_);
      if (end == std::string_view::npos) Syntax("unterminated string");
      for (size_t i = p_; i < end; ++i)
        if (static_cast<unsigned char>(s_[i]) < 0x20) Syntax("control character in a string");
      if (!ValidUtf8(s_.substr(p_, end - p_))) Syntax("invalid UTF-8 in a string");
      out.append(s_.data() + p_, end - p_);
      p_ = end + 1;
      if (s_[end] == '"') return out;
      if (p_ >= s_.size()) Syntax("unterminated string");
      char e = s_[p_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u':
          AppendUtf8(out, CodePoint());
          break;
        default:
          Syntax("bad escape in a string");
      }
    }
  }
  // Skips one value and returns its text.
  std::string_view Value() {
    char c = Peek();
    size_t start = p_;
    if (c == '"') {
      String();
    } else if (c == '{' || c == '[') {
      int depth = 0;
      do {
        char d = s_[p_];
        if (d == '"') {
          String();
          continue;
        }
        if (d == '{' || d == '[') ++depth;
        if (d == '}' || d == ']') --depth;
        ++p_;
      } while (depth > 0 && p_ < s_.size());
      if (depth > 0) Syntax("unterminated array or object");
    } else {
      p_ = Scalar().size() + start;
    }
    if (p_ == start) Syntax("expected a value");
    return s_.substr(start, p_ - start);
  }
  // The text of the scalar at the cursor: up to the next ',', ']', '}' or white space.
  std::string_view Scalar() {
    SkipWs();
    size_t end = p_;
    while (end < s_.size()) {
      char c = s_[end];
      if (c == ',' || c == ']' || c == '}' || c == ' ' || c == '\n' || c == '\r' || c == '\t') break;
      ++end;
    }
    std::string_view token = s_.substr(p_, end - p_);
    p_ = end;
    return token;
  }
  size_t pos() const { return p_; }
  void set_pos(size_t p) { p_ = p; }
  // The unread text, after white space.
  std::string_view Rest() {
    SkipWs();
    return s_.substr(p_);
  }
  void Skip(size_t n) { p_ += n; }
  // True when the next character ends a value: ',', ']', '}', white space or the end.
  bool AtDelimiter() const {
    if (p_ >= s_.size()) return true;
    char c = s_[p_];
    return c == ',' || c == ']' || c == '}' || c == ' ' || c == '\n' || c == '\r' || c == '\t';
  }

 private:
  static bool ValidUtf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      if (c < 0x80) {
        ++i;
        continue;
      }
      size_t n = (c >= 0xc2 && c <= 0xdf) ? 1 : (c >= 0xe0 && c <= 0xef) ? 2 : (c >= 0xf0 && c <= 0xf4) ? 3 : 0;
      if (n == 0 || s.size() - i <= n) return false;
      uint32_t cp = c & (0x3f >> n);
      for (size_t k = 1; k <= n; ++k) {
        unsigned char d = static_cast<unsigned char>(s[i + k]);
        if ((d & 0xc0) != 0x80) return false;
        cp = (cp << 6) | (d & 0x3f);
      }
      // no overlong forms, no surrogates, nothing past U+10FFFF
      if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp < 0xe000))
        return false;
      i += n + 1;
    }
    return true;
  }
  void SkipWs() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\n' || s_[p_] == '\r' || s_[p_] == '\t')) ++p_;
  }
  uint32_t Hex4() {
    if (s_.size() - p_ < 4) Syntax("bad \\u escape");
    uint32_t v = 0;
    auto r = std::from_chars(s_.data() + p_, s_.data() + p_ + 4, v, 16);
    if (r.ec != std::errc() || r.ptr != s_.data() + p_ + 4) Syntax("bad \\u escape");
    p_ += 4;
    return v;
  }
  uint32_t CodePoint() {
    uint32_t cp = Hex4();
    if (cp >= 0xd800 && cp < 0xdc00) {  // a surrogate pair
      if (s_.substr(p_, 2) != "\\u") Syntax("unpaired surrogate in a string");
      p_ += 2;
      uint32_t low = Hex4();
      if (low < 0xdc00 || low > 0xdfff) Syntax("unpaired surrogate in a string");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
    } else if (cp >= 0xdc00 && cp < 0xe000) {
      Syntax("unpaired surrogate in a string");
    }
    return cp;
  }
  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  std::string_view s_;
  size_t p_ = 0;
};

// Reads one element at the cursor into T: a JSON number (true/false for bool), parsed in place by
// from_chars. False, with the cursor where it was, when it is not one or is out of T's range.
template <typename T>
bool ReadElement(JsonText& r, T* out) {
  std::string_view rest = r.Rest();
  const size_t start = r.pos();
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) {
    if (rest.rfind("true", 0) == 0 || rest.rfind("false", 0) == 0) {
      *out = rest[0] == 't';
      r.Skip(*out ? 4 : 5);
      ok = true;
    }
  } else if (!rest.empty() && (rest[0] == '-' || (rest[0] >= '0' && rest[0] <= '9'))) {  // no inf, nan, "1"
    const char* end = rest.data() + rest.size();
    std::from_chars_result res;
    if constexpr (std::is_same_v<T, Half>) {
      float f;
      res = std::from_chars(rest.data(), end, f);
      if (res.ec == std::errc()) *out = Half::FromFloat(f);
    } else {
      res = std::from_chars(rest.data(), end, *out);  // integers stop at "." or "e"; unsigned reject "-"
    }
    if (res.ec == std::errc()) {
      r.Skip(static_cast<size_t>(res.ptr - rest.data()));
      ok = true;
    }
  }
  if (ok && r.AtDelimiter()) return true;
  r.set_pos(start);
  return false;
}

inline std::string Quote(std::string_view token) {
  return std::string(token.substr(0, 40)) + (token.size() > 40 ? "..." : "");
}

// Reads a JSON array (flat or nested, row-major) at the cursor into t. Counts every element so a wrong
// count is reported as such.
template <typename T>
void FillFromText(JsonText& r, Tensor& t) {
  const size_t capacity = static_cast<size_t>(t.size());
  size_t count = 0;
  T* out = nullptr;
  std::vector<std::string>* strings = nullptr;
  if constexpr (std::is_same_v<T, std::string>)
    strings = &t.mutable_strings();
  else
    out = t.mutable_data<T>().data();
  auto element = [&](auto& self) -> void {
    if (r.Peek() == '[') return r.Array([&] { self(self); });
    if constexpr (std::is_same_v<T, std::string>) {
      if (r.Peek() != '"')
        Fail(Where(t.name()) + ": element " + std::to_string(count) + " (" + Quote(r.Scalar()) +
             ") is not a string for BYTES");
      std::string v = r.String();
      if (count < capacity) (*strings)[count] = std::move(v);
    } else {
      T v{};
      if (!ReadElement<T>(r, &v))
        Fail(Where(t.name()) + ": element " + std::to_string(count) + " (" + Quote(r.Scalar()) + ") is not " +
             Expected(t.datatype()) + " for " + std::string(DataTypeName(t.datatype())));
      if (count < capacity) out[count] = v;
    }
    ++count;
  };
  if (r.Peek() != '[') Fail(Where(t.name()) + ": \"data\" must be an array");
  element(element);
  if (count != capacity)
    Fail(Where(t.name()) + ": shape " + ShapeString(t.shape()) + " needs " + std::to_string(capacity) +
         " elements, \"data\" has " + std::to_string(count));
}

inline void FillFromJsonText(JsonText& data, Tensor& t) {
  switch (t.datatype()) {
    case DataType::kBool:
      return FillFromText<bool>(data, t);
    case DataType::kUint8:
      return FillFromText<uint8_t>(data, t);
    case DataType::kUint16:
      return FillFromText<uint16_t>(data, t);
    case DataType::kUint32:
      return FillFromText<uint32_t>(data, t);
    case DataType::kUint64:
      return FillFromText<uint64_t>(data, t);
    case DataType::kInt8:
      return FillFromText<int8_t>(data, t);
    case DataType::kInt16:
      return FillFromText<int16_t>(data, t);
    case DataType::kInt32:
      return FillFromText<int32_t>(data, t);
    case DataType::kInt64:
      return FillFromText<int64_t>(data, t);
    case DataType::kFp16:
      return FillFromText<Half>(data, t);
    case DataType::kFp32:
      return FillFromText<float>(data, t);
    case DataType::kFp64:
      return FillFromText<double>(data, t);
    case DataType::kBytes:
      return FillFromText<std::string>(data, t);
  }
}

// A small part of the request (shape, parameters, outputs) as a document.
inline Json ParseSlice(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded()) Fail("request body is not valid JSON: bad value " + Quote(text));
  return j;
}

// Reads `n` bytes of the binary section for tensor `t` (the binary tensor extension).
inline void FillFromBinary(std::string_view chunk, Tensor& t) {
  if (t.datatype() != DataType::kBytes) {
    if (chunk.size() != t.ByteSize())
      Fail(Where(t.name()) + ": binary_data_size is " + std::to_string(chunk.size()) + " bytes, shape " +
           ShapeString(t.shape()) + " of " + std::string(DataTypeName(t.datatype())) + " needs " +
           std::to_string(t.ByteSize()));
    if (!chunk.empty()) std::memcpy(t.mutable_bytes().data(), chunk.data(), chunk.size());
    if (t.datatype() == DataType::kBool)  // any non-zero byte is true; a bool holds only 0 or 1
      for (std::byte& b : t.mutable_bytes()) b = b != std::byte{0} ? std::byte{1} : std::byte{0};
    return;
  }
  std::vector<std::string>& out = t.mutable_strings();
  size_t at = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (chunk.size() - at < 4) Fail(Where(t.name()) + ": binary BYTES data ends before element " + std::to_string(i));
    uint32_t len = 0;
    for (int b = 3; b >= 0; --b) len = (len << 8) | static_cast<uint8_t>(chunk[at + static_cast<size_t>(b)]);
    at += 4;
    if (chunk.size() - at < len)
      Fail(Where(t.name()) + ": binary BYTES element " + std::to_string(i) + " is cut short");
    out[i].assign(chunk.data() + at, len);
    at += len;
  }
  if (at != chunk.size())
    Fail(Where(t.name()) + ": binary BYTES data is longer than its " + std::to_string(out.size()) + " elements");
}

inline Shape ReadShape(const Json& j, const std::string& name) {
  if (!j.is_array()) Fail(Where(name) + ": \"shape\" must be an array of non-negative integers");
  Shape shape;
  for (const Json& d : j) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      Fail(Where(name) + ": \"shape\" must be an array of non-negative integers, got " + j.dump());
    shape.push_back(d.get<int64_t>());
  }
  if (ElementCount(shape) < 0) Fail(Where(name) + ": shape " + j.dump() + " is too large");
  return shape;
}

}  // namespace internal

// Parses an infer request body. `binary_header_length` is the Inference-Header-Content-Length header's
// value when present (the JSON is that long and binary tensor data follows). Throws InferError 400
// naming what is wrong.
inline InferRequest ParseInferRequestOrThrow(std::string_view body,
                                      std::optional<size_t> binary_header_length = std::nullopt) {
  using internal::Fail;
  using internal::Where;
  std::string_view json_text = body, binary;
  if (binary_header_length) {
    if (*binary_header_length > body.size())
      Fail("Inference-Header-Content-Length (" + std::to_string(*binary_header_length) + ") is larger than the body (" +
           std::to_string(body.size()) + " bytes)");
    json_text = body.substr(0, *binary_header_length);
    binary = body.substr(*binary_header_length);
  }
  internal::JsonText r(json_text);
  if (r.Peek() != '{') {
    if (Json::accept(json_text)) Fail("request body must be a JSON object with \"inputs\"");
    Fail("request body is not valid JSON");
  }
  struct RawInput {
    std::optional<std::string> name, datatype;
    std::string_view shape, parameters, data;  // data: its text, when read after the rest
    bool has_data = false;
    std::optional<Tensor> tensor;  // read in place when "data" came after "datatype" and "shape"
  };
  // A zero-filled tensor for an input whose datatype and shape have been read.
  auto make_tensor = [&body](const std::string& n, const std::optional<std::string>& dt, std::string_view shape_text) {
    if (!dt) Fail(Where(n) + ": \"datatype\" is required (e.g. \"FP32\")");
    std::optional<DataType> datatype = ParseDataType(*dt);
    if (!datatype)
      Fail(Where(n) + ": unknown datatype \"" + *dt +
           "\" (expected BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES)");
    if (shape_text.empty()) Fail(Where(n) + ": \"shape\" is required");
    Shape shape = internal::ReadShape(internal::ParseSlice(shape_text), n);
    const int64_t count = ElementCount(shape);
    if (count > static_cast<int64_t>(body.size()))  // every element takes at least one byte of the body
      Fail(Where(n) + ": shape " + ShapeString(shape) + " has " + std::to_string(count) +
           " elements, more than the request could carry");
    return Tensor(n, *datatype, std::move(shape));
  };
  InferRequest req;
  std::vector<RawInput> raw;
  bool has_inputs = false;
  std::string_view outputs;
  r.Object([&](const std::string& key) {
    if (key == "id") {
      if (r.Peek() != '"') Fail("\"id\" must be a string");
      req.id = r.String();
    } else if (key == "parameters") {
      req.parameters = internal::ParseSlice(r.Value());
      if (!req.parameters.is_object()) Fail("\"parameters\" must be an object");
    } else if (key == "inputs") {
      has_inputs = true;
      if (r.Peek() != '[') Fail("\"inputs\" must be a non-empty array of tensors");
      r.Array([&] {
        const std::string at = "inputs[" + std::to_string(raw.size()) + "]";
        if (r.Peek() != '{') Fail(at + " must be an object");
        RawInput in;
        r.Object([&](const std::string& field) {
          if (field == "name") {
            if (r.Peek() != '"') Fail(at + ": \"name\" must be a non-empty string");
            in.name = r.String();
          } else if (field == "datatype" && r.Peek() == '"') {
            in.datatype = r.String();
          } else if (field == "shape") {
            in.shape = r.Value();
          } else if (field == "parameters") {
            in.parameters = r.Value();
          } else if (field == "data") {
            in.has_data = true;
            if (in.name && !in.name->empty() && in.datatype && !in.shape.empty()) {
              in.tensor = make_tensor(*in.name, in.datatype, in.shape);
              internal::FillFromJsonText(r, *in.tensor);
            } else {
              in.data = r.Value();
            }
          } else {
            r.Value();
          }
        });
        if (!in.name || in.name->empty()) Fail(at + ": \"name\" must be a non-empty string");
        raw.push_back(std::move(in));
      });
    } else if (key == "outputs") {
      outputs = r.Value();
    } else {
      r.Value();
    }
  });
  if (!r.AtEnd()) r.Syntax("unexpected text after the request object");
  if (!has_inputs) Fail("\"inputs\" is required");
  if (raw.empty()) Fail("\"inputs\" must be a non-empty array of tensors");
  size_t binary_at = 0;
  for (RawInput& in : raw) {
    const std::string& n = *in.name;
    for (const Tensor& seen : req.inputs)
      if (seen.name() == n) Fail(Where(n) + " appears twice");
    Tensor t = in.tensor ? std::move(*in.tensor) : make_tensor(n, in.datatype, in.shape);
    std::optional<uint64_t> binary_size;
    if (!in.parameters.empty()) {
      Json p = internal::ParseSlice(in.parameters);
      if (!p.is_object()) Fail(Where(n) + ": \"parameters\" must be an object");
      if (auto b = p.find("binary_data_size"); b != p.end()) {
        if (!b->is_number_unsigned() && !(b->is_number_integer() && b->get<int64_t>() >= 0))
          Fail(Where(n) + ": binary_data_size must be a non-negative integer");
        binary_size = b->get<uint64_t>();
      }
    }
    if (binary_size) {
      if (!binary_header_length)
        Fail(Where(n) + ": binary_data_size is set but the request has no Inference-Header-Content-Length header");
      if (in.has_data) Fail(Where(n) + ": has both \"data\" and binary_data_size");
      if (*binary_size > binary.size() - binary_at)
        Fail(Where(n) + ": binary_data_size " + std::to_string(*binary_size) + " runs past the end of the body");
      internal::FillFromBinary(binary.substr(binary_at, *binary_size), t);
      binary_at += *binary_size;
    } else {
      if (!in.has_data) Fail(Where(n) + ": \"data\" is required");
      if (!in.tensor) {
        internal::JsonText data(in.data);
        internal::FillFromJsonText(data, t);
        if (!data.AtEnd()) data.Syntax("unexpected text after \"data\"");
      }
    }
    req.inputs.push_back(std::move(t));
  }
  if (binary_at != binary.size())
    Fail("the body has " + std::to_string(binary.size() - binary_at) + " bytes of binary data that no input claims");
  if (!outputs.empty()) {
    Json outs = internal::ParseSlice(outputs);
    if (!outs.is_array()) Fail("\"outputs\" must be an array of {\"name\": ...}");
    for (const Json& o : outs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
        Fail("\"outputs\" must be an array of {\"name\": ...}");
      req.outputs.push_back(o["name"].get<std::string>());
    }
  }
  return req;
}

// Checks a parsed request against the model's inputs and outputs. Throws InferError 400.
inline void ValidateOrThrow(const ModelMetadata& m, const InferRequest& req, std::string_view model_name) {
  using internal::Fail;
  using internal::Where;
  if (!m.inputs.empty()) {
    for (const Tensor& t : req.inputs) {
      const TensorSpec* spec = nullptr;
      for (const TensorSpec& s : m.inputs)
        if (s.name == t.name()) spec = &s;
      if (!spec) {
        std::string names;
        for (const TensorSpec& s : m.inputs) names += (names.empty() ? "" : ", ") + s.name;
        Fail("unknown input '" + t.name() + "': model '" + std::string(model_name) + "' takes " + names);
      }
      if (spec->datatype != t.datatype())
        Fail(Where(t.name()) + ": datatype " + std::string(DataTypeName(t.datatype())) +
             " does not match the model's " + std::string(DataTypeName(spec->datatype)));
      bool ok = spec->shape.size() == t.shape().size();
      for (size_t i = 0; ok && i < spec->shape.size(); ++i) ok = spec->shape[i] < 0 || spec->shape[i] == t.shape()[i];
      if (!ok)
        Fail(Where(t.name()) + ": shape " + ShapeString(t.shape()) + " does not match the model's " +
             ShapeString(spec->shape) + " (-1 is any size)");
    }
    for (const TensorSpec& s : m.inputs)
      if (!req.find_input(s.name)) Fail("missing input '" + s.name + "'");
  }
  if (!m.outputs.empty()) {
    for (const std::string& o : req.outputs) {
      bool known = false;
      for (const TensorSpec& s : m.outputs) known = known || s.name == o;
      if (!known)
        Fail("unknown output '" + o + "' requested: model '" + std::string(model_name) + "' has no such output");
    }
  }
}

namespace internal {

// A JSON string: common's escaper (bytes that are not UTF-8, which BYTES tensors may hold, become \ufffd).
inline void AppendJsonString(std::string& out, std::string_view s) { ::ferry::AppendJsonString(out, s); }

template <typename T>
void AppendNumber(std::string& out, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    out += v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, Half>) {
    AppendNumber(out, v.ToFloat());
  } else {
    if constexpr (std::is_floating_point_v<T>) {
      if (!std::isfinite(v)) {
        out += "null";
        return;
      }
    }
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, r.ptr);
  }
}

template <typename T>
void AppendData(std::string& out, const Tensor& t) {
  std::span<const T> data = t.data<T>();
  out += '[';
  for (size_t i = 0; i < data.size(); ++i) {
    if (i) out += ',';
    AppendNumber(out, data[i]);
  }
  out += ']';
}

inline void AppendTensorData(std::string& out, const Tensor& t) {
  switch (t.datatype()) {
    case DataType::kBool:
      return AppendData<bool>(out, t);
    case DataType::kUint8:
      return AppendData<uint8_t>(out, t);
    case DataType::kUint16:
      return AppendData<uint16_t>(out, t);
    case DataType::kUint32:
      return AppendData<uint32_t>(out, t);
    case DataType::kUint64:
      return AppendData<uint64_t>(out, t);
    case DataType::kInt8:
      return AppendData<int8_t>(out, t);
    case DataType::kInt16:
      return AppendData<int16_t>(out, t);
    case DataType::kInt32:
      return AppendData<int32_t>(out, t);
    case DataType::kInt64:
      return AppendData<int64_t>(out, t);
    case DataType::kFp16:
      return AppendData<Half>(out, t);
    case DataType::kFp32:
      return AppendData<float>(out, t);
    case DataType::kFp64:
      return AppendData<double>(out, t);
    case DataType::kBytes: {
      out += '[';
      for (size_t i = 0; i < t.strings().size(); ++i) {
        if (i) out += ',';
        AppendJsonString(out, t.strings()[i]);
      }
      out += ']';
      return;
    }
  }
}

inline void AppendBinary(std::string& out, const Tensor& t) {
  if (t.datatype() != DataType::kBytes) {
    std::span<const std::byte> b = t.bytes();
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return;
  }
  for (const std::string& s : t.strings()) {
    uint32_t len = static_cast<uint32_t>(s.size());
    for (int i = 0; i < 4; ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
    out += s;
  }
}

inline size_t BinarySize(const Tensor& t) {
  if (t.datatype() != DataType::kBytes) return t.ByteSize();
  size_t n = 0;
  for (const std::string& s : t.strings()) n += 4 + s.size();
  return n;
}

inline bool WantsBinary(const Json& parameters) {
  if (!parameters.is_object()) return false;
  auto it = parameters.find("binary_data_output");
  return it != parameters.end() && it->is_boolean() && it->get<bool>();
}

}  // namespace internal


}  // namespace impl

// Writes the response body for `resp` (outputs filtered to the requested ones). Binary outputs (the
// request's parameters.binary_data_output) follow the JSON; then *json_length is set to the JSON's length
// for the Inference-Header-Content-Length header.
std::string SerializeInferResponse(const InferRequest& req, const InferResponse& resp,
                                          std::string_view model_name, std::string_view model_version,
                                          std::optional<size_t>* json_length) {
  const bool binary = impl::internal::WantsBinary(req.parameters);
  std::string out;
  out.reserve(256);
  out += "{\"model_name\":";
  impl::internal::AppendJsonString(out, model_name);
  if (!model_version.empty()) {
    out += ",\"model_version\":";
    impl::internal::AppendJsonString(out, model_version);
  }
  if (!req.id.empty()) {
    out += ",\"id\":";
    impl::internal::AppendJsonString(out, req.id);
  }
  if (resp.parameters.is_object() && !resp.parameters.empty()) out += ",\"parameters\":" + resp.parameters.dump();
  out += ",\"outputs\":[";
  bool first = true;
  std::vector<const Tensor*> binaries;
  for (const Tensor& t : resp.outputs) {
    if (!req.outputs.empty()) {
      bool wanted = false;
      for (const std::string& o : req.outputs) wanted = wanted || o == t.name();
      if (!wanted) continue;
    }
    if (!first) out += ',';
    first = false;
    out += "{\"name\":";
    impl::internal::AppendJsonString(out, t.name());
    out += ",\"datatype\":\"";
    out += DataTypeName(t.datatype());
    out += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape().size(); ++i) {
      if (i) out += ',';
      out += std::to_string(t.shape()[i]);
    }
    out += ']';
    if (binary) {
      out += ",\"parameters\":{\"binary_data_size\":" + std::to_string(impl::internal::BinarySize(t)) + "}";
      binaries.push_back(&t);
    } else {
      out += ",\"data\":";
      impl::internal::AppendTensorData(out, t);
    }
    out += '}';
  }
  out += "]}";
  *json_length = std::nullopt;
  if (binary) {
    *json_length = out.size();
    for (const Tensor* t : binaries) impl::internal::AppendBinary(out, *t);
  }
  return out;
}

absl::StatusOr<InferRequest> ParseInferRequest(std::string_view body, std::optional<size_t> binary_header_length) {
  try {
    return impl::ParseInferRequestOrThrow(body, binary_header_length);
  } catch (const InferError& e) {
    return absl::InvalidArgumentError(e.what());
  } catch (const std::exception& e) {  // nlohmann on a slice, or a tensor too large to allocate
    return absl::InvalidArgumentError(StrCat("bad infer request: ", e.what()));
  }
}

absl::Status Validate(const ModelMetadata& m, const InferRequest& req, std::string_view model_name) {
  try {
    impl::ValidateOrThrow(m, req, model_name);
    return absl::OkStatus();
  } catch (const InferError& e) {
    return absl::InvalidArgumentError(e.what());
  }
}

absl::StatusOr<std::optional<size_t>> BinaryHeaderLength(std::string_view value) {
  if (value.empty()) return std::optional<size_t>();
  size_t n = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (ec != std::errc() || end != value.data() + value.size())
    return absl::InvalidArgumentError("Inference-Header-Content-Length must be a non-negative integer");
  return std::optional<size_t>(n);
}

std::optional<ModelPath> ParseModelPath(std::string_view path) {
  static constexpr std::string_view kModels = "/v2/models/";
  if (path.rfind(kModels, 0) != 0 || path.size() == kModels.size()) return std::nullopt;
  std::string_view rest = path.substr(kModels.size());
  ModelPath p;
  p.name = std::string(rest.substr(0, rest.find('/')));
  rest.remove_prefix(p.name.size());
  static constexpr std::string_view kVersions = "/versions/";
  if (rest.rfind(kVersions, 0) == 0) {
    rest.remove_prefix(kVersions.size());
    p.version = std::string(rest.substr(0, rest.find('/')));
    rest.remove_prefix(p.version.size());
  }
  p.rest = std::string(rest);
  return p;
}

Target ParseTarget(std::string_view method, std::string_view path) {
  Target t;
  if (std::optional<ModelPath> p = ParseModelPath(path)) {
    t.model_name = p->name;
    t.model_version = p->version;
    t.infer = p->rest == "/infer";
    return t;
  }
  t.infer = method != "GET" && method != "HEAD";
  return t;
}

int HttpStatus(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

}  // namespace ferry::oip
