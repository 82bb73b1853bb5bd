// Ferry's model SDK: tensors and the Open Inference Protocol (V2) for C++ deployments.
//
// Subclass ferry::Model instead of ferry::Deployment and work with typed tensors; the SDK speaks the
// protocol: it parses and validates `POST .../infer` bodies (JSON tensors, and the binary tensor
// extension Triton's clients use), answers metadata requests, and writes the response. A model that also
// overrides infer_batch() receives a batch's requests in one call when the config has `batching`.
//
//   class Doubler : public ferry::Model {
//    public:
//     explicit Doubler(const ferry::Args& args) {}
//     ferry::ModelMetadata metadata() const override {
//       return {.inputs = {{"x", ferry::DataType::kFp32, {-1}}}, .outputs = {{"y", ferry::DataType::kFp32, {-1}}}};
//     }
//     ferry::InferResponse infer(const ferry::InferRequest& req) override {
//       const ferry::Tensor& x = req.input("x");
//       ferry::Tensor y("y", ferry::DataType::kFp32, x.shape());
//       for (int64_t i = 0; i < x.size(); ++i) y.mutable_data<float>()[i] = 2 * x.data<float>()[i];
//       return {.outputs = {std::move(y)}};
//     }
//   };
//   FERRY_DEPLOYMENT(Doubler)
//
// A model is reached at /v2/models/{model_name}/infer (and at its application's route_prefix: POST infers,
// GET answers the metadata). Requests are checked against metadata() before infer() runs: names, datatypes,
// shapes (-1 matches any size) and element counts; each mismatch is a 400 naming the tensor.
#pragma once

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ferry/deployment.h>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ferry {

// The protocol's tensor element types.
enum class DataType : uint8_t {
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kFp32,
  kFp64,
  kBytes
};

inline std::string_view DataTypeName(DataType t) {
  static constexpr std::string_view kNames[] = {"BOOL",  "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16",   "FP32",   "FP64",   "BYTES"};
  return kNames[static_cast<size_t>(t)];
}

inline std::optional<DataType> ParseDataType(std::string_view name) {
  for (uint8_t i = 0; i <= static_cast<uint8_t>(DataType::kBytes); ++i)
    if (DataTypeName(static_cast<DataType>(i)) == name) return static_cast<DataType>(i);
  return std::nullopt;
}

// Bytes per element; 0 for BYTES, whose elements are strings of any length.
inline size_t DataTypeSize(DataType t) {
  static constexpr size_t kSizes[] = {1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8, 0};
  return kSizes[static_cast<size_t>(t)];
}

// An FP16 element: IEEE 754 half precision bits, with conversions from and to float.
struct Half {
  uint16_t bits = 0;
  static Half FromFloat(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0))};
    if (abs >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504: infinity
    if (abs < 0x38800000u) {                          // a subnormal half (or zero): value / 2^-24, rounded half to even
      int shift = 126 - static_cast<int>(abs >> 23);  // 14..; the 24-bit significand is shifted right by it
      if (shift > 24) return {sign};
      uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
      uint32_t half = mant >> shift;
      uint32_t rest = mant & ((1u << shift) - 1);
      uint32_t mid = 1u << (shift - 1);
      if (rest > mid || (rest == mid && (half & 1u))) ++half;
      return {static_cast<uint16_t>(sign | half)};
    }
    uint32_t h = ((abs - 0x38000000u) >> 13);
    uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return {static_cast<uint16_t>(sign | h)};
  }
  float ToFloat() const {
    uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    uint32_t exp = (bits >> 10) & 0x1fu;
    uint32_t mant = bits & 0x3ffu;
    if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
      float v = std::ldexp(static_cast<float>(mant), -24);
      return sign ? -v : v;
    }
    return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
  }
};

// The C++ element type of each fixed-size datatype (BOOL is `bool`, FP16 is `ferry::Half`).
template <typename T>
struct DataTypeOf;
#define FERRY_DATATYPE_OF(T, D)                    \
  template <>                                      \
  struct DataTypeOf<T> {                           \
    static constexpr DataType value = DataType::D; \
  };
FERRY_DATATYPE_OF(bool, kBool)
FERRY_DATATYPE_OF(uint8_t, kUint8)
FERRY_DATATYPE_OF(uint16_t, kUint16)
FERRY_DATATYPE_OF(uint32_t, kUint32)
FERRY_DATATYPE_OF(uint64_t, kUint64)
FERRY_DATATYPE_OF(int8_t, kInt8)
FERRY_DATATYPE_OF(int16_t, kInt16)
FERRY_DATATYPE_OF(int32_t, kInt32)
FERRY_DATATYPE_OF(int64_t, kInt64)
FERRY_DATATYPE_OF(Half, kFp16)
FERRY_DATATYPE_OF(float, kFp32)
FERRY_DATATYPE_OF(double, kFp64)
#undef FERRY_DATATYPE_OF

using Shape = std::vector<int64_t>;

// The number of elements of a shape; -1 when a dimension is negative (unknown).
inline int64_t ElementCount(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

inline std::string ShapeString(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A named, typed, shaped array in row-major order. Fixed-size elements live in one contiguous buffer
// (aligned for any element type); BYTES elements are strings.
class Tensor {
 public:
  Tensor() = default;
  // A zero-filled tensor. Throws std::invalid_argument for a negative dimension.
  Tensor(std::string name, DataType datatype, Shape shape)
      : name_(std::move(name)), datatype_(datatype), shape_(std::move(shape)) {
    int64_t n = ElementCount(shape_);
    if (n < 0) throw std::invalid_argument("tensor " + name_ + ": shape " + ShapeString(shape_) + " is not concrete");
    if (datatype_ == DataType::kBytes)
      strings_.resize(static_cast<size_t>(n));
    else
      raw_.assign((static_cast<size_t>(n) * DataTypeSize(datatype_) + 7) / 8, 0);
  }
  template <typename T>
  static Tensor From(std::string name, Shape shape, std::span<const T> values) {
    Tensor t(std::move(name), DataTypeOf<T>::value, std::move(shape));
    if (static_cast<int64_t>(values.size()) != t.size())
      throw std::invalid_argument("tensor " + t.name_ + ": shape " + ShapeString(t.shape_) + " holds " +
                                  std::to_string(t.size()) + " elements, got " + std::to_string(values.size()));
    if (!values.empty()) std::memcpy(t.raw_.data(), values.data(), values.size_bytes());
    return t;
  }
  template <typename T>
  static Tensor From(std::string name, Shape shape, const std::vector<T>& values) {
    return From<T>(std::move(name), std::move(shape), std::span<const T>(values.data(), values.size()));
  }
  static Tensor FromStrings(std::string name, Shape shape, std::vector<std::string> values) {
    Tensor t(std::move(name), DataType::kBytes, std::move(shape));
    if (static_cast<int64_t>(values.size()) != t.size())
      throw std::invalid_argument("tensor " + t.name_ + ": shape " + ShapeString(t.shape_) + " holds " +
                                  std::to_string(t.size()) + " elements, got " + std::to_string(values.size()));
    t.strings_ = std::move(values);
    return t;
  }

  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }
  DataType datatype() const { return datatype_; }
  const Shape& shape() const { return shape_; }
  int64_t size() const { return ElementCount(shape_); }
  // Changes the shape, keeping the elements; throws unless the element count stays the same.
  void Reshape(Shape shape) {
    if (ElementCount(shape) != size())
      throw std::invalid_argument("tensor " + name_ + ": cannot reshape " + ShapeString(shape_) + " to " +
                                  ShapeString(shape));
    shape_ = std::move(shape);
  }

  // The elements as T; throws std::invalid_argument when T is not this tensor's element type.
  template <typename T>
  std::span<const T> data() const {
    Check(DataTypeOf<T>::value);
    return {reinterpret_cast<const T*>(raw_.data()), static_cast<size_t>(size())};
  }
  template <typename T>
  std::span<T> mutable_data() {
    Check(DataTypeOf<T>::value);
    return {reinterpret_cast<T*>(raw_.data()), static_cast<size_t>(size())};
  }
  // Fixed-size elements as little-endian bytes (empty for BYTES).
  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(raw_.data()), datatype_ == DataType::kBytes ? 0 : ByteSize()};
  }
  std::span<std::byte> mutable_bytes() {
    return {reinterpret_cast<std::byte*>(raw_.data()), datatype_ == DataType::kBytes ? 0 : ByteSize()};
  }
  size_t ByteSize() const { return static_cast<size_t>(size()) * DataTypeSize(datatype_); }
  // BYTES elements.
  const std::vector<std::string>& strings() const { return strings_; }
  std::vector<std::string>& mutable_strings() { return strings_; }

 private:
  void Check(DataType wanted) const {
    if (wanted != datatype_)
      throw std::invalid_argument("tensor " + name_ + " holds " + std::string(DataTypeName(datatype_)) + ", read as " +
                                  std::string(DataTypeName(wanted)));
  }
  std::string name_;
  DataType datatype_ = DataType::kFp32;
  Shape shape_;
  std::vector<uint64_t> raw_;  // 8-byte units: every element type is aligned
  std::vector<std::string> strings_;
};

// What a model takes or gives: a dimension of -1 matches any size.
struct TensorSpec {
  std::string name;
  DataType datatype = DataType::kFp32;
  Shape shape;
};

struct ModelMetadata {
  std::string name;                   // empty: the name the model is served under
  std::vector<std::string> versions;  // empty: unversioned
  std::string platform;               // e.g. "pytorch_torchscript", "xgboost"
  std::vector<TensorSpec> inputs;     // empty: not checked by the SDK
  std::vector<TensorSpec> outputs;
};

// An answer with a status: thrown from infer() (or built by the SDK) to answer one request with an error.
class InferError : public std::runtime_error {
 public:
  InferError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

struct InferRequest {
  std::string id;                    // the request's "id", echoed in the response
  Json parameters;                   // the request's "parameters" object, or null
  std::vector<Tensor> inputs;        // in the order the client sent them
  std::vector<std::string> outputs;  // requested output names; empty: all
  const Request* http = nullptr;     // the HTTP request it came in (headers, is_cancelled)

  // The input named `name`; throws InferError 400 when absent.
  const Tensor& input(std::string_view name) const {
    for (const Tensor& t : inputs)
      if (t.name() == name) return t;
    throw InferError(400, "missing input '" + std::string(name) + "'");
  }
  const Tensor* find_input(std::string_view name) const {
    for (const Tensor& t : inputs)
      if (t.name() == name) return &t;
    return nullptr;
  }
  bool is_cancelled() const { return http && http->is_cancelled(); }
};

struct InferResponse {
  std::vector<Tensor> outputs;
  Json parameters;  // null or an object
  // Set (non-zero) when this item failed: the request answers this status with `error`.
  int error_status = 0;
  std::string error;
  static InferResponse Error(int status, std::string message) {
    InferResponse r;
    r.error_status = status;
    r.error = std::move(message);
    return r;
  }
};

namespace oip {

inline Json SpecJson(const TensorSpec& s) {
  return {{"name", s.name}, {"datatype", std::string(DataTypeName(s.datatype))}, {"shape", s.shape}};
}

// GET /v2/models/{name}: the model's metadata document.
inline Json MetadataJson(const ModelMetadata& m, std::string_view served_name) {
  Json inputs = Json::array(), outputs = Json::array();
  for (const auto& s : m.inputs) inputs.push_back(SpecJson(s));
  for (const auto& s : m.outputs) outputs.push_back(SpecJson(s));
  Json j = {{"name", served_name.empty() ? m.name : std::string(served_name)},
            {"platform", m.platform},
            {"inputs", std::move(inputs)},
            {"outputs", std::move(outputs)}};
  if (!m.versions.empty()) j["versions"] = m.versions;
  return j;
}

// Reads tensor specs written as JSON ([{name, datatype, shape}], as in model metadata), e.g. from a
// deployment's args. `where` names the value in errors ("args.inputs"). Throws std::invalid_argument.
inline std::vector<TensorSpec> SpecsFromJson(const Json& j, const std::string& where) {
  if (!j.is_array()) throw std::invalid_argument(where + ": expected a list of {name, datatype, shape}");
  std::vector<TensorSpec> specs;
  for (size_t i = 0; i < j.size(); ++i) {
    const Json& e = j[i];
    std::string at = where + "[" + std::to_string(i) + "]";
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || e["name"].get<std::string>().empty())
      throw std::invalid_argument(at + ": expected {name, datatype, shape} with a non-empty name");
    TensorSpec s;
    s.name = e["name"].get<std::string>();
    std::optional<DataType> dt = e.contains("datatype") && e["datatype"].is_string()
                                     ? ParseDataType(e["datatype"].get<std::string>())
                                     : std::nullopt;
    if (!dt)
      throw std::invalid_argument(
          at + ".datatype: expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES");
    s.datatype = *dt;
    if (!e.contains("shape") || !e["shape"].is_array())
      throw std::invalid_argument(at + ".shape: expected a list of sizes (-1 for any)");
    for (const Json& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < -1)
        throw std::invalid_argument(at + ".shape: expected a list of sizes (-1 for any)");
      s.shape.push_back(d.get<int64_t>());
    }
    specs.push_back(std::move(s));
  }
  return specs;
}

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
inline InferRequest ParseInferRequest(std::string_view body,
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
inline void Validate(const ModelMetadata& m, const InferRequest& req, std::string_view model_name) {
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

// A JSON string; bytes that are not UTF-8 (BYTES tensors may hold anything) become U+FFFD.
inline void AppendJsonString(std::string& out, std::string_view s) {
  out += Json(std::string(s)).dump(-1, ' ', false, Json::error_handler_t::replace);
}

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

// Writes the response body for `resp` (outputs filtered to the requested ones). Binary outputs (the
// request's parameters.binary_data_output) follow the JSON; then *json_length is set to the JSON's length
// for the Inference-Header-Content-Length header.
inline std::string SerializeInferResponse(const InferRequest& req, const InferResponse& resp,
                                          std::string_view model_name, std::string_view model_version,
                                          std::optional<size_t>* json_length) {
  const bool binary = internal::WantsBinary(req.parameters);
  std::string out;
  out.reserve(256);
  out += "{\"model_name\":";
  internal::AppendJsonString(out, model_name);
  if (!model_version.empty()) {
    out += ",\"model_version\":";
    internal::AppendJsonString(out, model_version);
  }
  if (!req.id.empty()) {
    out += ",\"id\":";
    internal::AppendJsonString(out, req.id);
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
    internal::AppendJsonString(out, t.name());
    out += ",\"datatype\":\"";
    out += DataTypeName(t.datatype());
    out += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape().size(); ++i) {
      if (i) out += ',';
      out += std::to_string(t.shape()[i]);
    }
    out += ']';
    if (binary) {
      out += ",\"parameters\":{\"binary_data_size\":" + std::to_string(internal::BinarySize(t)) + "}";
      binaries.push_back(&t);
    } else {
      out += ",\"data\":";
      internal::AppendTensorData(out, t);
    }
    out += '}';
  }
  out += "]}";
  *json_length = std::nullopt;
  if (binary) {
    *json_length = out.size();
    for (const Tensor* t : binaries) internal::AppendBinary(out, *t);
  }
  return out;
}

// What a request to a model asks for, from its path: /v2/models/{name}[/versions/{v}][/infer], or any
// other path (a route_prefix): POST infers, GET answers the metadata.
struct Target {
  bool infer = false;
  std::string model_name;     // empty when the path does not name it
  std::string model_version;  // empty when the path does not name it
};

inline Target ParseTarget(std::string_view method, std::string_view path) {
  Target t;
  static constexpr std::string_view kModels = "/v2/models/";
  if (path.rfind(kModels, 0) == 0) {
    std::string_view rest = path.substr(kModels.size());
    size_t slash = rest.find('/');
    t.model_name = std::string(rest.substr(0, slash));
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
    static constexpr std::string_view kVersions = "/versions/";
    if (rest.rfind(kVersions, 0) == 0) {
      rest.remove_prefix(kVersions.size());
      size_t s = rest.find('/');
      t.model_version = std::string(rest.substr(0, s));
      rest = s == std::string_view::npos ? std::string_view() : rest.substr(s);
    }
    t.infer = rest == "/infer";
    return t;
  }
  t.infer = method != "GET" && method != "HEAD";
  return t;
}

}  // namespace oip

// Base class of a model deployment: typed tensors in, typed tensors out; the SDK speaks the protocol.
// Threads as for Deployment: infer() runs on up to max_ongoing_requests threads at once.
class Model : public Deployment {
 public:
  // The model's inputs and outputs (and platform, versions). Called once; requests are checked against it.
  virtual ModelMetadata metadata() const = 0;
  virtual InferResponse infer(const InferRequest& request) = 0;
  // With `batching` configured: a batch of requests that each passed validation; one response per
  // request, in order. The default runs infer() on each. A runtime that stacks tensors overrides it.
  virtual std::vector<InferResponse> infer_batch(std::span<const InferRequest> batch) {
    std::vector<InferResponse> out;
    out.reserve(batch.size());
    for (const InferRequest& r : batch) out.push_back(Guarded([&] { return infer(r); }));
    return out;
  }

  Response handle(const Request& request) final {
    Prepared p = Take(request);
    if (p.answer) return std::move(*p.answer);
    return Finish(p, Guarded([&] { return infer(p.request); }));
  }

  std::vector<Response> handle_batch(std::span<const Request> batch) final {
    std::vector<Prepared> prepared;
    prepared.reserve(batch.size());
    std::vector<InferRequest> runnable;
    std::vector<size_t> runnable_index;
    for (const Request& r : batch) {
      prepared.push_back(Take(r));
      if (!prepared.back().answer) {
        runnable_index.push_back(prepared.size() - 1);
        runnable.push_back(std::move(prepared.back().request));
      }
    }
    std::vector<InferResponse> results;
    if (!runnable.empty()) {
      try {
        results = infer_batch(std::span<const InferRequest>(runnable));
      } catch (const InferError& e) {
        results.assign(runnable.size(), InferResponse::Error(e.status(), e.what()));
      } catch (const std::exception& e) {
        results.assign(runnable.size(), InferResponse::Error(500, e.what()));
      }
      if (results.size() != runnable.size())
        results.assign(
            runnable.size(),
            InferResponse::Error(500, "infer_batch returned " + std::to_string(results.size()) + " responses for " +
                                          std::to_string(runnable.size()) + " requests"));
    }
    std::vector<Response> out(batch.size());
    const std::string batch_size = std::to_string(runnable.size());
    for (size_t k = 0; k < runnable.size(); ++k) {
      Prepared& p = prepared[runnable_index[k]];
      p.request = std::move(runnable[k]);
      out[runnable_index[k]] = Finish(p, results[k]);
      // How many requests the model ran together: lets a client see batching at work.
      out[runnable_index[k]].headers.emplace_back("ferry-batch-size", batch_size);
    }
    for (size_t i = 0; i < prepared.size(); ++i)
      if (prepared[i].answer) out[i] = std::move(*prepared[i].answer);
    return out;
  }

  // Parses and validates a request as it arrives (batched deployments), so that its batch only runs
  // the model.
  std::any prepare(const Request& request) final { return std::make_shared<Prepared>(Prepare(request)); }

  // metadata(), computed once.
  const ModelMetadata& cached_metadata() const {
    std::call_once(metadata_once_, [this] { metadata_ = metadata(); });
    return metadata_;
  }

 private:
  struct Prepared {
    std::optional<Response> answer;  // set when answered without running the model
    InferRequest request;
    std::string name, version;
  };

  // The request parsed and validated: by prepare() when it arrived, or now.
  Prepared Take(const Request& request) {
    if (std::any* state = request.prepared()) {
      if (auto* held = std::any_cast<std::shared_ptr<Prepared>>(state); held && *held) {
        Prepared p = std::move(**held);
        p.request.http = &request;  // prepare() saw another view of the same request
        return p;
      }
    }
    return Prepare(request);
  }

  template <typename F>
  static InferResponse Guarded(F&& run) {
    try {
      return run();
    } catch (const InferError& e) {
      return InferResponse::Error(e.status(), e.what());
    } catch (const std::exception& e) {
      return InferResponse::Error(500, e.what());
    }
  }

  static Response ErrorResponse(int status, std::string_view message) {
    return Response::FromJson({{"error", std::string(message)}}, status);
  }

  Prepared Prepare(const Request& request) {
    Prepared p;
    const ModelMetadata& m = cached_metadata();
    oip::Target target = oip::ParseTarget(request.method(), request.path());
    p.name = target.model_name.empty() ? m.name : target.model_name;
    p.version = !target.model_version.empty() ? target.model_version : (m.versions.empty() ? "" : m.versions.front());
    if (!target.infer) {
      p.answer = Response::FromJson(oip::MetadataJson(m, p.name));
      return p;
    }
    try {
      std::optional<size_t> header_length;
      std::string_view h = request.header("inference-header-content-length");
      if (!h.empty()) {
        size_t n = 0;
        auto [end, ec] = std::from_chars(h.data(), h.data() + h.size(), n);
        if (ec != std::errc() || end != h.data() + h.size())
          throw InferError(400, "Inference-Header-Content-Length must be a non-negative integer");
        header_length = n;
      }
      p.request = oip::ParseInferRequest(request.body(), header_length);
      p.request.http = &request;
      oip::Validate(m, p.request, p.name);
    } catch (const InferError& e) {
      p.answer = ErrorResponse(e.status(), e.what());
    }
    return p;
  }

  static Response Finish(const Prepared& p, const InferResponse& result) {
    if (result.error_status != 0) return ErrorResponse(result.error_status, result.error);
    Response r;
    std::optional<size_t> json_length;
    r.body = oip::SerializeInferResponse(p.request, result, p.name, p.version, &json_length);
    if (json_length) {
      r.headers.emplace_back("content-type", "application/octet-stream");
      r.headers.emplace_back("inference-header-content-length", std::to_string(*json_length));
    } else {
      r.headers.emplace_back("content-type", "application/json");
    }
    return r;
  }

  mutable std::once_flag metadata_once_;
  mutable ModelMetadata metadata_;
};

}  // namespace ferry
