// The replica's frame server. Built for the shortest path from a request frame to its answer: a pool of
// max_ongoing_requests + 1 threads shares one epoll set; the thread that reads a connection's bytes re-arms
// the connection for the next reader, keeps one request to run itself (no hand-off to another thread), and
// queues any others for idle threads. At most max_ongoing_requests run at once, so one thread is always
// free to read (cancels above all). Answers are written by group commit: a writer appends its frame;
// whoever finds no flush in progress writes everything pending in one syscall.
// Thread-safe: Run() blocks the calling thread; RequestStop() may be called from any thread.
#pragma once

#include <absl/status/status.h>
#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "replica/internal/deployment_host.h"
#include "replica/replica.h"

namespace ferry::tracing {
class Tracer;
}

namespace ferry::replica {

// Applies a logging_config's encoding and level to this process.
void ApplyLogging(const spec::LoggingConfig& logging);
// Configures `tracer` (none: off). No-op without a tracer.
absl::Status ApplyTracing(tracing::Tracer* tracer, const std::optional<spec::TracingConfig>& tracing);

class ReplicaServer {
 public:
  // `tracer` (may be null) records the spans of requests that arrive with a sampled `traceparent`: the
  // replica's and the user code's. Reconfigure frames may change its settings and the log settings.
  ReplicaServer(const ReplicaSpec& spec, DeploymentHost& host, tracing::Tracer* tracer = nullptr);
  ~ReplicaServer();

  // Binds and listens on `path` (replacing a stale socket file).
  absl::Status Listen(const std::string& path);
  // Serves until RequestStop; then stops accepting, waits up to graceful_shutdown_timeout_s for requests
  // in flight to finish, and returns.
  void Run();
  // Async-signal-safe.
  void RequestStop();

  uint32_t ongoing() const;
  uint64_t total() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::replica
