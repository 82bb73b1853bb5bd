// One request inside the replica, from its frame's arrival to its answer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "replica/internal/deployment_host.h"
#include "tracing/tracing.h"
#include "transport/frame.h"

namespace ferry::replica {

class ClientConnection;

// A traced request's spans here: "ferry.replica" from its frame's arrival to its answer, and the user
// code's inside it. The user code sees a `traceparent` naming its own span, so that what it calls joins
// the trace.
struct TaskTrace {
  tracing::SpanContext parent;  // the caller's span
  uint64_t replica_span = 0;
  uint64_t user_span = 0;
  int64_t arrived_ns = 0;
  int64_t user_start_ns = 0;
  int64_t user_end_ns = 0;
  int64_t prepare_start_ns = 0;  // the deployment's prepare(), when it ran (batched deployments)
  int64_t prepare_end_ns = 0;
  std::string traceparent;  // the value the user code sees
};

struct Task {
  std::string payload;  // owns the bytes `request` points into
  transport::RequestMessage request;
  uint64_t stream_id = 0;
  std::atomic<bool> cancelled{false};  // set by a cancel frame, or when the client goes away
  std::shared_ptr<ClientConnection> connection;
  std::unique_ptr<TaskTrace> trace;  // null: not traced
  // What the deployment's prepare() made of the request as it arrived (batched deployments); released
  // with the task, after its answer.
  void* prepared = nullptr;
  DeploymentHost* host = nullptr;

  Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (prepared) host->Release(prepared);
  }
};

using TaskPtr = std::shared_ptr<Task>;

}  // namespace ferry::replica
