// The controller: holds the desired state (the applied config), compares it with the replicas the node
// agent reports, and acts: starts missing replicas, replaces dead ones with backoff, stops them on
// shutdown. It publishes the routing table the data plane reads and adds replicas to their deployment's
// router when they get ready. Not thread-safe: every call, and every callback, on its io_context.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "config/config.h"
#include "controller/internal/health_checker.h"
#include "node/node_agent.h"
#include "router/routing_table.h"

namespace ferry::controller {

struct ControllerCallbacks {
  // Start-up progress, one line such as "echo/Echo: 1/2 replicas ready".
  std::function<void(const std::string& line)> on_progress;
  // Every replica of every deployment is ready for the first time.
  std::function<void()> on_all_ready;
  // A deployment could not start (its constructor threw, its replica died before getting ready).
  std::function<void(const std::string& deployment, const std::string& message)> on_deploy_failed;
};

enum class ReplicaState { kStarting, kRunning, kStopping };
const char* ReplicaStateName(ReplicaState state);

class Controller : public node::ReplicaListener {
 public:
  static absl::StatusOr<std::unique_ptr<Controller>> Create(boost::asio::io_context& io, const config::Config& config,
                                                            std::string ferry_binary, std::string run_dir,
                                                            router::RoutingTableCell* routing,
                                                            ControllerCallbacks callbacks);
  ~Controller() override;

  // Publishes the routing table and starts every deployment's replicas.
  void Deploy();
  // Takes every replica out of routing, asks each to drain (SIGTERM) and kills what is left after its
  // deployment's graceful_shutdown_timeout_s. `done` runs once all replicas have exited.
  void Shutdown(std::function<void()> done);

  // Replicas ever started to replace one that died or failed its health checks.
  int restarts(const std::string& application, const std::string& deployment) const;
  int health_check_failures(const std::string& application, const std::string& deployment) const;
  int running_replicas(const std::string& application, const std::string& deployment) const;

  void OnReplicaReady(const std::string& replica_id, const std::string& socket_path, pid_t pid) override;
  void OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) override;

 private:
  struct Replica {
    std::string id;
    ReplicaState state = ReplicaState::kStarting;
    std::shared_ptr<const router::ReplicaEndpoint> endpoint;
    std::shared_ptr<HealthChecker> health;
    std::chrono::steady_clock::time_point started;
  };
  struct Deployment {
    std::string application;
    config::DeploymentConfig config;
    std::shared_ptr<router::Router> router;
    std::map<std::string, Replica> replicas;
    int consecutive_failures = 0;
    int restarts = 0;
    int health_check_failures = 0;
    bool ever_ready = false;
    std::unique_ptr<boost::asio::steady_timer> backoff;
  };
  Controller(boost::asio::io_context& io, const config::Config& config, router::RoutingTableCell* routing,
             ControllerCallbacks callbacks);
  void Reconcile(Deployment& d);
  void StartReplica(Deployment& d);
  Deployment* FindByReplica(const std::string& replica_id);
  void ReportProgress(const Deployment& d);
  void OnUnhealthy(const std::string& replica_id, const std::string& message);
  void CheckShutdownDone();

  boost::asio::io_context& io_;
  config::Config config_;
  router::RoutingTableCell* routing_;
  ControllerCallbacks callbacks_;
  std::unique_ptr<node::NodeAgent> agent_;
  std::map<std::string, std::unique_ptr<Deployment>> deployments_;  // by "app/deployment"
  std::map<std::string, Deployment*> by_replica_;
  uint64_t next_key_ = 1;
  bool all_ready_reported_ = false;
  bool failed_ = false;
  bool shutting_down_ = false;
  std::function<void()> shutdown_done_;
};

}  // namespace ferry::controller
