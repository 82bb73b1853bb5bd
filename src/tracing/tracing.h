// Distributed tracing: W3C Trace Context (`traceparent`) parsing and formatting, spans, and a tracer that
// samples requests and exports their spans in batches with OTLP over HTTP/JSON to a collector
// (`tracing: {otlp_endpoint, sampling_ratio}` in the config). Every ferry process that records spans
// (the node's proxy, each replica) has one Tracer and exports on its own, as OpenTelemetry SDKs do.
// Thread-safe: the free functions are pure; a Tracer may be used from any thread.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "common/http_client.h"
#include "common/mutex.h"
#include "spec/spec.h"

namespace ferry::tracing {

struct TraceId {
  uint64_t high = 0;
  uint64_t low = 0;
  bool valid() const { return (high | low) != 0; }
  bool operator==(const TraceId&) const = default;
};

// Where a span sits in its trace: what a `traceparent` header carries.
struct SpanContext {
  TraceId trace_id;
  uint64_t span_id = 0;
  bool sampled = false;
  bool valid() const { return trace_id.valid() && span_id != 0; }
};

// Parses a `traceparent` header ("00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"). False for
// anything the W3C Trace Context spec says to ignore: a wrong length, upper-case or non-hex digits,
// version ff, all-zero ids, or a version-00 header with more after it. A later version is read by its
// first four fields, as the spec asks.
bool ParseTraceparent(std::string_view header, SpanContext* out);

// The `traceparent` header value of `context` (55 characters, version 00).
std::string FormatTraceparent(const SpanContext& context);

// 32 or 16 lower-case hex digits.
std::string TraceIdHex(const TraceId& id);
std::string SpanIdHex(uint64_t id);

// Random non-zero ids.
TraceId NewTraceId();
uint64_t NewSpanId();

// Nanoseconds since the Unix epoch (span timestamps).
int64_t UnixNanos();

// OTLP's SpanKind values.
enum class SpanKind { kInternal = 1, kServer = 2, kClient = 3 };

struct Attribute {
  std::string key;
  std::variant<std::string, int64_t, double, bool> value;
};

struct Span {
  TraceId trace_id;
  uint64_t span_id = 0;
  uint64_t parent_span_id = 0;  // 0: a root span
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  int64_t start_unix_ns = 0;
  int64_t end_unix_ns = 0;
  std::vector<Attribute> attributes;
  bool error = false;  // OTLP status ERROR (else UNSET)
  std::string status_message;
};

// An OTLP ExportTraceServiceRequest in the protocol's JSON encoding (hex ids, integer enums, 64-bit
// integers as decimal strings): one resource with `resource` attributes, one scope ("ferry").
std::string EncodeOtlpJson(const std::vector<Span>& spans, const std::vector<Attribute>& resource);

using HeaderList = HttpHeaders;

// POSTs `body` as application/json to `endpoint`, with `headers` besides its own, and reads the status line.
// OK for a 2xx answer; an error naming the endpoint otherwise. Blocks for at most `timeout`.
absl::Status PostJson(const HttpEndpoint& endpoint, std::string_view body, std::chrono::milliseconds timeout,
                      const HeaderList& headers = {});

// OpenTelemetry's OTEL_EXPORTER_OTLP_HEADERS format (W3C Baggage's): `key=value` entries separated by commas,
// blanks around them ignored, values percent-decoded (`Authorization=Basic%20abc`). Keys must be HTTP
// tokens; a value must not decode to control characters. An error names the entry.
absl::StatusOr<HeaderList> ParseOtlpHeaders(std::string_view text);
// The headers every export sends (an API key for a hosted collector): OTEL_EXPORTER_OTLP_HEADERS, with
// OTEL_EXPORTER_OTLP_TRACES_HEADERS' entries replacing those of the same name. An error names the variable.
// From the environment, not the config, so that a secret stays out of `ferry config` and the state dir.
absl::StatusOr<HeaderList> OtlpHeadersFromEnvironment();

// {otlp_endpoint (empty: tracing off), sampling_ratio}, with the config's default ratio.
using TracingOptions = spec::TracingConfig;

// Samples, collects and exports one process's spans. Sampling follows the parent: a request that arrives
// with a `traceparent` is traced when its sampled flag is set; one without is traced with probability
// sampling_ratio (decided by its new trace id, so every process agrees). Finished spans wait in a bounded
// queue (kMaxQueued; more are dropped and counted) for an exporter thread that sends them in batches of
// up to kMaxBatch every kExportInterval, or sooner when a batch is full.
// Thread-safe.
class Tracer {
 public:
  static constexpr size_t kMaxQueued = 2048;
  static constexpr size_t kMaxBatch = 512;
  static constexpr std::chrono::milliseconds kExportInterval{1000};
  static constexpr std::chrono::milliseconds kExportTimeout{5000};
  // At exit: how long one export may take; after a failed one the rest is dropped, so a process never
  // waits long on a collector that is gone.
  static constexpr std::chrono::milliseconds kShutdownExportTimeout{1000};

  // `resource`: attributes of this process (service.name and ferry's own) on every export.
  explicit Tracer(std::vector<Attribute> resource);
  ~Tracer();  // exports what is queued (giving up after one failed export), then stops
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // Turns tracing on (an endpoint), off (none) or changes the ratio. Spans already queued go to the
  // endpoint set when they are exported.
  absl::Status Configure(const TracingOptions& options);
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // The context of a new span for a request that arrived with `parent` (invalid when it had none): the
  // parent's trace and sampling decision, or a new trace sampled at sampling_ratio. Not sampled when
  // tracing is off. Ids are made only for sampled spans (an unsampled context has no span id).
  SpanContext StartSpan(const SpanContext& parent) const;

  // Queues a finished span for export. Never blocks on the network.
  void Record(Span span);
  // Exports everything queued now; returns when it was sent or failed. For shutdown and tests.
  void Flush();

  uint64_t exported() const { return exported_.load(); }
  uint64_t dropped() const { return dropped_.load(); }

 private:
  void ExportLoop();
  bool ExportBatch(std::vector<Span>& batch);  // false: the collector did not take it

  const std::vector<Attribute> resource_;
  const HeaderList headers_;  // from the environment, on every export
  // sampling_ratio as a bound on a trace id's low word: 0 samples nothing, UINT64_MAX everything.
  std::atomic<uint64_t> threshold_{0};
  std::atomic<bool> always_{false};   // sampling_ratio >= 1
  std::atomic<bool> enabled_{false};  // an endpoint is set
  std::atomic<uint64_t> exported_{0};
  std::atomic<uint64_t> dropped_{0};
  Mutex mu_;
  CondVar wake_;
  CondVar flushed_;
  std::vector<Span> queue_ ABSL_GUARDED_BY(mu_);
  HttpEndpoint endpoint_ ABSL_GUARDED_BY(mu_);
  bool has_endpoint_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t flush_requested_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t flush_done_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point last_warning_{};  // exporter thread only
  std::thread thread_;                                    // last: starts once the rest is set up
};

}  // namespace ferry::tracing
