// A replica launcher without processes, for the controller's tests and its benchmark: replicas start,
// get ready, fail and exit when the test says so; health checks and reconfigures answer at once.
// Not thread-safe: like the controller, one thread.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "node/launcher.h"

namespace ferry::testing {

class FakeLauncher : public node::ReplicaLauncher {
 public:
  explicit FakeLauncher(node::ReplicaListener* listener) : listener_(listener) {}

  absl::Status StartReplica(const spec::ReplicaSpec& spec) override {
    started.push_back(spec);
    live_.insert(spec.replica_id);
    pending_ready_.push_back(spec.replica_id);
    return absl::OkStatus();
  }
  void StopReplica(const std::string& replica_id, std::chrono::milliseconds) override {
    stopped.push_back(replica_id);
    if (live_.count(replica_id)) pending_exit_.insert(replica_id);
  }
  void CheckHealth(const std::string& replica_id, Done done) override {
    ++health_checks;
    if (hung.count(replica_id)) return;  // never answers: the caller's deadline must catch it
    done(unhealthy.count(replica_id) ? absl::UnavailableError("told to be unhealthy") : absl::OkStatus());
  }
  void Reconfigure(const std::string& replica_id, const spec::ReplicaUpdate& update, Done done) override {
    reconfigures.emplace_back(replica_id, spec::ToJson(update));
    done(fail_reconfigure ? absl::InvalidArgumentError("bad user_config") : absl::OkStatus());
  }
  void GetStats(const std::string& replica_id, StatsDone done) override {
    if (!live_.count(replica_id)) return done(absl::NotFoundError("not running"));
    node::ReplicaStats stats;
    stats.requests_total = 7;
    stats.processing_seconds = {{1, 2}, 0.5};
    stats.batch_size = {{3}, 3};
    done(stats);
  }
  size_t live_replicas() const override { return live_.size(); }
  void KillAll() override { live_.clear(); }

  // Replicas started since the last call report ready (or, with `error`, fail in their constructor).
  void FinishStarts(const std::string& error = "") {
    std::vector<std::string> ids;
    ids.swap(pending_ready_);
    for (const auto& id : ids) {
      if (!live_.count(id)) continue;
      if (error.empty()) {
        listener_->OnReplicaReady(id, "/nonexistent/" + id, "", 1000 + static_cast<pid_t>(started.size()));
      } else {
        live_.erase(id);
        listener_->OnReplicaExited(id, false, error);
      }
    }
  }
  // Replicas asked to stop exit.
  void FinishStops() {
    std::set<std::string> ids;
    ids.swap(pending_exit_);
    for (const auto& id : ids) {
      live_.erase(id);
      listener_->OnReplicaExited(id, true, "exited with code 0");
    }
  }
  // A running replica dies.
  void Crash(const std::string& id) {
    live_.erase(id);
    listener_->OnReplicaExited(id, true, "killed by signal 9 (Killed)");
  }
  const std::set<std::string>& live() const { return live_; }

  std::vector<spec::ReplicaSpec> started;
  std::vector<std::string> stopped;
  std::vector<std::pair<std::string, nlohmann::json>> reconfigures;
  std::set<std::string> unhealthy;
  std::set<std::string> hung;  // replicas whose health checks never answer
  bool fail_reconfigure = false;
  int health_checks = 0;

 private:
  node::ReplicaListener* listener_;
  std::set<std::string> live_;
  std::vector<std::string> pending_ready_;
  std::set<std::string> pending_exit_;
};

}  // namespace ferry::testing
