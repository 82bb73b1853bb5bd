// The controller's picture of the world: what each application, deployment and replica is and where it
// stands. Shared by the controller's two halves (controller.cc: the API; reconcile.cc: the loop).
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "controller/autoscaling_policy.h"
#include "controller/controller.h"

namespace ferry::controller {

using SteadyTime = Clock::TimePoint;  // from the controller's Clock

struct Controller::Replica {
  std::string id;
  std::string version;
  ReplicaState state = ReplicaState::kStarting;
  bool recovering = false;  // started to bring back state after a node restart
  bool ready = false;       // the process constructed its deployment
  pid_t pid = -1;
  double start_time_s = 0;
  SteadyTime started;
  node::ReplicaLocation location;  // cluster mode: its node
  // Its endpoint, once ready: published as serving while `routed`, then as draining while `draining`,
  // from snapshot `unrouted_version` on, until the process exits.
  std::optional<endpoints::Endpoint> endpoint;
  bool routed = false;
  bool draining = false;
  uint64_t unrouted_version = 0;

  // Health: the controller's own deadline for each check, since a hung replica never answers.
  bool health_outstanding = false;
  uint64_t health_token = 0;
  SteadyTime health_deadline;
  SteadyTime next_health;
  int health_failures = 0;  // in a row

  // What was applied in place (at start, then by reconfigure).
  nlohmann::json applied_user_config;
  int applied_max_ongoing = 0;
  spec::LoggingConfig applied_logging;
  std::optional<spec::TracingConfig> applied_tracing;  // none: off
  bool update_outstanding = false;
  uint64_t update_token = 0;
  // The deployment's in_place_generation this replica was last compared with: equal means nothing to
  // apply, so a steady tick compares no configs.
  uint64_t checked_generation = 0;

  // Stats (for /metrics): polled every second while it runs.
  bool stats_outstanding = false;
  SteadyTime stats_sent;
  SteadyTime next_stats;
  std::optional<node::ReplicaStats> stats;

  // Stopping: out of routing first, SIGTERM once its last request is done (or the drain time is up).
  bool stop_sent = false;
  SteadyTime drain_deadline;
};

struct Controller::Deployment {
  std::string application;
  std::string key;  // "app/name"
  config::DeploymentConfig target;
  std::string version;  // of target's code: import path, args, resources, plugin file contents
  bool set_changed = false;
  // Grows whenever an apply may have changed what replicas take in place (user_config, limits, logging,
  // tracing).
  uint64_t in_place_generation = 1;  // its endpoint set must be published again (queued in changed_sets_)
  // The data plane's load on it, summed over the consumers' last reports.
  int queued = 0;
  int ongoing = 0;
  std::vector<std::pair<uint64_t, int>> in_flight;  // by endpoint key, nonzero only
  int InFlight(uint64_t key) const {
    for (const auto& [k, n] : in_flight)
      if (k == key) return n;
    return 0;
  }
  std::map<std::string, Replica> replicas;
  bool deleting = false;
  bool recovering = false;

  // Set while a replica of it fits on no node (cluster mode): Ray's message, shown as the status's.
  std::string unschedulable;
  int start_failures = 0;  // in a row, for the current version
  bool version_failed = false;
  int crash_streak = 0;  // running replicas lost in a row; drives the restart backoff
  SteadyTime backoff_until;
  bool unhealthy = false;  // lost a running replica; cleared when back at target
  int restarts = 0;
  int health_check_failures = 0;
  uint64_t starts = 0;       // replica processes started, ever (for metrics)
  uint64_t cold_starts = 0;  // starts from zero replicas with requests waiting
  std::string message;
  DeploymentStatus status = DeploymentStatus::kUpdating;
  bool reached_target = false;  // the current version has run at its target once

  // Autoscaling (when target.autoscaling_config is set).
  std::unique_ptr<AutoscalingPolicy> autoscaler;
  int autoscaled_replicas = 0;
  std::deque<nlohmann::json> decisions;  // the latest, newest last
  std::optional<SteadyTime> cold_start_began;
  double last_cold_start_s = -1;

  int TargetReplicas() const { return autoscaler ? autoscaled_replicas : target.num_replicas; }
  int RoutedReplicas() const {
    int n = 0;
    for (const auto& [id, r] : replicas) n += r.routed ? 1 : 0;
    return n;
  }
};

struct Controller::Application {
  config::ApplicationConfig config;
  bool deleting = false;
  double last_deployed_time_s = 0;
  ApplicationStatus status = ApplicationStatus::kNotStarted;
  std::string message;
  // The traceback of the last config of this application whose code did not import or build; cleared by
  // the next one that does. While set the application is DEPLOY_FAILED, and `config` is what still runs.
  std::string build_error;
};

// A deployment's code version: changes when anything that needs a new process changes.
std::string DeploymentVersion(const config::DeploymentConfig& d);

}  // namespace ferry::controller
