// The replica host: the process that holds one instance of a deployment and serves frames on a Unix
// domain socket. The node agent starts it as `ferry replica --spec FILE --socket PATH --status-fd N --log-fd N`.
// Its standard output and error are pipes that the node reads and logs line by line (see NodeAgent).
#pragma once

#include <absl/status/statusor.h>
#include <nlohmann/json.hpp>
#include <string>

#include "common/common.h"
#include "spec/spec.h"

namespace ferry::replica {

// What a replica process is told to run (src/spec).
using ReplicaSpec = spec::ReplicaSpec;

struct ReplicaOptions {
  std::string spec_path;
  std::string socket_path;
  int status_fd = -1;  // the replica writes one JSON line here: {"ready":true} or {"error":"..."}
  int log_fd = -1;     // where its log lines go (the node's standard error); -1: its own standard error
};

// Runs a replica until SIGTERM (drains, then exits) or SIGKILL. Returns the process exit code.
int RunReplica(const ReplicaOptions& options);

}  // namespace ferry::replica
