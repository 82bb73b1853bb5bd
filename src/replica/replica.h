// The replica host: the process that holds one instance of a deployment and serves frames on a Unix
// domain socket. The node agent starts it as `ferry replica --spec FILE --socket PATH --status-fd N --log-fd N`.
// Its standard output and error are pipes that the node reads and logs line by line (see NodeAgent).
#pragma once

#include <absl/status/statusor.h>
#include <nlohmann/json.hpp>
#include <string>

#include "common/common.h"

namespace ferry::replica {

// What a replica process is told to run. Written by the node agent as JSON, read by the replica.
struct ReplicaSpec {
  std::string replica_id;
  std::string application;
  std::string deployment;
  std::string import_path;
  bool builtin = true;
  std::string plugin_path;  // for plugins
  std::string symbol;       // built-in name or plugin class name
  nlohmann::json args = nlohmann::json::object();
  nlohmann::json user_config;  // null: none
  int max_ongoing_requests = 5;
  double num_cpus = 1;
  double graceful_shutdown_timeout_s = 20;
  nlohmann::json batching;  // null: not batched; else {max_batch_size, batch_wait_timeout_s, ...}
  nlohmann::json logging;   // {encoding, log_level, enable_access_log}; null: the defaults (TEXT, INFO)
  nlohmann::json tracing;   // {otlp_endpoint, sampling_ratio}; null: no spans

  nlohmann::json ToJson() const;
  static absl::StatusOr<ReplicaSpec> FromJson(const nlohmann::json& json);
};

struct ReplicaOptions {
  std::string spec_path;
  std::string socket_path;
  int status_fd = -1;  // the replica writes one JSON line here: {"ready":true} or {"error":"..."}
  int log_fd = -1;     // where its log lines go (the node's standard error); -1: its own standard error
};

// Reads a spec's or a reconfigure frame's `logging` object ({encoding, log_level, ...}; null: TEXT, INFO).
absl::Status ParseLogging(const nlohmann::json& logging, LogEncoding* encoding, LogLevel* level);

// Runs a replica until SIGTERM (drains, then exits) or SIGKILL. Returns the process exit code.
int RunReplica(const ReplicaOptions& options);

}  // namespace ferry::replica
