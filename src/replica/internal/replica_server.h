// The replica's server: requests from its frame socket run on the deployment, one by one or in batches;
// health checks and reconfigures on a control thread of their own; stats answered from its counters.
// Three parts do the work: FrameServer (frame_server.h: the socket, its connections, group-commit writes),
// Executor (executor.h: which thread runs which request, at most max_ongoing_requests at once) and
// SpanRecorder (span_recorder.h: the replica's spans of traced requests). This class joins them.
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
  // `handles` (may be null) is the process's handle client: the node agent's connection feeds it endpoint
  // snapshots once it wants them, and reads its load.
  ReplicaServer(const ReplicaSpec& spec, DeploymentHost& host, tracing::Tracer* tracer = nullptr,
                handle::HandleClient* handles = nullptr);
  ~ReplicaServer();

  // Binds and listens on `path` (replacing a stale socket file).
  absl::Status Listen(const std::string& path);
  // Also serves on TCP at `host` (a numeric IP), any free port; after Listen. The port bound.
  absl::StatusOr<uint16_t> ListenTcp(const std::string& host);
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
