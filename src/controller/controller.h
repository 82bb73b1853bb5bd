// The controller: holds the desired state (the applied config), compares it with the replicas the node
// agent reports on every tick, and acts to converge: starts missing replicas, rolls deployments to new
// versions (new replicas pass check_health before old ones stop taking traffic and drain), applies
// num_replicas, max_ongoing_requests and user_config in place, replaces replicas that crash or fail health
// checks, and deletes what left the config. Its output is data: it publishes each deployment's endpoint set
// and the route table through a Publisher, and never holds a router; the data plane keeps serving on the
// last snapshot whatever the controller is doing. What it knows of traffic (load for autoscaling, requests
// still in flight on a draining replica) comes from the consumers' reports.
// Not thread-safe: every call, and every callback, on its io_context's thread.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "config/config.h"
#include "controller/state_store.h"
#include "endpoints/endpoints.h"
#include "node/launcher.h"

namespace ferry::tracing {
class Tracer;
}

namespace ferry::controller {

// Statuses as Ray Serve names them.
enum class ApplicationStatus { kNotStarted, kDeploying, kRunning, kDeployFailed, kUnhealthy, kDeleting };
enum class DeploymentStatus { kUpdating, kHealthy, kUnhealthy, kUpscaling, kDownscaling, kDeployFailed };
enum class ReplicaState { kStarting, kUpdating, kRecovering, kRunning, kStopping };
const char* ApplicationStatusName(ApplicationStatus status);
const char* DeploymentStatusName(DeploymentStatus status);
const char* ReplicaStateName(ReplicaState state);

struct ControllerCallbacks {
  // Start-up progress, one line such as "echo/Echo: 1/2 replicas ready".
  std::function<void(const std::string& line)> on_progress;
  // Every deployment of the applied config reached its target (once per Apply that changed something).
  std::function<void()> on_all_ready;
  // Something failed to start: "deployment app/name" (a replica's constructor threw, or it died or timed
  // out before getting ready), or "application app" (its Python code did not import or build).
  std::function<void(const std::string& what, const std::string& message)> on_start_failure;
};

struct ControllerOptions {
  std::chrono::milliseconds tick{100};
  size_t history_per_application = 20;
  // Where the controller runs, for the status's controller_info and replicas (cluster mode; empty on one
  // node: "local").
  std::string node_id;
  std::string node_ip;
  // Cluster mode: replicas also serve frames on TCP at this IP, so other nodes' proxies reach them.
  std::string replica_tcp_host;
  // This process's tracer, configured from the config's `tracing` on every apply; null: not traced.
  tracing::Tracer* tracer = nullptr;
  // Where time comes from: restart backoff, start and health-check deadlines, drains, autoscaling delays.
  // Tests pass a fake clock and call Tick() themselves, so all of it runs in simulated time.
  const Clock* clock = Clock::Real();
};

// What the controller knows, as values: what the admin API renders as Ray's status document and the
// metrics side as Prometheus text, off the controller's thread. Taken by Controller::Snapshot().
struct ReplicaView {
  std::string replica_id;
  ReplicaState state = ReplicaState::kStarting;
  pid_t pid = -1;  // -1: not known yet
  double start_time_s = 0;
  std::string version;
  std::optional<int> in_flight;  // requests the data plane has on it; none: never routable
  std::optional<node::ReplicaStats> stats;
  std::string node_id;  // cluster mode: where it runs (empty: the controller's node)
  std::string node_ip;
};

struct AutoscalingView {
  int target_replicas = 0;
  int min_replicas = 0;
  int max_replicas = 0;
  double average_load = 0;
  std::optional<double> last_cold_start_s;
  std::vector<nlohmann::json> decisions;  // the latest, newest last
};

struct DeploymentView {
  std::string application;
  std::string name;
  bool in_config = true;  // false: it left its application's config and is being deleted
  DeploymentStatus status = DeploymentStatus::kUpdating;
  std::string message;
  std::string version;
  int target_replicas = 0;
  bool batching = false;
  std::vector<ReplicaView> replicas;
  int restarts = 0;
  int health_check_failures = 0;
  int ongoing_requests = 0;
  int queued_requests = 0;
  uint64_t starts = 0;
  uint64_t cold_starts = 0;
  std::optional<AutoscalingView> autoscaling;  // none: num_replicas
};

struct ApplicationView {
  std::string name;
  std::string route_prefix;
  ApplicationStatus status = ApplicationStatus::kNotStarted;
  std::string message;
  double last_deployed_time_s = 0;
  nlohmann::json deployed_app_config;
  std::vector<DeploymentView> deployments;  // in config order, then those being deleted
};

struct ControllerSnapshot {
  pid_t pid = 0;
  std::string node_id;  // ControllerOptions'
  std::string node_ip;
  std::vector<ApplicationView> applications;  // by name
  std::optional<config::HttpOptions> http_options;
  // The node's own spans (proxy and queue), when it has a tracer.
  std::optional<uint64_t> spans_exported;
  std::optional<uint64_t> spans_dropped;
};

class Controller : public node::ReplicaListener {
 public:
  using LauncherFactory = std::function<std::unique_ptr<node::ReplicaLauncher>(node::ReplicaListener*)>;

  // A controller whose replicas are processes of `ferry_binary`, started by a NodeAgent in `run_dir`.
  // `publisher` carries what it publishes to the data plane and the data plane's reports back; `store`
  // (may be null: nothing persisted) keeps the desired state. Both must outlive the controller.
  static absl::StatusOr<std::unique_ptr<Controller>> Create(boost::asio::io_context& io, std::string ferry_binary,
                                                            std::string run_dir, endpoints::Publisher* publisher,
                                                            StateStore* store, ControllerCallbacks callbacks,
                                                            ControllerOptions options = {});
  // A controller over any launcher (a simulated cluster, a test double).
  static std::unique_ptr<Controller> CreateWithLauncher(boost::asio::io_context& io,
                                                        const LauncherFactory& make_launcher,
                                                        endpoints::Publisher* publisher, StateStore* store,
                                                        ControllerCallbacks callbacks, ControllerOptions options = {});
  ~Controller() override;

  // Makes `config` the desired state, as Ray Serve's PUT does: applications left out are deleted, unchanged
  // ones are untouched. Records each changed application's previous config in its history and saves the
  // state. The config must have passed validation.
  absl::Status Apply(const config::Config& config);
  // Loads the state store and applies what it holds (replicas start as RECOVERING). OK when it is empty.
  absl::Status Restore();
  // Returns `application` to the config it had before its last change.
  absl::Status Rollback(const std::string& application);
  // Deletes every application.
  absl::Status DeleteAll();
  // Starts the periodic reconcile.
  void Start();
  // One reconcile pass over every deployment (the timer calls it; benchmarks call it directly).
  void Tick();
  // Takes every replica out of routing, drains and stops them; `done` runs once all have exited.
  void Shutdown(std::function<void()> done);
  // As Shutdown, then forgets every application without saving (the desired state stays in the store),
  // ready to Restore again: a cluster node that no longer leads.
  void StandDown(std::function<void()> done);

  // What it knows now, as values (the admin API renders status and metrics from it).
  ControllerSnapshot Snapshot() const;
  nlohmann::json HistoryJson() const;
  const std::optional<config::Config>& applied_config() const { return applied_; }
  ApplicationStatus application_status(const std::string& application) const;
  size_t replica_count() const { return by_replica_.size(); }

  void OnReplicaReady(const std::string& replica_id, const std::string& socket_path, const std::string& tcp_address,
                      pid_t pid) override;
  void OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) override;

 private:
  struct Replica;
  struct Deployment;
  struct Application;
  struct HistoryEntry {
    double time_s;
    nlohmann::json config;  // ToJson(ApplicationConfig)
  };

  Controller(boost::asio::io_context& io, endpoints::Publisher* publisher, StateStore* store,
             ControllerCallbacks callbacks, ControllerOptions options);
  absl::Status ApplyInternal(const config::Config& config, bool recovering, bool record_history);
  void ReconcileDeployment(Deployment& d, std::chrono::steady_clock::time_point now);
  void Autoscale(Deployment& d, std::chrono::steady_clock::time_point now);
  // False when it could not (fits on no node now, or failed to start): start no more this tick.
  bool StartReplica(Deployment& d);
  // Takes over the replicas the launcher runs already (a new leader's), for deployments of the restored
  // state; stops the others.
  void AdoptExisting();
  void BeginStop(Deployment& d, Replica& r, std::chrono::steady_clock::time_point now);
  void AdvanceHealth(Deployment& d, Replica& r, std::chrono::steady_clock::time_point now);
  void PollStats(Replica& r, std::chrono::steady_clock::time_point now);
  void AdvanceUpdate(Deployment& d, Replica& r);
  void OnHealthResult(uint64_t token, const absl::Status& status);
  void MarkRunning(Deployment& d, Replica& r);
  // A ready replica's endpoint, with a new key.
  endpoints::Endpoint NewEndpoint(const Replica& r, const std::string& address, const std::string& tcp_address);
  void RecordStartFailure(Deployment& d, const std::string& message);
  void UpdateStatuses();
  // The consumers' reports: each deployment's load and in-flight counts, and the oldest snapshot in use.
  void CollectReports();
  // Whether no consumer can still send `r` a request or has one in flight on it.
  bool Drained(const Deployment& d, const Replica& r) const;
  // Marks what a publish must rebuild: a deployment's endpoint set, or the route table.
  void SetChanged(Deployment& d);
  // Publishes a new snapshot when a set or the route table changed since the last one.
  void PublishIfChanged();
  std::shared_ptr<const endpoints::EndpointSet> BuildEndpointSet(const Deployment& d, uint64_t version) const;
  std::shared_ptr<const endpoints::RouteTable> BuildRouteTable() const;
  // The top level's logging_config for this process's own lines, and `tracing` for its tracer.
  void ApplyNodeObservability(const config::Config& config);
  // What a replica of `d` is told about logs and traces (at start, and by reconfigure when it changes).
  std::optional<spec::TracingConfig> ReplicaTracing() const;
  absl::Status Persist();
  void ScheduleTick();
  void ReportProgress(const Deployment& d);
  Deployment* FindByReplica(const std::string& replica_id);

  boost::asio::io_context& io_;
  const Clock* const clock_;
  endpoints::Publisher* publisher_;
  StateStore* store_;
  ControllerCallbacks callbacks_;
  ControllerOptions options_;
  std::unique_ptr<node::ReplicaLauncher> launcher_;
  boost::asio::steady_timer tick_timer_;
  bool tick_scheduled_ = false;
  // Handlers queued on the io_context (a tick whose timer already fired, a posted tick) hold a weak
  // reference: one that runs after the controller is gone does nothing.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::optional<config::Config> applied_;
  std::map<std::string, std::unique_ptr<Application>> apps_;
  std::map<std::string, std::unique_ptr<Deployment>> deployments_;  // by "app/deployment"
  std::unordered_map<std::string, Deployment*> by_replica_;
  // Health checks awaiting an answer, by token: the answer reaches its replica without a name lookup.
  // An entry leaves when answered, timed out, or when its replica is erased.
  std::unordered_map<uint64_t, std::pair<Deployment*, Replica*>> health_waits_;
  std::map<std::string, std::deque<HistoryEntry>> history_;
  uint64_t next_key_ = 1;
  // Published state: the last snapshot, and what the next one must rebuild.
  std::shared_ptr<const endpoints::Snapshot> published_ = std::make_shared<const endpoints::Snapshot>();
  std::vector<std::string> changed_sets_;  // deployment keys
  bool routes_changed_ = false;
  // The oldest snapshot version a consumer routes by (UINT64_MAX: no consumer), as of the last reports.
  uint64_t oldest_applied_version_ = UINT64_MAX;
  uint64_t next_token_ = 1;
  bool waiting_all_ready_ = false;
  bool shutting_down_ = false;
  std::function<void()> shutdown_done_;
  const LogLevel base_log_level_;  // the level the node started with (--log-level), when the config sets none
};

}  // namespace ferry::controller
