#include "transport/frame.h"

#include <bit>
#include <cstring>

#include "common/common.h"

namespace ferry::transport {
namespace {

void PutU16(std::string& out, uint16_t v) {
  char b[2] = {static_cast<char>(v), static_cast<char>(v >> 8)};
  out.append(b, 2);
}
void PutU32(std::string& out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out.append(b, 4);
}
void PutU64(std::string& out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out.append(b, 8);
}
void PutString(std::string& out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}
void PutHeaders(std::string& out, const HeaderList& headers) {
  PutU32(out, static_cast<uint32_t>(headers.size()));
  for (const auto& [k, v] : headers) {
    PutString(out, k);
    PutString(out, v);
  }
}

// Reads little-endian fields from a payload, failing on the first short read.
class Cursor {
 public:
  explicit Cursor(std::string_view data) : data_(data) {}
  bool U8(uint8_t* v) {
    if (data_.size() < 1) return Fail();
    *v = static_cast<uint8_t>(data_[0]);
    data_.remove_prefix(1);
    return true;
  }
  bool U16(uint16_t* v) {
    if (data_.size() < 2) return Fail();
    *v = static_cast<uint16_t>(Byte(0) | (Byte(1) << 8));
    data_.remove_prefix(2);
    return true;
  }
  bool U32(uint32_t* v) {
    if (data_.size() < 4) return Fail();
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>(Byte(i)) << (8 * i);
    *v = r;
    data_.remove_prefix(4);
    return true;
  }
  bool U64(uint64_t* v) {
    if (data_.size() < 8) return Fail();
    uint64_t r = 0;
    for (int i = 0; i < 8; ++i) r |= static_cast<uint64_t>(Byte(i)) << (8 * i);
    *v = r;
    data_.remove_prefix(8);
    return true;
  }
  bool String(std::string_view* v) {
    uint32_t n;
    if (!U32(&n)) return false;
    if (data_.size() < n) return Fail();
    *v = data_.substr(0, n);
    data_.remove_prefix(n);
    return true;
  }
  bool Headers(HeaderList* out) {
    uint32_t n;
    if (!U32(&n)) return false;
    // Each header takes at least 8 bytes: a count beyond that is a lie, not a reason to allocate.
    if (n > data_.size() / 8) return Fail();
    out->clear();
    out->reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      std::string_view k, v;
      if (!String(&k) || !String(&v)) return false;
      out->emplace_back(k, v);
    }
    return true;
  }
  bool done() const { return data_.empty(); }
  size_t left() const { return data_.size(); }
  absl::Status Finish(std::string_view what) const {
    if (failed_) return absl::InvalidArgumentError(ferry::StrCat("malformed ", what, " frame: truncated"));
    if (!data_.empty())
      return absl::InvalidArgumentError(ferry::StrCat("malformed ", what, " frame: ", data_.size(), " trailing bytes"));
    return absl::OkStatus();
  }

 private:
  uint32_t Byte(int i) const { return static_cast<uint8_t>(data_[i]); }
  bool Fail() {
    failed_ = true;
    return false;
  }
  std::string_view data_;
  bool failed_ = false;
};

size_t BeginFrame(std::string& out, FrameKind kind, uint64_t stream_id) {
  size_t at = out.size();
  AppendFrameHeader(out, FrameHeader{0, kind, stream_id});
  return at;
}

void EndFrame(std::string& out, size_t at) {
  uint32_t size = static_cast<uint32_t>(out.size() - at - kFrameHeaderSize);
  for (int i = 0; i < 4; ++i) out[at + 4 + i] = static_cast<char>(size >> (8 * i));
}

}  // namespace

bool IsKnownFrameKind(uint8_t kind) { return kind >= 1 && kind <= 22; }

const char* FrameKindName(FrameKind kind) {
  switch (kind) {
    case FrameKind::kHello:
      return "hello";
    case FrameKind::kHelloAck:
      return "hello_ack";
    case FrameKind::kRequest:
      return "request";
    case FrameKind::kResponse:
      return "response";
    case FrameKind::kCancel:
      return "cancel";
    case FrameKind::kHealth:
      return "health";
    case FrameKind::kHealthReply:
      return "health_reply";
    case FrameKind::kReconfigure:
      return "reconfigure";
    case FrameKind::kReconfigureReply:
      return "reconfigure_reply";
    case FrameKind::kStats:
      return "stats";
    case FrameKind::kStatsReply:
      return "stats_reply";
    case FrameKind::kResponseStart:
      return "response_start";
    case FrameKind::kChunk:
      return "chunk";
    case FrameKind::kEnd:
      return "end";
    case FrameKind::kCredit:
      return "credit";
    case FrameKind::kSubscribe:
      return "subscribe";
    case FrameKind::kEndpoints:
      return "endpoints";
    case FrameKind::kLoad:
      return "load";
    case FrameKind::kLoadReply:
      return "load_reply";
    case FrameKind::kMessage:
      return "message";
    case FrameKind::kClose:
      return "close";
    case FrameKind::kWake:
      return "wake";
  }
  return "unknown";
}

// Layout: magic u16, kind u8, flags u8 (0), payload size u32, stream id u64; all little-endian.
void AppendFrameHeader(std::string& out, const FrameHeader& header) {
  PutU16(out, kFrameMagic);
  out.push_back(static_cast<char>(header.kind));
  out.push_back(0);
  PutU32(out, header.payload_size);
  PutU64(out, header.stream_id);
}

absl::StatusOr<FrameHeader> DecodeFrameHeader(std::string_view bytes) {
  if (bytes.size() != kFrameHeaderSize) return absl::InvalidArgumentError("frame header: wrong size");
  Cursor c(bytes);
  uint16_t magic;
  uint8_t kind, flags;
  FrameHeader h;
  c.U16(&magic);
  c.U8(&kind);
  c.U8(&flags);
  c.U32(&h.payload_size);
  c.U64(&h.stream_id);
  if (magic != kFrameMagic)
    return absl::InvalidArgumentError(ferry::StrCat("frame header: bad magic ", std::to_string(magic)));
  if (!IsKnownFrameKind(kind)) return absl::InvalidArgumentError(ferry::StrCat("frame header: unknown kind ", kind));
  if (flags != 0) return absl::InvalidArgumentError(ferry::StrCat("frame header: unknown flags ", flags));
  if (h.payload_size > kMaxFramePayload)
    return absl::InvalidArgumentError(
        ferry::StrCat("frame header: payload of ", h.payload_size, " bytes exceeds the limit"));
  h.kind = static_cast<FrameKind>(kind);
  return h;
}

void AppendHello(std::string& out, uint64_t stream_id, const Hello& m) {
  size_t at = BeginFrame(out, FrameKind::kHello, stream_id);
  PutU32(out, m.version);
  PutString(out, m.client);
  PutString(out, m.token);
  EndFrame(out, at);
}

void AppendHelloAck(std::string& out, uint64_t stream_id, const HelloAck& m) {
  size_t at = BeginFrame(out, FrameKind::kHelloAck, stream_id);
  PutU32(out, m.version);
  PutString(out, m.replica_id);
  PutString(out, m.deployment);
  EndFrame(out, at);
}

void AppendRequest(std::string& out, uint64_t stream_id, const RequestMessage& m) {
  size_t at = BeginFrame(out, FrameKind::kRequest, stream_id);
  PutU32(out, m.timeout_ms);
  out.push_back(static_cast<char>(m.body_mode));
  PutString(out, m.request_id);
  PutString(out, m.method);
  PutString(out, m.path);
  PutString(out, m.query);
  PutString(out, m.route_prefix);
  PutHeaders(out, m.headers);
  PutString(out, m.body);
  EndFrame(out, at);
}

void AppendResponse(std::string& out, uint64_t stream_id, const ResponseMessage& m) {
  size_t at = BeginFrame(out, FrameKind::kResponse, stream_id);
  PutU16(out, m.status);
  PutHeaders(out, m.headers);
  PutString(out, m.body);
  EndFrame(out, at);
}

void AppendEmpty(std::string& out, FrameKind kind, uint64_t stream_id) {
  AppendFrameHeader(out, FrameHeader{0, kind, stream_id});
}

void AppendStatusReply(std::string& out, FrameKind kind, uint64_t stream_id, const StatusReply& m) {
  size_t at = BeginFrame(out, kind, stream_id);
  out.push_back(m.ok ? 1 : 0);
  PutString(out, m.message);
  EndFrame(out, at);
}

void AppendReconfigure(std::string& out, uint64_t stream_id, std::string_view user_config_json) {
  size_t at = BeginFrame(out, FrameKind::kReconfigure, stream_id);
  PutString(out, user_config_json);
  EndFrame(out, at);
}

void AppendStatsReply(std::string& out, uint64_t stream_id, const StatsReply& m) {
  size_t at = BeginFrame(out, FrameKind::kStatsReply, stream_id);
  PutU32(out, m.ongoing);
  PutU32(out, m.queued);
  PutU64(out, m.total);
  for (const HistogramCounts* h : {&m.processing_seconds, &m.batch_size}) {
    PutU32(out, static_cast<uint32_t>(h->counts.size()));
    for (uint64_t c : h->counts) PutU64(out, c);
    PutU64(out, std::bit_cast<uint64_t>(h->sum));
  }
  PutU64(out, m.spans_exported);
  PutU64(out, m.spans_dropped);
  PutU32(out, static_cast<uint32_t>(m.user_metrics.size()));
  for (const metrics::UserMetric& metric : m.user_metrics) {
    PutString(out, metric.name);
    PutString(out, metric.help);
    out.push_back(static_cast<char>(metric.type));
    PutU32(out, static_cast<uint32_t>(metric.bounds.size()));
    for (double b : metric.bounds) PutU64(out, std::bit_cast<uint64_t>(b));
    PutU32(out, static_cast<uint32_t>(metric.series.size()));
    for (const metrics::UserSeries& series : metric.series) {
      PutU32(out, static_cast<uint32_t>(series.tags.size()));
      for (const auto& [k, v] : series.tags) {
        PutString(out, k);
        PutString(out, v);
      }
      if (metric.type == metrics::Type::kHistogram) {
        for (uint64_t c : series.counts) PutU64(out, c);
        PutU64(out, std::bit_cast<uint64_t>(series.sum));
      } else {
        PutU64(out, std::bit_cast<uint64_t>(series.value));
      }
    }
  }
  PutU32(out, static_cast<uint32_t>(m.model_ids.size()));
  for (const std::string& id : m.model_ids) PutString(out, id);
  EndFrame(out, at);
}

void AppendResponseStart(std::string& out, uint64_t stream_id, const ResponseStart& m) {
  size_t at = BeginFrame(out, FrameKind::kResponseStart, stream_id);
  PutU16(out, m.status);
  PutHeaders(out, m.headers);
  EndFrame(out, at);
}

void AppendChunk(std::string& out, uint64_t stream_id, std::string_view data) {
  size_t at = BeginFrame(out, FrameKind::kChunk, stream_id);
  PutString(out, data);
  EndFrame(out, at);
}

void AppendEnd(std::string& out, uint64_t stream_id, const StreamEnd& m) {
  size_t at = BeginFrame(out, FrameKind::kEnd, stream_id);
  out.push_back(m.ok ? 1 : 0);
  PutString(out, m.message);
  EndFrame(out, at);
}

void AppendMessage(std::string& out, uint64_t stream_id, const WsMessage& m) {
  size_t at = BeginFrame(out, FrameKind::kMessage, stream_id);
  out.push_back(m.binary ? 2 : 1);
  PutString(out, m.data);
  EndFrame(out, at);
}

void AppendClose(std::string& out, uint64_t stream_id, const WsClose& m) {
  size_t at = BeginFrame(out, FrameKind::kClose, stream_id);
  PutU16(out, m.code);
  PutString(out, m.reason);
  EndFrame(out, at);
}

void AppendCredit(std::string& out, uint64_t stream_id, uint32_t bytes) {
  size_t at = BeginFrame(out, FrameKind::kCredit, stream_id);
  PutU32(out, bytes);
  EndFrame(out, at);
}

void AppendText(std::string& out, FrameKind kind, uint64_t stream_id, std::string_view text) {
  size_t at = BeginFrame(out, kind, stream_id);
  PutString(out, text);
  EndFrame(out, at);
}

absl::Status DecodeHello(std::string_view payload, Hello* out) {
  Cursor c(payload);
  c.U32(&out->version) && c.String(&out->client) && c.String(&out->token);
  return c.Finish("hello");
}

absl::Status DecodeHelloAck(std::string_view payload, HelloAck* out) {
  Cursor c(payload);
  c.U32(&out->version) && c.String(&out->replica_id) && c.String(&out->deployment);
  return c.Finish("hello_ack");
}

absl::Status DecodeRequest(std::string_view payload, RequestMessage* out) {
  Cursor c(payload);
  uint8_t mode = 0;
  c.U32(&out->timeout_ms) && c.U8(&mode) && c.String(&out->request_id) && c.String(&out->method) &&
      c.String(&out->path) && c.String(&out->query) && c.String(&out->route_prefix) && c.Headers(&out->headers) &&
      c.String(&out->body);
  absl::Status s = c.Finish("request");
  if (s.ok() && mode > static_cast<uint8_t>(BodyMode::kWebSocket))
    return absl::InvalidArgumentError(ferry::StrCat("malformed request frame: body mode ", mode));
  out->body_mode = static_cast<BodyMode>(mode);
  return s;
}

absl::Status DecodeResponse(std::string_view payload, ResponseMessage* out) {
  Cursor c(payload);
  c.U16(&out->status) && c.Headers(&out->headers) && c.String(&out->body);
  absl::Status s = c.Finish("response");
  if (s.ok() && (out->status < 100 || out->status > 599))
    return absl::InvalidArgumentError(ferry::StrCat("malformed response frame: status ", out->status));
  return s;
}

absl::Status DecodeStatusReply(std::string_view payload, StatusReply* out) {
  Cursor c(payload);
  uint8_t ok = 0;
  c.U8(&ok) && c.String(&out->message);
  out->ok = ok != 0;
  absl::Status s = c.Finish("status reply");
  if (s.ok() && ok > 1) return absl::InvalidArgumentError("malformed status reply frame: ok flag not 0 or 1");
  return s;
}

absl::Status DecodeReconfigure(std::string_view payload, std::string_view* user_config_json) {
  Cursor c(payload);
  c.String(user_config_json);
  return c.Finish("reconfigure");
}

// A stats reply's user metrics (after the spans). Counts are checked against the bytes left before anything
// is allocated; names, tag keys and bounds are checked as the registry checks them, so what the node
// renders is valid text whatever a replica sent.
static absl::Status DecodeUserMetrics(Cursor& c, std::vector<metrics::UserMetric>* out) {
  auto bad = [](std::string_view why) { return absl::InvalidArgumentError(ferry::StrCat("stats reply: ", why)); };
  uint32_t n = 0;
  if (!c.U32(&n)) return absl::OkStatus();  // truncated: Finish says so
  if (n > c.left() / 14) return bad("more user metrics than bytes");
  out->resize(n);
  for (metrics::UserMetric& m : *out) {
    std::string_view name, help;
    uint8_t type = 0;
    uint32_t num_bounds = 0, num_series = 0;
    if (!c.String(&name) || !c.String(&help) || !c.U8(&type) || !c.U32(&num_bounds)) return absl::OkStatus();
    if (!metrics::IsMetricName(name)) return bad(ferry::StrCat("user metric name '", name, "' is not valid"));
    if (type > static_cast<uint8_t>(metrics::Type::kHistogram)) return bad("user metric type unknown");
    m.name = std::string(name);
    m.help = std::string(help);
    m.type = static_cast<metrics::Type>(type);
    if (num_bounds > metrics::UserRegistry::kMaxBounds) return bad("user histogram with more than 64 bounds");
    if (m.type != metrics::Type::kHistogram && num_bounds != 0) return bad("bounds on a counter or gauge");
    m.bounds.resize(num_bounds);
    for (double& b : m.bounds) {
      uint64_t bits = 0;
      if (!c.U64(&bits)) return absl::OkStatus();
      b = std::bit_cast<double>(bits);
    }
    if (!c.U32(&num_series)) return absl::OkStatus();
    const size_t per_series = 4 + 8 * (m.type == metrics::Type::kHistogram ? num_bounds + 2 : 1);
    if (num_series > c.left() / per_series) return bad("more user metric series than bytes");
    m.series.resize(num_series);
    for (metrics::UserSeries& series : m.series) {
      HeaderList tags;
      if (!c.Headers(&tags)) return absl::OkStatus();
      for (const auto& [k, v] : tags) {
        if (!metrics::IsLabelName(k)) return bad(ferry::StrCat("user metric tag '", k, "' is not a label name"));
        series.tags.emplace_back(std::string(k), std::string(v));
      }
      uint64_t bits = 0;
      if (m.type == metrics::Type::kHistogram) {
        series.counts.assign(num_bounds + 1, 0);
        for (uint64_t& count : series.counts)
          if (!c.U64(&count)) return absl::OkStatus();
        if (!c.U64(&bits)) return absl::OkStatus();
        series.sum = std::bit_cast<double>(bits);
      } else {
        if (!c.U64(&bits)) return absl::OkStatus();
        series.value = std::bit_cast<double>(bits);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeStatsReply(std::string_view payload, StatsReply* out) {
  Cursor c(payload);
  bool ok = c.U32(&out->ongoing) && c.U32(&out->queued) && c.U64(&out->total);
  if (ok && !c.done()) {
    for (HistogramCounts* h : {&out->processing_seconds, &out->batch_size}) {
      uint32_t n = 0;
      uint64_t sum = 0;
      if (!c.U32(&n)) break;
      if (n > 256)
        return absl::InvalidArgumentError(ferry::StrCat("stats reply: ", n, " histogram buckets (at most 256)"));
      h->counts.assign(n, 0);
      bool read = true;
      for (uint32_t i = 0; read && i < n; ++i) read = c.U64(&h->counts[i]);
      if (!read || !c.U64(&sum)) break;
      h->sum = std::bit_cast<double>(sum);
    }
  }
  if (ok && !c.done()) c.U64(&out->spans_exported) && c.U64(&out->spans_dropped);
  if (ok && !c.done()) {
    absl::Status s = DecodeUserMetrics(c, &out->user_metrics);
    if (!s.ok()) return s;
  }
  if (ok && !c.done()) {
    uint32_t n = 0;
    if (c.U32(&n)) {
      if (n > c.left() / 4) return absl::InvalidArgumentError("stats reply: more model ids than bytes");
      out->model_ids.resize(n);
      for (std::string& id : out->model_ids) {
        std::string_view v;
        if (!c.String(&v)) break;
        id = std::string(v);
      }
    }
  }
  return c.Finish("stats reply");
}

absl::Status DecodeResponseStart(std::string_view payload, ResponseStart* out) {
  Cursor c(payload);
  c.U16(&out->status) && c.Headers(&out->headers);
  absl::Status s = c.Finish("response_start");
  if (s.ok() && (out->status < 100 || out->status > 599))
    return absl::InvalidArgumentError(ferry::StrCat("malformed response_start frame: status ", out->status));
  return s;
}

absl::Status DecodeChunk(std::string_view payload, std::string_view* data) {
  Cursor c(payload);
  c.String(data);
  return c.Finish("chunk");
}

absl::Status DecodeEnd(std::string_view payload, StreamEnd* out) {
  Cursor c(payload);
  uint8_t ok = 0;
  c.U8(&ok) && c.String(&out->message);
  out->ok = ok != 0;
  absl::Status s = c.Finish("end");
  if (s.ok() && ok > 1) return absl::InvalidArgumentError("malformed end frame: ok flag not 0 or 1");
  return s;
}

absl::Status DecodeMessage(std::string_view payload, WsMessage* out) {
  Cursor c(payload);
  uint8_t type = 0;
  c.U8(&type) && c.String(&out->data);
  absl::Status s = c.Finish("message");
  if (s.ok() && type != 1 && type != 2)
    return absl::InvalidArgumentError(ferry::StrCat("malformed message frame: type ", type));
  out->binary = type == 2;
  return s;
}

absl::Status DecodeClose(std::string_view payload, WsClose* out) {
  Cursor c(payload);
  c.U16(&out->code) && c.String(&out->reason);
  absl::Status s = c.Finish("close");
  if (s.ok() && (out->code < 1000 || out->code > 4999))
    return absl::InvalidArgumentError(ferry::StrCat("malformed close frame: code ", out->code));
  return s;
}

absl::Status DecodeCredit(std::string_view payload, uint32_t* bytes) {
  Cursor c(payload);
  c.U32(bytes);
  absl::Status s = c.Finish("credit");
  if (s.ok() && *bytes == 0) return absl::InvalidArgumentError("malformed credit frame: zero bytes");
  return s;
}

absl::Status DecodeText(std::string_view payload, std::string_view* text) {
  Cursor c(payload);
  c.String(text);
  return c.Finish("text");
}

absl::Status DecodeEmpty(std::string_view payload) {
  if (!payload.empty()) return absl::InvalidArgumentError("malformed frame: expected an empty payload");
  return absl::OkStatus();
}

void FrameReader::Reserve(size_t n) {
  if (capacity_ - end_ >= n) return;
  size_t live = end_ - start_;
  if (start_ > 0 && capacity_ - live >= n) {
    std::memmove(data_.get(), data_.get() + start_, live);
  } else {
    size_t capacity = std::max(capacity_ * 2, live + n);
    std::unique_ptr<char[]> bigger(new char[capacity]);
    if (live) std::memcpy(bigger.get(), data_.get() + start_, live);
    data_ = std::move(bigger);
    capacity_ = capacity;
  }
  start_ = 0;
  end_ = live;
}

void FrameReader::Append(std::string_view bytes) {
  std::memcpy(Prepare(bytes.size()), bytes.data(), bytes.size());
  Commit(bytes.size());
}

char* FrameReader::Prepare(size_t n) {
  if (start_ == end_) start_ = end_ = 0;
  Reserve(n);
  return data_.get() + end_;
}

void FrameReader::Commit(size_t n) { end_ += n; }

absl::StatusOr<bool> FrameReader::Next(FrameHeader* header, std::string_view* payload) {
  if (end_ - start_ < kFrameHeaderSize) return false;
  absl::StatusOr<FrameHeader> h = DecodeFrameHeader(std::string_view(data_.get() + start_, kFrameHeaderSize));
  if (!h.ok()) return h.status();
  if (end_ - start_ - kFrameHeaderSize < h->payload_size) return false;
  *header = *h;
  *payload = std::string_view(data_.get() + start_ + kFrameHeaderSize, h->payload_size);
  start_ += kFrameHeaderSize + h->payload_size;
  return true;
}

}  // namespace ferry::transport
