// The framed protocol between the proxy (and node agent) and replica processes; docs/protocol.md is its
// specification. Pure encoding and decoding, no I/O: every decoder checks every length against the bytes
// it has and answers a status, never reads out of bounds. Thread-compatible.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "metrics/metrics.h"

namespace ferry::transport {

inline constexpr uint32_t kProtocolVersion = 4;  // 4: the hello carries the cluster token
inline constexpr size_t kFrameHeaderSize = 16;
inline constexpr uint16_t kFrameMagic = 0xF7E1;
// Larger than http_options.max_body_bytes can be set, smaller than what would let a peer exhaust memory.
inline constexpr uint32_t kMaxFramePayload = 1u << 30;

enum class FrameKind : uint8_t {
  kHello = 1,             // client -> replica: version, client name
  kHelloAck = 2,          // replica -> client: version, replica id, deployment
  kRequest = 3,           // client -> replica: one HTTP request
  kResponse = 4,          // replica -> client: the whole response to a request
  kCancel = 5,            // client -> replica: stop working on a request
  kHealth = 6,            // client -> replica: run check_health
  kHealthReply = 7,       // replica -> client: ok flag, message
  kReconfigure = 8,       // client -> replica: new user_config (JSON)
  kReconfigureReply = 9,  // replica -> client: ok flag, message
  kStats = 10,            // client -> replica: ask for load figures
  kStatsReply = 11,       // replica -> client: ongoing, queued, total
  // Version 2: streams and handles.
  kResponseStart = 12,  // replica -> client: status and headers of a streamed response; chunks follow
  kChunk = 13,          // either way: a piece of a streamed body
  kEnd = 14,            // either way: a streamed body is complete (ok) or broken (message)
  kCredit = 15,         // either way: the receiver of a stream's chunks takes this many more bytes
  kSubscribe = 16,      // replica -> node agent: send me endpoint snapshots (the replica holds handles)
  kEndpoints = 17,      // node agent -> replica: a snapshot of endpoint sets (JSON)
  kLoad = 18,           // node agent -> replica: report the handles' load
  kLoadReply = 19,      // replica -> node agent: the handles' load (JSON)
  // Version 3: streamed request bodies and WebSocket sessions.
  kMessage = 20,  // either way: one WebSocket message (text or binary)
  kClose = 21,    // either way: a WebSocket session closes (code, reason)
  kWake = 22,     // replica -> node agent: a handle call waits for a deployment with no replica
};

// The bytes a stream's receiver takes before the sender must wait for credit: a client that reads slowly
// holds at most this much of one stream in the pipes between producer and client.
inline constexpr uint32_t kStreamWindow = 256 * 1024;

bool IsKnownFrameKind(uint8_t kind);
const char* FrameKindName(FrameKind kind);

struct FrameHeader {
  uint32_t payload_size = 0;
  FrameKind kind = FrameKind::kHello;
  uint64_t stream_id = 0;  // the request a frame belongs to; for control frames, a correlation id
};

// Decodes a header from exactly kFrameHeaderSize bytes. Rejects a bad magic, an unknown kind, non-zero
// flags and a payload over kMaxFramePayload.
absl::StatusOr<FrameHeader> DecodeFrameHeader(std::string_view bytes);
void AppendFrameHeader(std::string& out, const FrameHeader& header);

using HeaderList = std::vector<std::pair<std::string_view, std::string_view>>;

struct Hello {
  uint32_t version = kProtocolVersion;
  std::string_view client;
  // The cluster's token (transport::FrameToken()): a replica started with one refuses a connection whose
  // hello does not carry it, and every frame before that hello. Empty outside a cluster with a token.
  std::string_view token;
};
struct HelloAck {
  uint32_t version = kProtocolVersion;
  std::string_view replica_id;
  std::string_view deployment;
};
// How a request's body travels.
enum class BodyMode : uint8_t {
  kWhole = 0,      // in the request frame
  kStreamed = 1,   // the frame holds the body's first bytes (maybe none); chunks follow, then an end frame
  kWebSocket = 2,  // a WebSocket session: messages both ways, then close frames
};
// Views into the frame payload they were decoded from.
struct RequestMessage {
  std::string_view request_id;
  std::string_view method;
  std::string_view path;
  std::string_view query;
  std::string_view route_prefix;
  HeaderList headers;
  std::string_view body;
  uint32_t timeout_ms = 0;  // 0: no deadline
  BodyMode body_mode = BodyMode::kWhole;
};
struct ResponseMessage {
  uint16_t status = 200;
  HeaderList headers;
  std::string_view body;
};
// kResponseStart: the head of a streamed response.
struct ResponseStart {
  uint16_t status = 200;
  HeaderList headers;
};
// kEnd: ok, or the reason the stream broke.
struct StreamEnd {
  bool ok = true;
  std::string_view message;
};
// kMessage: one WebSocket message.
struct WsMessage {
  bool binary = false;
  std::string_view data;
};
// kClose: a WebSocket close code (1000-4999) and reason.
struct WsClose {
  uint16_t code = 1000;
  std::string_view reason;
};
struct StatusReply {  // kHealthReply, kReconfigureReply
  bool ok = true;
  std::string_view message;
};
// A histogram as a replica keeps it: non-cumulative counts per bucket (the last is +Inf) and the sum.
struct HistogramCounts {
  std::vector<uint64_t> counts;
  double sum = 0;
};
struct StatsReply {
  uint32_t ongoing = 0;
  uint32_t queued = 0;
  uint64_t total = 0;
  // Since the replica started (both optional on the wire: an older replica sends neither).
  HistogramCounts processing_seconds;  // per request, handle() or its share of a batch
  HistogramCounts batch_size;          // per batch run
  // The replica's spans sent to the collector and dropped (queue full, collector down); optional on the
  // wire after the histograms.
  uint64_t spans_exported = 0;
  uint64_t spans_dropped = 0;
  // The deployment's own metrics (ray.serve.metrics); optional on the wire after the spans.
  std::vector<metrics::UserMetric> user_metrics;
  // The multiplexed models it has loaded (Ray's model ids; sorted); optional on the wire after the metrics.
  std::vector<std::string> model_ids;
};

// Each Append* writes a whole frame (header and payload) at the end of `out`.
void AppendHello(std::string& out, uint64_t stream_id, const Hello& m);
void AppendHelloAck(std::string& out, uint64_t stream_id, const HelloAck& m);
void AppendRequest(std::string& out, uint64_t stream_id, const RequestMessage& m);
void AppendResponse(std::string& out, uint64_t stream_id, const ResponseMessage& m);
void AppendEmpty(std::string& out, FrameKind kind, uint64_t stream_id);  // kCancel, kHealth, kStats
void AppendStatusReply(std::string& out, FrameKind kind, uint64_t stream_id, const StatusReply& m);
void AppendReconfigure(std::string& out, uint64_t stream_id, std::string_view user_config_json);
void AppendStatsReply(std::string& out, uint64_t stream_id, const StatsReply& m);
void AppendResponseStart(std::string& out, uint64_t stream_id, const ResponseStart& m);
void AppendChunk(std::string& out, uint64_t stream_id, std::string_view data);
void AppendEnd(std::string& out, uint64_t stream_id, const StreamEnd& m);
void AppendCredit(std::string& out, uint64_t stream_id, uint32_t bytes);
void AppendMessage(std::string& out, uint64_t stream_id, const WsMessage& m);
void AppendClose(std::string& out, uint64_t stream_id, const WsClose& m);
// kEndpoints, kLoadReply: one string (JSON).
void AppendText(std::string& out, FrameKind kind, uint64_t stream_id, std::string_view text);

// Each Decode* takes a frame's payload and fails on truncation, trailing bytes and bad values.
absl::Status DecodeHello(std::string_view payload, Hello* out);
absl::Status DecodeHelloAck(std::string_view payload, HelloAck* out);
absl::Status DecodeRequest(std::string_view payload, RequestMessage* out);
absl::Status DecodeResponse(std::string_view payload, ResponseMessage* out);
absl::Status DecodeStatusReply(std::string_view payload, StatusReply* out);
absl::Status DecodeReconfigure(std::string_view payload, std::string_view* user_config_json);
absl::Status DecodeStatsReply(std::string_view payload, StatsReply* out);
absl::Status DecodeEmpty(std::string_view payload);
absl::Status DecodeResponseStart(std::string_view payload, ResponseStart* out);
absl::Status DecodeChunk(std::string_view payload, std::string_view* data);
absl::Status DecodeEnd(std::string_view payload, StreamEnd* out);
absl::Status DecodeCredit(std::string_view payload, uint32_t* bytes);  // rejects 0
absl::Status DecodeText(std::string_view payload, std::string_view* text);
absl::Status DecodeMessage(std::string_view payload, WsMessage* out);
absl::Status DecodeClose(std::string_view payload, WsClose* out);  // rejects codes outside 1000-4999

// Splits a byte stream into frames. Feed it what was read; it hands out each complete frame.
// Thread-compatible.
class FrameReader {
 public:
  // Appends received bytes.
  void Append(std::string_view bytes);
  // Room to read into directly: returns a pointer to `n` writable bytes; call Commit with what was read.
  char* Prepare(size_t n);
  void Commit(size_t n);
  // The next complete frame, if any. The payload view is valid until the next call to Next/Append/Prepare.
  // Returns an error for a malformed header; the stream is unusable after that.
  absl::StatusOr<bool> Next(FrameHeader* header, std::string_view* payload);
  size_t buffered() const { return end_ - start_; }

 private:
  void Reserve(size_t n);
  std::unique_ptr<char[]> data_;
  size_t capacity_ = 0;
  size_t start_ = 0;  // first unconsumed byte
  size_t end_ = 0;    // one past the last received byte
};

}  // namespace ferry::transport
