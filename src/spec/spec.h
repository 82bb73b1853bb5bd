// What a replica is told to run, and the options the control plane and the replica share: the one place
// where each of these options has its default. The config (YAML) reads into these types, the controller
// puts them in a ReplicaSpec or a reconfigure frame, the node agent writes the spec for the replica, and
// the replica decodes it with the decoders here. Depends on common only, so the control plane can speak
// specs without linking the replica host.
// Thread-compatible: plain values.
#pragma once

#include <absl/status/statusor.h>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/common.h"

namespace ferry::spec {

// Ray Serve's logging_config. A deployment's replaces its application's, which replaces the top level's
// (whole, not field by field, as Ray Serve's dict options are).
struct LoggingConfig {
  LogEncoding encoding = LogEncoding::kText;
  LogLevel log_level = LogLevel::kInfo;
  bool enable_access_log = true;
  bool operator==(const LoggingConfig&) const = default;
};

// ferry's tracing: spans of sampled requests go to an OTLP/HTTP collector. Top level only.
struct TracingConfig {
  std::string otlp_endpoint;  // http://host:4318/v1/traces
  double sampling_ratio = 0.01;
  bool operator==(const TracingConfig&) const = default;
};

// Ray Serve's @serve.batch parameters, plus ferry's adaptive wait.
struct BatchingConfig {
  int max_batch_size = 10;
  double batch_wait_timeout_s = 0.01;
  int max_concurrent_batches = 1;
  bool adaptive = false;  // ferry: wait only as long as the next requests are likely to take to arrive
  bool operator==(const BatchingConfig&) const = default;
};

// What a replica process is told to run. Written by the node agent as JSON, read by the replica.
// Where a replica may run in cluster mode: Ray's ray_actor_options resources, placement group and per-node
// limit, and node labels (cluster/placement.h applies them). A single node ignores it.
struct PlacementSpec {
  std::map<std::string, double> resources = {{"CPU", 1}};  // "CPU", "GPU", "memory" (bytes), custom names
  std::vector<std::map<std::string, double>> bundles;      // placement_group_bundles (the replica in bundle 0)
  std::string strategy = "PACK";                           // placement_group_strategy
  std::optional<int> max_replicas_per_node;
  std::map<std::string, std::string> label_selector;  // every label must match the node's

  bool operator==(const PlacementSpec&) const = default;
};

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
  std::optional<BatchingConfig> batching;  // none: not batched
  LoggingConfig logging;
  std::optional<TracingConfig> tracing;  // none: no spans
  // Cluster mode: also serve frames on TCP at this IP (port chosen by the kernel), for other nodes' proxies
  // and handles. Empty: the Unix socket only.
  std::string tcp_host;
  std::string version;      // the deployment's code version (a new leader adopting it compares it)
  PlacementSpec placement;  // cluster mode: where it may run
};

// What changes in a running replica without a restart (a reconfigure frame). Each field is optional: only
// what is set changes.
struct ReplicaUpdate {
  std::optional<nlohmann::json> user_config;
  std::optional<int> max_ongoing_requests;
  std::optional<LoggingConfig> logging;
  std::optional<std::optional<TracingConfig>> tracing;  // set to none: tracing off

  bool empty() const { return !user_config && !max_ongoing_requests && !logging && !tracing; }
};

// The JSON shape of each (as in the YAML config, and in reconfigure frames).
nlohmann::json ToJson(const LoggingConfig& logging);
nlohmann::json ToJson(const TracingConfig& tracing);
nlohmann::json ToJson(const BatchingConfig& batching);
nlohmann::json ToJson(const ReplicaSpec& spec);
nlohmann::json ToJson(const PlacementSpec& placement);
// {"user_config", "max_ongoing_requests", "logging_config", "tracing"}, each only when set.
nlohmann::json ToJson(const ReplicaUpdate& update);

// Decoders: fields left out take the defaults above; a field of the wrong type is an error naming it.
absl::StatusOr<LoggingConfig> LoggingFromJson(const nlohmann::json& json);
absl::StatusOr<TracingConfig> TracingFromJson(const nlohmann::json& json);
absl::StatusOr<BatchingConfig> BatchingFromJson(const nlohmann::json& json);
absl::StatusOr<ReplicaSpec> ReplicaSpecFromJson(const nlohmann::json& json);
absl::StatusOr<ReplicaUpdate> ReplicaUpdateFromJson(const nlohmann::json& json);

}  // namespace ferry::spec
