// Ferry's model SDK: typed tensors for C++ models served over the Open Inference Protocol (V2).
//
// Subclass ferry::Model and work with tensors; the host speaks the protocol. It parses `POST .../infer`
// bodies (JSON tensors, and the binary tensor extension Triton's clients use), checks them against
// metadata() (names, datatypes, shapes with -1 for any size, element counts: a 400 naming the tensor),
// answers metadata requests, and writes the response. infer() receives inputs that borrow the host's
// parsed buffers (no copy). A model that overrides infer_batch() receives a batch's requests in one call
// when the config has `batching`.
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
// GET answers the metadata). The host talks to it through the tensor entry of <ferry/abi.h>
// (FerryDeploymentApi.model_metadata and .infer); the adapter is in <ferry/internal/model_api.h>.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ferry/deployment.h>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
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

// The ABI's layout of BYTES elements (<ferry/abi.h>, FerryTensor): each element is a 4-byte little-endian
// length followed by its bytes. Host and SDK both read and write it with these two.
inline void PackBytes(const std::vector<std::string>& elements, std::string* out) {
  out->clear();
  for (const std::string& e : elements) {
    const uint32_t n = static_cast<uint32_t>(e.size());
    const char len[4] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                         static_cast<char>((n >> 16) & 0xff), static_cast<char>(n >> 24)};
    out->append(len, 4);
    out->append(e);
  }
}
// The elements of a packed BYTES buffer; a truncated last element is left out.
inline std::vector<std::string> UnpackBytes(std::string_view packed) {
  std::vector<std::string> elements;
  while (packed.size() >= 4) {
    const uint32_t n = static_cast<uint32_t>(static_cast<unsigned char>(packed[0])) |
                       static_cast<uint32_t>(static_cast<unsigned char>(packed[1])) << 8 |
                       static_cast<uint32_t>(static_cast<unsigned char>(packed[2])) << 16 |
                       static_cast<uint32_t>(static_cast<unsigned char>(packed[3])) << 24;
    packed.remove_prefix(4);
    if (n > packed.size()) break;
    elements.emplace_back(packed.substr(0, n));
    packed.remove_prefix(n);
  }
  return elements;
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
  // A tensor of fixed-size elements that borrows `data` (element count x element size bytes, row-major):
  // nothing is copied, and `data` must outlive it. How a model receives its inputs. Writing to it
  // (mutable_data, mutable_bytes) copies the elements first.
  static Tensor Borrow(std::string name, DataType datatype, Shape shape, const void* data) {
    Tensor t;
    t.name_ = std::move(name);
    t.datatype_ = datatype;
    t.shape_ = std::move(shape);
    if (ElementCount(t.shape_) < 0)
      throw std::invalid_argument("tensor " + t.name_ + ": shape " + ShapeString(t.shape_) + " is not concrete");
    if (datatype == DataType::kBytes) throw std::invalid_argument("tensor " + t.name_ + ": BYTES cannot be borrowed");
    t.borrowed_ = static_cast<const std::byte*>(data);
    return t;
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
    return {reinterpret_cast<const T*>(Bytes()), static_cast<size_t>(size())};
  }
  template <typename T>
  std::span<T> mutable_data() {
    Check(DataTypeOf<T>::value);
    Own();
    return {reinterpret_cast<T*>(raw_.data()), static_cast<size_t>(size())};
  }
  // Fixed-size elements as little-endian bytes (empty for BYTES).
  std::span<const std::byte> bytes() const { return {Bytes(), datatype_ == DataType::kBytes ? 0 : ByteSize()}; }
  std::span<std::byte> mutable_bytes() {
    Own();
    return {reinterpret_cast<std::byte*>(raw_.data()), datatype_ == DataType::kBytes ? 0 : ByteSize()};
  }
  // True while it borrows its elements (Borrow) rather than owning them.
  bool borrowed() const { return borrowed_ != nullptr; }
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
  const std::byte* Bytes() const { return borrowed_ ? borrowed_ : reinterpret_cast<const std::byte*>(raw_.data()); }
  // A borrowed tensor about to be written takes a copy of its elements.
  void Own() {
    if (!borrowed_) return;
    raw_.assign((ByteSize() + 7) / 8, 0);
    if (ByteSize()) std::memcpy(raw_.data(), borrowed_, ByteSize());
    borrowed_ = nullptr;
  }
  std::string name_;
  DataType datatype_ = DataType::kFp32;
  Shape shape_;
  std::vector<uint64_t> raw_;  // 8-byte units: every element type is aligned
  std::vector<std::string> strings_;
  const std::byte* borrowed_ = nullptr;  // when set, the elements live there (Borrow)
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

// An answer with a status: thrown from infer() to answer one request with an error (400 for what the
// client sent wrong, 500 for the model's own failure).
class InferError : public std::runtime_error {
 public:
  InferError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// One infer request, parsed and checked against the model's metadata before the model sees it.
struct InferRequest {
  std::string id;                    // the request's "id", echoed in the response
  Json parameters;                   // the request's "parameters" object, or null
  std::vector<Tensor> inputs;        // in the order the client sent them (borrowed from the host in a model)
  std::vector<std::string> outputs;  // requested output names; empty: all
  const Request* http = nullptr;     // the HTTP request it came in (headers, is_cancelled); null outside one

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

// A tensor spec as JSON: {name, datatype, shape}.
inline Json SpecJson(const TensorSpec& s) {
  return {{"name", s.name}, {"datatype", std::string(DataTypeName(s.datatype))}, {"shape", s.shape}};
}

// The model's metadata document (GET /v2/models/{name}); also how a model hands its metadata to the host.
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

// Base class of a model deployment: typed tensors in, typed tensors out; the host speaks the protocol.
// One instance per replica process. infer() runs on up to max_ongoing_requests threads at once, so shared
// mutable state needs a lock; reconfigure() and check_health() may overlap with it.
class Model : public internal::ModelMarker {
 public:
  virtual ~Model() = default;
  // The model's inputs and outputs (and platform, versions). Called once, after construction; requests are
  // checked against it before infer() runs.
  virtual ModelMetadata metadata() const = 0;
  // Answers one request. Throw InferError to answer it with a status, any other exception for a 500.
  virtual InferResponse infer(const InferRequest& request) = 0;
  // With `batching` configured: a batch of requests that each passed validation; one response per
  // request, in order. The default runs infer() on each (a failure answers only its request). A runtime
  // that stacks tensors into one call overrides it.
  virtual std::vector<InferResponse> infer_batch(std::span<const InferRequest> batch) {
    std::vector<InferResponse> out;
    out.reserve(batch.size());
    for (const InferRequest& r : batch) {
      try {
        out.push_back(infer(r));
      } catch (const InferError& e) {
        out.push_back(InferResponse::Error(e.status(), e.what()));
      } catch (const std::exception& e) {
        out.push_back(InferResponse::Error(500, e.what()));
      }
    }
    return out;
  }
  // As for Deployment: user_config after construction and on every change; false (or throw): unhealthy.
  virtual void reconfigure(const Json& user_config) { (void)user_config; }
  virtual bool check_health() { return true; }
};

}  // namespace ferry

#include <ferry/internal/model_api.h>
