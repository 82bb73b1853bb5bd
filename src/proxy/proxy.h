// The HTTP ingress of a node: accepts HTTP/1.1 (keep-alive, pipelining), matches the longest route_prefix,
// hands the request to the ingress deployment's router, forwards it to the chosen replica as a frame, and
// writes the replica's answer back. Answers /-/healthz and /-/routes itself. Writes one access line per
// request to a route (logging_config.enable_access_log), in blocks every 100 ms. One io_context and one thread
// per core, each with its own acceptor (SO_REUSEPORT), connections and replica channels: nothing on the
// request path is shared between threads except the routers' short critical sections.
// Thread-safe: Create/Start/Drain/Stop from one controlling thread.
#pragma once

#include <absl/status/statusor.h>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "router/routing_table.h"

namespace ferry::metrics {
class Registry;
}
namespace ferry::tracing {
class Tracer;
}

namespace ferry::proxy {

struct ProxyOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  int num_threads = 1;
  std::optional<std::chrono::milliseconds> request_timeout;  // none: no deadline
  std::chrono::milliseconds keep_alive_timeout{90000};
  std::chrono::milliseconds header_timeout{10000};
  int64_t max_body_bytes = 64ll << 20;
  // Bodies larger than this (and chunked ones without a length) go to the replica as they arrive.
  uint64_t body_stream_threshold_bytes = 1 << 20;
  size_t max_header_bytes = 16 * 1024;
  // WebSocket sessions: the largest message either way (a larger one from the client closes the session
  // with 1009), how long a session may pass no message before it is closed (1001), and how often the
  // proxy pings a quiet client (one that does not answer within another interval is gone).
  uint64_t websocket_max_message_bytes = 16 << 20;
  std::chrono::milliseconds websocket_idle_timeout{600000};
  std::chrono::milliseconds websocket_ping_interval{20000};
  // Where the proxy's metrics go (requests by code, latency, queue wait, 503s, 504s); null: none.
  metrics::Registry* metrics = nullptr;
  // Traces sampled requests (spans for the proxy and the queue; the replica gets the trace context in its
  // `traceparent` header); null: none.
  tracing::Tracer* tracer = nullptr;
};

class Proxy {
 public:
  // Binds the listening sockets (so the port is known and taken) without serving yet.
  static absl::StatusOr<std::unique_ptr<Proxy>> Create(const ProxyOptions& options, router::RoutingTableCell* routing);
  ~Proxy();

  uint16_t port() const;
  // Starts the I/O threads: from here on it serves.
  void Start();
  // Stops accepting, closes idle connections, and lets requests in flight finish for up to `timeout`.
  // Blocks until they finished or the time ran out; returns how many were still in flight.
  int Drain(std::chrono::milliseconds timeout);
  // Stops the I/O threads; requests still in flight are dropped.
  void Stop();
  int in_flight() const;

 private:
  class Impl;
  explicit Proxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::proxy
