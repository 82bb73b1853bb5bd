// The replica's spans: for a request that arrives with a sampled `traceparent`, "ferry.replica" from its
// frame's arrival to its answer, the user code's span inside it ("<deployment>.handle" or
// ".handle_batch"), and the deployment's prepare() when it ran.
// Thread-safe: the tracer is; each TaskTrace belongs to its task.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "replica/internal/task.h"
#include "replica/replica.h"

namespace ferry::tracing {
class Tracer;
}

namespace ferry::replica {

class SpanRecorder {
 public:
  // `tracer` may be null: nothing is recorded.
  SpanRecorder(const ReplicaSpec& spec, tracing::Tracer* tracer) : spec_(spec), tracer_(tracer) {}

  bool enabled() const;
  // Starts the trace of `task` when its request carries a sampled traceparent, whose value it rewrites to
  // name the user code's span. Untraced requests are left alone.
  void Start(Task& task) const;
  // Records the spans of a traced task that was just answered with `status`; `batch_size` 0 for handle(),
  // `answered_ns` when its answer was handed to the connection.
  void End(const Task& task, int status, size_t batch_size, int64_t answered_ns) const;

 private:
  const ReplicaSpec& spec_;
  tracing::Tracer* tracer_;
};

}  // namespace ferry::replica
