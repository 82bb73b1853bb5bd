// The seam between the controller and the machines that run replicas: what the controller asks of them
// (ReplicaLauncher) and what they tell it (ReplicaListener), in the serving domain's terms. NodeAgent is
// the single-node implementation; cluster mode puts remote agents behind the same calls, and the
// controller's tests and benchmark a simulated one. Depends on the spec only: the control plane speaks
// it without linking the replica host or the frame codec.
#pragma once

#include <sys/types.h>

#include <absl/status/statusor.h>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "metrics/metrics.h"
#include "spec/spec.h"

namespace ferry::node {

// A histogram as counts per bucket (the metrics' bucket bounds) and the sum of what was observed.
struct HistogramCounts {
  std::vector<uint64_t> counts;
  double sum = 0;
};

// Calls a replica made through handles to one deployment, since it started.
struct CallStats {
  std::string callee;  // "app/name"
  uint64_t ok = 0;     // answered below 500
  uint64_t errors = 0;
  HistogramCounts latency_seconds;  // per call, the metrics' latency buckets
};

// What a replica reports of itself since it started.
struct ReplicaStats {
  uint64_t requests_total = 0;
  HistogramCounts processing_seconds;             // per request, handle() or its share of a batch
  HistogramCounts batch_size;                     // per batch run
  uint64_t spans_exported = 0;                    // its spans sent to the collector
  uint64_t spans_dropped = 0;                     // and dropped (queue full, collector down)
  std::vector<CallStats> calls;                   // through handles, by callee (replicas that hold handles)
  std::vector<metrics::UserMetric> user_metrics;  // the deployment's own (ray.serve.metrics)
  std::vector<std::string> model_ids;             // multiplexed models it has loaded (sorted)
};

class ReplicaListener {
 public:
  virtual ~ReplicaListener() = default;
  // The replica constructed its deployment and listens on `socket_path`, and on `tcp_address`
  // (tcp://IP:PORT, for other nodes) when its spec asked for TCP (else empty).
  virtual void OnReplicaReady(const std::string& replica_id, const std::string& socket_path,
                              const std::string& tcp_address, pid_t pid) = 0;
  // The replica process ended. `message` is the constructor's error when it failed before getting ready,
  // else how it exited ("killed by signal 9", "exited with code 1").
  virtual void OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) = 0;
};

// A replica a launcher runs already when a controller takes over (cluster mode: started at a previous
// leader's request and still alive on its node). The controller adopts it rather than start another.
struct ExistingReplica {
  spec::ReplicaSpec spec;  // as it was started: its deployment and version
  bool ready = false;
  std::string address;      // where this node reaches it (a socket path or tcp://), once ready
  std::string tcp_address;  // where other nodes reach it
  pid_t pid = -1;
};

// Where a replica runs: empty on one node (the controller's own).
struct ReplicaLocation {
  std::string node_id;
  std::string node_ip;
};

// What the controller asks of the machine that runs replicas. NodeAgent is the single-node implementation;
// cluster mode puts remote agents behind the same calls, and the controller's benchmark a simulated one.
// Callbacks run on the controller's thread.
class ReplicaLauncher {
 public:
  using Done = std::function<void(const absl::Status&)>;
  virtual ~ReplicaLauncher() = default;
  // Starts a replica; ResourceExhausted when it fits on no node now (its message says what it needs and
  // what the closest node lacks): the controller tries again later rather than count a failed start.
  virtual absl::Status StartReplica(const spec::ReplicaSpec& spec) = 0;
  // SIGTERM now (the replica finishes what it has), SIGKILL after `timeout`.
  virtual void StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) = 0;
  // Runs the replica's check_health. `done` may never run if the replica hangs: callers keep their own
  // deadline.
  virtual void CheckHealth(const std::string& replica_id, Done done) = 0;
  // Applies what `update` sets (user_config, max_ongoing_requests, logging, tracing) in place.
  virtual void Reconfigure(const std::string& replica_id, const spec::ReplicaUpdate& update, Done done) = 0;
  // The replica's counters and histograms (processing time, batch sizes) since it started.
  using StatsDone = std::function<void(absl::StatusOr<ReplicaStats>)>;
  virtual void GetStats(const std::string& replica_id, StatsDone done) = 0;
  virtual size_t live_replicas() const = 0;
  // SIGKILL every replica; for a node that is going away.
  virtual void KillAll() = 0;
  // Replicas running already, for a controller that takes over (Restore adopts them).
  virtual std::vector<ExistingReplica> Existing() { return {}; }
  // The replica must move (its node is draining): the controller starts a replacement elsewhere first, as
  // in a rolling update, then stops it.
  virtual bool Evicting(const std::string& replica_id) const {
    (void)replica_id;
    return false;
  }
  // Where the replica runs (or will); empty fields: the controller's own node.
  virtual ReplicaLocation LocationOf(const std::string& replica_id) const {
    (void)replica_id;
    return {};
  }
};

}  // namespace ferry::node
