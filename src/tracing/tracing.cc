#include "tracing/tracing.h"

#include <netdb.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <absl/strings/match.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "common/common.h"

namespace ferry::tracing {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is invalid in traceparent
}

// Reads exactly `digits` lower-case hex digits (at most 16) from `text` at `at`.
bool ReadHex(std::string_view text, size_t at, size_t digits, uint64_t* out) {
  uint64_t v = 0;
  for (size_t i = 0; i < digits; ++i) {
    int d = HexValue(text[at + i]);
    if (d < 0) return false;
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

}  // namespace

bool ParseTraceparent(std::string_view h, SpanContext* out) {
  // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
  constexpr size_t kSize = 55;
  if (h.size() < kSize || h[2] != '-' || h[35] != '-' || h[52] != '-') return false;
  uint64_t version, high, low, span, flags;
  if (!ReadHex(h, 0, 2, &version) || version == 0xff) return false;
  if (version == 0 && h.size() != kSize) return false;
  if (version != 0 && h.size() > kSize && h[kSize] != '-') return false;
  if (!ReadHex(h, 3, 16, &high) || !ReadHex(h, 19, 16, &low) || !ReadHex(h, 36, 16, &span) ||
      !ReadHex(h, 53, 2, &flags))
    return false;
  if ((high | low) == 0 || span == 0) return false;
  out->trace_id = {high, low};
  out->span_id = span;
  out->sampled = (flags & 1) != 0;
  return true;
}

std::string TraceIdHex(const TraceId& id) { return HexString(id.high) + HexString(id.low); }
std::string SpanIdHex(uint64_t id) { return HexString(id); }

std::string FormatTraceparent(const SpanContext& c) {
  return StrCat("00-", TraceIdHex(c.trace_id), "-", SpanIdHex(c.span_id), c.sampled ? "-01" : "-00");
}

TraceId NewTraceId() {
  TraceId id;
  while (!id.valid()) id = {RandomWord(), RandomWord()};
  return id;
}

uint64_t NewSpanId() {
  uint64_t id = 0;
  while (id == 0) id = RandomWord();
  return id;
}

int64_t UnixNanos() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// Written by hand rather than through a JSON object model: the exporter encodes every sampled span, and
// on a busy node that is thousands a second on a core the request path shares.
void AppendAttributes(std::string& out, const std::vector<Attribute>& attributes) {
  out.push_back('[');
  for (size_t i = 0; i < attributes.size(); ++i) {
    const Attribute& a = attributes[i];
    if (i) out.push_back(',');
    out.append("{\"key\":");
    AppendJsonString(out, a.key);
    out.append(",\"value\":{");
    if (const auto* s = std::get_if<std::string>(&a.value)) {
      out.append("\"stringValue\":");
      AppendJsonString(out, *s);
    } else if (const auto* n = std::get_if<int64_t>(&a.value)) {
      StrAppend(&out, "\"intValue\":\"", *n, "\"");  // int64 is a string in protobuf's JSON mapping
    } else if (const auto* d = std::get_if<double>(&a.value)) {
      char buf[32];
      int len = snprintf(buf, sizeof(buf), "%.17g", *d);
      out.append("\"doubleValue\":");
      out.append(std::isfinite(*d) ? std::string_view(buf, len > 0 ? static_cast<size_t>(len) : 0) : "null");
    } else {
      StrAppend(&out, "\"boolValue\":", std::get<bool>(a.value) ? "true" : "false");
    }
    out.append("}}");
  }
  out.push_back(']');
}

}  // namespace

std::string EncodeOtlpJson(const std::vector<Span>& spans, const std::vector<Attribute>& resource) {
  std::string out;
  out.reserve(256 + spans.size() * 512);
  out.append("{\"resourceSpans\":[{\"resource\":{\"attributes\":");
  AppendAttributes(out, resource);
  StrAppend(&out, "},\"scopeSpans\":[{\"scope\":{\"name\":\"ferry\",\"version\":\"", kVersion, "\"},\"spans\":[");
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span& s = spans[i];
    if (i) out.push_back(',');
    StrAppend(&out, "{\"traceId\":\"", TraceIdHex(s.trace_id), "\",\"spanId\":\"", SpanIdHex(s.span_id), "\"");
    if (s.parent_span_id != 0) StrAppend(&out, ",\"parentSpanId\":\"", SpanIdHex(s.parent_span_id), "\"");
    out.append(",\"name\":");
    AppendJsonString(out, s.name);
    StrAppend(&out, ",\"kind\":", static_cast<int>(s.kind), ",\"startTimeUnixNano\":\"", s.start_unix_ns,
              "\",\"endTimeUnixNano\":\"", s.end_unix_ns, "\",\"attributes\":");
    AppendAttributes(out, s.attributes);
    if (s.error) {
      out.append(",\"status\":{\"code\":2");  // STATUS_CODE_ERROR
      if (!s.status_message.empty()) {
        out.append(",\"message\":");
        AppendJsonString(out, s.status_message);
      }
      out.push_back('}');
    }
    out.push_back('}');
  }
  out.append("]}]}]}");
  return out;
}

absl::Status PostJson(const HttpEndpoint& endpoint, std::string_view body, std::chrono::milliseconds timeout,
                      const HeaderList& headers) {
  HttpCall call;
  call.method = "POST";
  call.path = endpoint.path;
  call.body = std::string(body);
  call.content_type = "application/json";
  call.headers = headers;
  call.timeout = timeout;
  call.status_only = true;
  absl::StatusOr<HttpResponse> answer = SendHttp(endpoint, call);
  if (!answer.ok()) return answer.status();
  if (answer->status / 100 != 2)
    return absl::UnavailableError(StrCat(endpoint.host, ":", endpoint.port, endpoint.path, " answered ", answer->status));
  return absl::OkStatus();
}

namespace {

bool IsTokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string_view TrimBlanks(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int PercentHexValue(char c) {  // percent-encoding allows either case
  return c >= 'A' && c <= 'F' ? c - 'A' + 10 : HexValue(c);
}

HeaderList HeadersOrWarn() {
  absl::StatusOr<HeaderList> headers = OtlpHeadersFromEnvironment();
  if (headers.ok()) return *std::move(headers);
  FERRY_LOG(kWarning, "tracing", Message(headers.status()), "; exporting without headers");
  return {};
}

}  // namespace

absl::StatusOr<HeaderList> ParseOtlpHeaders(std::string_view text) {
  HeaderList out;
  size_t index = 0;
  for (std::string_view rest = text;;) {
    const size_t comma = rest.find(',');
    const std::string_view entry = TrimBlanks(rest.substr(0, comma));
    ++index;
    if (!entry.empty()) {
      const size_t eq = entry.find('=');
      if (eq == std::string_view::npos)
        return absl::InvalidArgumentError(StrCat("entry ", index, " (\"", entry, "\") is not key=value"));
      const std::string_view key = TrimBlanks(entry.substr(0, eq)), raw = TrimBlanks(entry.substr(eq + 1));
      if (key.empty() || !std::all_of(key.begin(), key.end(), IsTokenChar))
        return absl::InvalidArgumentError(StrCat("entry ", index, ": \"", key, "\" is not a valid header name"));
      std::string value;
      for (size_t i = 0; i < raw.size(); ++i) {
        char c = raw[i];
        if (c == '%' && i + 2 < raw.size() && PercentHexValue(raw[i + 1]) >= 0 && PercentHexValue(raw[i + 2]) >= 0) {
          c = static_cast<char>(PercentHexValue(raw[i + 1]) * 16 + PercentHexValue(raw[i + 2]));
          i += 2;
        }
        if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f)
          return absl::InvalidArgumentError(StrCat("entry ", index, " (", key, "): the value has a control character"));
        value.push_back(c);
      }
      out.emplace_back(std::string(key), std::move(value));
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return out;
}

absl::StatusOr<HeaderList> OtlpHeadersFromEnvironment() {
  HeaderList merged;
  for (const char* name : {"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"}) {
    const char* text = std::getenv(name);
    if (!text) continue;
    absl::StatusOr<HeaderList> parsed = ParseOtlpHeaders(text);
    if (!parsed.ok()) return absl::InvalidArgumentError(StrCat(name, ": ", Message(parsed.status())));
    for (auto& [key, value] : *parsed) {
      auto same = std::find_if(merged.begin(), merged.end(),
                               [&key = key](const auto& h) { return absl::EqualsIgnoreCase(h.first, key); });
      if (same != merged.end())
        same->second = value;
      else
        merged.emplace_back(key, value);
    }
  }
  return merged;
}

Tracer::Tracer(std::vector<Attribute> resource)
    : resource_(std::move(resource)), headers_(HeadersOrWarn()), thread_([this] { ExportLoop(); }) {}

Tracer::~Tracer() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;  // the exporter sends what is queued, then returns
  }
  wake_.SignalAll();
  thread_.join();
}

absl::Status Tracer::Configure(const TracingOptions& options) {
  HttpEndpoint endpoint;
  if (!options.otlp_endpoint.empty()) {
    absl::StatusOr<HttpEndpoint> parsed = ParseHttpEndpoint(options.otlp_endpoint);
    if (!parsed.ok()) return parsed.status();
    endpoint = *parsed;
  }
  if (!(options.sampling_ratio >= 0 && options.sampling_ratio <= 1))
    return absl::InvalidArgumentError("sampling_ratio must be between 0 and 1");
  {
    MutexLock lock(&mu_);
    endpoint_ = endpoint;
    has_endpoint_ = !options.otlp_endpoint.empty();
  }
  const bool on = !options.otlp_endpoint.empty();
  always_.store(on && options.sampling_ratio >= 1);
  // ratio * 2^64, computed in long double so that small ratios keep their precision.
  long double bound = static_cast<long double>(options.sampling_ratio) * 18446744073709551616.0L;
  threshold_.store(on && options.sampling_ratio < 1 ? static_cast<uint64_t>(bound) : 0);
  enabled_.store(on);
  return absl::OkStatus();
}

SpanContext Tracer::StartSpan(const SpanContext& parent) const {
  SpanContext c;
  if (!enabled()) return c;
  if (parent.valid()) {
    c.trace_id = parent.trace_id;
    c.sampled = parent.sampled;
  } else {
    // The decision comes first and ids only for traces that are kept: most requests cost one random draw.
    const uint64_t low = RandomWord();
    c.sampled = always_.load(std::memory_order_relaxed) || low < threshold_.load(std::memory_order_relaxed);
    if (!c.sampled) return c;
    c.trace_id = {RandomWord(), low};
    if (!c.trace_id.valid()) c.trace_id.high = 1;
  }
  if (c.sampled) c.span_id = NewSpanId();
  return c;
}

void Tracer::Record(Span span) {
  bool full;
  {
    MutexLock lock(&mu_);
    full = queue_.size() >= kMaxQueued;
    if (!full) queue_.push_back(std::move(span));
    if (queue_.size() < kMaxBatch) return;
  }
  if (full) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  wake_.Signal();
}

void Tracer::Flush() {
  MutexLock lock(&mu_);
  uint64_t ticket = ++flush_requested_;
  wake_.Signal();
  while (!(flush_done_ >= ticket || stopping_)) flushed_.Wait(&mu_);
}

void Tracer::ExportLoop() {
  // Background work: on a busy node it yields the CPU to the threads serving requests (Linux applies a
  // thread's own nice value to that thread only).
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
  mu_.Lock();
  for (;;) {
    const auto until = SteadyClock::now() + kExportInterval;
    while (!(stopping_ || queue_.size() >= kMaxBatch || flush_requested_ > flush_done_))
      if (!wake_.WaitUntil(&mu_, until)) break;
    const uint64_t flush_to = flush_requested_;
    while (!queue_.empty()) {
      std::vector<Span> batch;
      if (queue_.size() <= kMaxBatch) {
        batch.swap(queue_);
      } else {
        batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.begin() + kMaxBatch));
        queue_.erase(queue_.begin(), queue_.begin() + kMaxBatch);
      }
      mu_.Unlock();
      const bool sent = ExportBatch(batch);
      mu_.Lock();
      if (!sent && stopping_) {
        // A process on its way out does not wait on a collector that failed: the rest is dropped.
        dropped_.fetch_add(queue_.size(), std::memory_order_relaxed);
        queue_.clear();
      }
    }
    flush_done_ = flush_to;
    flushed_.SignalAll();
    if (stopping_) break;
  }
  mu_.Unlock();
}

bool Tracer::ExportBatch(std::vector<Span>& batch) {
  HttpEndpoint endpoint;
  bool stopping;
  {
    MutexLock lock(&mu_);
    if (!has_endpoint_) return true;  // tracing was turned off: what was queued goes nowhere
    endpoint = endpoint_;
    stopping = stopping_;
  }
  absl::Status s = PostJson(endpoint, EncodeOtlpJson(batch, resource_),
                            stopping ? kShutdownExportTimeout : kExportTimeout, headers_);
  if (s.ok()) {
    exported_.fetch_add(batch.size(), std::memory_order_relaxed);
    return true;
  }
  dropped_.fetch_add(batch.size(), std::memory_order_relaxed);
  // One warning per interval at most: a collector that is down must not flood the log.
  auto now = SteadyClock::now();
  if (now - last_warning_ >= std::chrono::seconds(10)) {
    last_warning_ = now;
    FERRY_LOG(kWarning, "tracing", "could not export ", batch.size(), " spans: ", Message(s), " (", dropped_.load(),
              " spans dropped so far)");
  }
  return false;
}

}  // namespace ferry::tracing
