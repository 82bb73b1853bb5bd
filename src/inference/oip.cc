// The Open Inference Protocol (V2) codec, host side: see oip.h.
// The parser reads tensor data straight from the JSON text into typed storage (no document tree, no
// strtod); the small parts (shape, parameters, outputs) go to nlohmann as text slices. Errors are statuses
// all the way down: the reader keeps the first error and stops where it is (every later read sees the end
// of the text), so the recursive descent unwinds by returning, without exceptions.
#include "inference/oip.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/common.h"

namespace ferry::oip {
namespace impl {

namespace internal {

// Returns from the calling function with `expr`'s status when it is not OK.
#define FERRY_OIP_RETURN_IF_ERROR(expr)       \
  do {                                        \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                              \
    }                                         \
  } while (false)

inline absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

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
// outputs) are handed to nlohmann as text slices. The first error sticks: the cursor moves to the end, so
// every loop over members or elements ends and each caller returns; status() reports it.
class JsonText {
 public:
  explicit JsonText(std::string_view text) : s_(text) {}
  bool ok() const { return error_.ok(); }
  const absl::Status& status() const { return error_; }
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
  // Records a syntax error at the cursor (the first error wins) and stops reading.
  void Syntax(const std::string& what) {
    Fail(Invalid("request body is not valid JSON: " + what + " at byte " + std::to_string(p_)));
  }
  // Records `error` (the first error wins) and stops reading.
  void Fail(absl::Status error) {
    if (error_.ok()) error_ = std::move(error);
    p_ = s_.size();
  }
  // Calls on_key(key) with the cursor at each member's value; on_key must consume the value (or Fail).
  template <typename F>
  void Object(F&& on_key) {
    Expect('{');
    if (!ok() || Consume('}')) return;
    do {
      if (Peek() != '"') return Syntax("expected a member name");
      std::string key = String();
      Expect(':');
      if (!ok()) return;
      on_key(key);
    } while (ok() && Consume(','));
    Expect('}');
  }
  // Calls on_element() with the cursor at each element; on_element must consume it (or Fail).
  template <typename F>
  void Array(F&& on_element) {
    Expect('[');
    if (!ok() || Consume(']')) return;
    do on_element();
    while (ok() && Consume(','));
    Expect(']');
  }
  std::string String() {
    Expect('"');
    std::string out;
    while (ok()) {
      size_t end = s_.find_first_of("\"\\", p_);
      if (end == std::string_view::npos) {
        Syntax("unterminated string");
        break;
      }
      for (size_t i = p_; i < end; ++i)
        if (static_cast<unsigned char>(s_[i]) < 0x20) Syntax("control character in a string");
      if (!ok()) break;
      if (!ValidUtf8(s_.substr(p_, end - p_))) {
        Syntax("invalid UTF-8 in a string");
        break;
      }
      out.append(s_.data() + p_, end - p_);
      p_ = end + 1;
      if (s_[end] == '"') return out;
      if (p_ >= s_.size()) {
        Syntax("unterminated string");
        break;
      }
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
          if (uint32_t cp = CodePoint(); ok()) AppendUtf8(out, cp);
          break;
        default:
          Syntax("bad escape in a string");
      }
    }
    return {};
  }
  // Skips one value and returns its text (empty after an error).
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
      } while (ok() && depth > 0 && p_ < s_.size());
      if (ok() && depth > 0) Syntax("unterminated array or object");
    } else {
      p_ = Scalar().size() + start;
    }
    if (ok() && p_ == start) Syntax("expected a value");
    if (!ok()) return {};
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
    uint32_t v = 0;
    if (s_.size() - p_ < 4) {
      Syntax("bad \\u escape");
      return 0;
    }
    auto r = std::from_chars(s_.data() + p_, s_.data() + p_ + 4, v, 16);
    if (r.ec != std::errc() || r.ptr != s_.data() + p_ + 4) {
      Syntax("bad \\u escape");
      return 0;
    }
    p_ += 4;
    return v;
  }
  // A \u escape's code point (after the "\u"); a surrogate pair takes two escapes.
  uint32_t CodePoint() {
    uint32_t cp = Hex4();
    if (!ok()) return 0;
    if (cp >= 0xd800 && cp < 0xdc00) {
      if (s_.substr(p_, 2) != "\\u") {
        Syntax("unpaired surrogate in a string");
        return 0;
      }
      p_ += 2;
      uint32_t low = Hex4();
      if (!ok()) return 0;
      if (low < 0xdc00 || low > 0xdfff) {
        Syntax("unpaired surrogate in a string");
        return 0;
      }
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
    } else if (cp >= 0xdc00 && cp < 0xe000) {
      Syntax("unpaired surrogate in a string");
      return 0;
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
  absl::Status error_;
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
// count is reported as such. Errors stay in `r`.
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
        return r.Fail(Invalid(Where(t.name()) + ": element " + std::to_string(count) + " (" + Quote(r.Scalar()) +
                              ") is not a string for BYTES"));
      std::string v = r.String();
      if (!r.ok()) return;
      if (count < capacity) (*strings)[count] = std::move(v);
    } else {
      T v{};
      if (!ReadElement<T>(r, &v))
        return r.Fail(Invalid(Where(t.name()) + ": element " + std::to_string(count) + " (" + Quote(r.Scalar()) +
                              ") is not " + Expected(t.datatype()) + " for " +
                              std::string(DataTypeName(t.datatype()))));
      if (count < capacity) out[count] = v;
    }
    ++count;
  };
  if (r.Peek() != '[') return r.Fail(Invalid(Where(t.name()) + ": \"data\" must be an array"));
  element(element);
  if (r.ok() && count != capacity)
    r.Fail(Invalid(Where(t.name()) + ": shape " + ShapeString(t.shape()) + " needs " + std::to_string(capacity) +
                   " elements, \"data\" has " + std::to_string(count)));
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
inline absl::StatusOr<Json> ParseSlice(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded()) return Invalid("request body is not valid JSON: bad value " + Quote(text));
  return j;
}

// Reads `n` bytes of the binary section for tensor `t` (the binary tensor extension).
inline absl::Status FillFromBinary(std::string_view chunk, Tensor& t) {
  if (t.datatype() != DataType::kBytes) {
    if (chunk.size() != t.ByteSize())
      return Invalid(Where(t.name()) + ": binary_data_size is " + std::to_string(chunk.size()) + " bytes, shape " +
                     ShapeString(t.shape()) + " of " + std::string(DataTypeName(t.datatype())) + " needs " +
                     std::to_string(t.ByteSize()));
    if (!chunk.empty()) std::memcpy(t.mutable_bytes().data(), chunk.data(), chunk.size());
    if (t.datatype() == DataType::kBool)  // any non-zero byte is true; a bool holds only 0 or 1
      for (std::byte& b : t.mutable_bytes()) b = b != std::byte{0} ? std::byte{1} : std::byte{0};
    return absl::OkStatus();
  }
  std::vector<std::string>& out = t.mutable_strings();
  size_t at = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (chunk.size() - at < 4)
      return Invalid(Where(t.name()) + ": binary BYTES data ends before element " + std::to_string(i));
    uint32_t len = 0;
    for (int b = 3; b >= 0; --b) len = (len << 8) | static_cast<uint8_t>(chunk[at + static_cast<size_t>(b)]);
    at += 4;
    if (chunk.size() - at < len)
      return Invalid(Where(t.name()) + ": binary BYTES element " + std::to_string(i) + " is cut short");
    out[i].assign(chunk.data() + at, len);
    at += len;
  }
  if (at != chunk.size())
    return Invalid(Where(t.name()) + ": binary BYTES data is longer than its " + std::to_string(out.size()) +
                   " elements");
  return absl::OkStatus();
}

inline absl::StatusOr<Shape> ReadShape(const Json& j, const std::string& name) {
  if (!j.is_array()) return Invalid(Where(name) + ": \"shape\" must be an array of non-negative integers");
  Shape shape;
  for (const Json& d : j) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      return Invalid(Where(name) + ": \"shape\" must be an array of non-negative integers, got " + j.dump());
    shape.push_back(d.get<int64_t>());
  }
  if (ElementCount(shape) < 0) return Invalid(Where(name) + ": shape " + j.dump() + " is too large");
  return shape;
}

// A zero-filled tensor for input `n`, from its datatype and the text of its shape. `body_size` bounds its
// element count: every element takes at least one byte of the body.
inline absl::StatusOr<Tensor> MakeTensor(const std::string& n, const std::optional<std::string>& dt,
                                         std::string_view shape_text, size_t body_size) {
  if (!dt) return Invalid(Where(n) + ": \"datatype\" is required (e.g. \"FP32\")");
  std::optional<DataType> datatype = ParseDataType(*dt);
  if (!datatype)
    return Invalid(Where(n) + ": unknown datatype \"" + *dt +
                   "\" (expected BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES)");
  if (shape_text.empty()) return Invalid(Where(n) + ": \"shape\" is required");
  absl::StatusOr<Json> shape_json = ParseSlice(shape_text);
  if (!shape_json.ok()) return shape_json.status();
  absl::StatusOr<Shape> shape = ReadShape(*shape_json, n);
  if (!shape.ok()) return shape.status();
  const int64_t count = ElementCount(*shape);
  if (count > static_cast<int64_t>(body_size))
    return Invalid(Where(n) + ": shape " + ShapeString(*shape) + " has " + std::to_string(count) +
                   " elements, more than the request could carry");
  return Tensor(n, *datatype, std::move(*shape));
}

// One entry of "inputs" as read: its tensor is filled in place when "data" came after "datatype" and
// "shape", else from the kept text of its data (or the binary section) once the whole body is read.
struct RawInput {
  std::optional<std::string> name, datatype;
  std::string_view shape, parameters, data;
  bool has_data = false;
  std::optional<Tensor> tensor;
};

// Reads the "inputs" array at the cursor into `raw`. Errors stay in `r`.
inline void ReadInputs(JsonText& r, size_t body_size, std::vector<RawInput>& raw) {
  if (r.Peek() != '[') return r.Fail(Invalid("\"inputs\" must be a non-empty array of tensors"));
  r.Array([&] {
    const std::string at = "inputs[" + std::to_string(raw.size()) + "]";
    if (r.Peek() != '{') return r.Fail(Invalid(at + " must be an object"));
    RawInput in;
    r.Object([&](const std::string& field) {
      if (field == "name") {
        if (r.Peek() != '"') return r.Fail(Invalid(at + ": \"name\" must be a non-empty string"));
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
          absl::StatusOr<Tensor> t = MakeTensor(*in.name, in.datatype, in.shape, body_size);
          if (!t.ok()) return r.Fail(t.status());
          in.tensor = std::move(*t);
          FillFromJsonText(r, *in.tensor);
        } else {
          in.data = r.Value();
        }
      } else {
        r.Value();
      }
    });
    if (!r.ok()) return;
    if (!in.name || in.name->empty()) return r.Fail(Invalid(at + ": \"name\" must be a non-empty string"));
    raw.push_back(std::move(in));
  });
}

// The tensor of one read input: its data from the binary section (binary_data_size; `binary_at` moves
// past it) or from its JSON text.
inline absl::StatusOr<Tensor> FinishInput(RawInput& in, std::optional<size_t> binary_header_length,
                                          std::string_view binary, size_t& binary_at, size_t body_size) {
  const std::string& n = *in.name;
  Tensor t;
  if (in.tensor) {
    t = std::move(*in.tensor);
  } else {
    absl::StatusOr<Tensor> made = MakeTensor(n, in.datatype, in.shape, body_size);
    if (!made.ok()) return made.status();
    t = std::move(*made);
  }
  std::optional<uint64_t> binary_size;
  if (!in.parameters.empty()) {
    absl::StatusOr<Json> p = ParseSlice(in.parameters);
    if (!p.ok()) return p.status();
    if (!p->is_object()) return Invalid(Where(n) + ": \"parameters\" must be an object");
    if (auto b = p->find("binary_data_size"); b != p->end()) {
      if (!b->is_number_unsigned() && !(b->is_number_integer() && b->get<int64_t>() >= 0))
        return Invalid(Where(n) + ": binary_data_size must be a non-negative integer");
      binary_size = b->get<uint64_t>();
    }
  }
  if (binary_size) {
    if (!binary_header_length)
      return Invalid(Where(n) +
                     ": binary_data_size is set but the request has no Inference-Header-Content-Length header");
    if (in.has_data) return Invalid(Where(n) + ": has both \"data\" and binary_data_size");
    if (*binary_size > binary.size() - binary_at)
      return Invalid(Where(n) + ": binary_data_size " + std::to_string(*binary_size) +
                     " runs past the end of the body");
    FERRY_OIP_RETURN_IF_ERROR(FillFromBinary(binary.substr(binary_at, *binary_size), t));
    binary_at += *binary_size;
    return t;
  }
  if (!in.has_data) return Invalid(Where(n) + ": \"data\" is required");
  if (!in.tensor) {
    JsonText data(in.data);
    FillFromJsonText(data, t);
    if (data.ok() && !data.AtEnd()) data.Syntax("unexpected text after \"data\"");
    if (!data.ok()) return data.status();
  }
  return t;
}

}  // namespace internal

// Parses an infer request body. `binary_header_length` is the Inference-Header-Content-Length header's
// value when present (the JSON is that long and binary tensor data follows).
inline absl::StatusOr<InferRequest> Parse(std::string_view body, std::optional<size_t> binary_header_length) {
  using internal::Invalid;
  using internal::Where;
  std::string_view json_text = body, binary;
  if (binary_header_length) {
    if (*binary_header_length > body.size())
      return Invalid("Inference-Header-Content-Length (" + std::to_string(*binary_header_length) +
                     ") is larger than the body (" + std::to_string(body.size()) + " bytes)");
    json_text = body.substr(0, *binary_header_length);
    binary = body.substr(*binary_header_length);
  }
  internal::JsonText r(json_text);
  if (r.Peek() != '{') {
    if (Json::accept(json_text)) return Invalid("request body must be a JSON object with \"inputs\"");
    return Invalid("request body is not valid JSON");
  }
  InferRequest req;
  std::vector<internal::RawInput> raw;
  bool has_inputs = false;
  std::string_view outputs;
  r.Object([&](const std::string& key) {
    if (key == "id") {
      if (r.Peek() != '"') return r.Fail(Invalid("\"id\" must be a string"));
      req.id = r.String();
    } else if (key == "parameters") {
      absl::StatusOr<Json> parameters = internal::ParseSlice(r.Value());
      if (!r.ok()) return;
      if (!parameters.ok()) return r.Fail(parameters.status());
      req.parameters = std::move(*parameters);
      if (!req.parameters.is_object()) return r.Fail(Invalid("\"parameters\" must be an object"));
    } else if (key == "inputs") {
      has_inputs = true;
      internal::ReadInputs(r, body.size(), raw);
    } else if (key == "outputs") {
      outputs = r.Value();
    } else {
      r.Value();
    }
  });
  if (r.ok() && !r.AtEnd()) r.Syntax("unexpected text after the request object");
  if (!r.ok()) return r.status();
  if (!has_inputs) return Invalid("\"inputs\" is required");
  if (raw.empty()) return Invalid("\"inputs\" must be a non-empty array of tensors");
  size_t binary_at = 0;
  for (internal::RawInput& in : raw) {
    for (const Tensor& seen : req.inputs)
      if (seen.name() == *in.name) return Invalid(Where(*in.name) + " appears twice");
    absl::StatusOr<Tensor> t = internal::FinishInput(in, binary_header_length, binary, binary_at, body.size());
    if (!t.ok()) return t.status();
    req.inputs.push_back(std::move(*t));
  }
  if (binary_at != binary.size())
    return Invalid("the body has " + std::to_string(binary.size() - binary_at) +
                   " bytes of binary data that no input claims");
  if (!outputs.empty()) {
    absl::StatusOr<Json> outs = internal::ParseSlice(outputs);
    if (!outs.ok()) return outs.status();
    if (!outs->is_array()) return Invalid("\"outputs\" must be an array of {\"name\": ...}");
    for (const Json& o : *outs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
        return Invalid("\"outputs\" must be an array of {\"name\": ...}");
      req.outputs.push_back(o["name"].get<std::string>());
    }
  }
  return req;
}

// Checks a parsed request against the model's inputs and outputs.
inline absl::Status Check(const ModelMetadata& m, const InferRequest& req, std::string_view model_name) {
  using internal::Invalid;
  using internal::Where;
  if (!m.inputs.empty()) {
    for (const Tensor& t : req.inputs) {
      const TensorSpec* spec = nullptr;
      for (const TensorSpec& s : m.inputs)
        if (s.name == t.name()) spec = &s;
      if (!spec) {
        std::string names;
        for (const TensorSpec& s : m.inputs) names += (names.empty() ? "" : ", ") + s.name;
        return Invalid("unknown input '" + t.name() + "': model '" + std::string(model_name) + "' takes " + names);
      }
      if (spec->datatype != t.datatype())
        return Invalid(Where(t.name()) + ": datatype " + std::string(DataTypeName(t.datatype())) +
                       " does not match the model's " + std::string(DataTypeName(spec->datatype)));
      bool ok = spec->shape.size() == t.shape().size();
      for (size_t i = 0; ok && i < spec->shape.size(); ++i) ok = spec->shape[i] < 0 || spec->shape[i] == t.shape()[i];
      if (!ok)
        return Invalid(Where(t.name()) + ": shape " + ShapeString(t.shape()) + " does not match the model's " +
                       ShapeString(spec->shape) + " (-1 is any size)");
    }
    for (const TensorSpec& s : m.inputs)
      if (!req.find_input(s.name)) return Invalid("missing input '" + s.name + "'");
  }
  if (!m.outputs.empty()) {
    for (const std::string& o : req.outputs) {
      bool known = false;
      for (const TensorSpec& s : m.outputs) known = known || s.name == o;
      if (!known)
        return Invalid("unknown output '" + o + "' requested: model '" + std::string(model_name) +
                       "' has no such output");
    }
  }
  return absl::OkStatus();
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

#undef FERRY_OIP_RETURN_IF_ERROR

// Writes the response body for `resp` (outputs filtered to the requested ones). Binary outputs (the
// request's parameters.binary_data_output) follow the JSON; then *json_length is set to the JSON's length
// for the Inference-Header-Content-Length header.
std::string SerializeInferResponse(const InferRequest& req, const InferResponse& resp, std::string_view model_name,
                                   std::string_view model_version, std::optional<size_t>* json_length) {
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
  return impl::Parse(body, binary_header_length);
}

absl::Status Validate(const ModelMetadata& m, const InferRequest& req, std::string_view model_name) {
  return impl::Check(m, req, model_name);
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
