#include "controller/controller.h"

#include <algorithm>

#include "common/common.h"

namespace ferry::controller {

namespace asio = boost::asio;

const char* ReplicaStateName(ReplicaState state) {
  switch (state) {
    case ReplicaState::kStarting:
      return "STARTING";
    case ReplicaState::kRunning:
      return "RUNNING";
    case ReplicaState::kStopping:
      return "STOPPING";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Controller>> Controller::Create(asio::io_context& io, const config::Config& config,
                                                               std::string ferry_binary, std::string run_dir,
                                                               router::RoutingTableCell* routing,
                                                               ControllerCallbacks callbacks) {
  std::unique_ptr<Controller> c(new Controller(io, config, routing, std::move(callbacks)));
  absl::StatusOr<std::unique_ptr<node::NodeAgent>> agent =
      node::NodeAgent::Create(io, std::move(ferry_binary), std::move(run_dir), c.get());
  if (!agent.ok()) return agent.status();
  c->agent_ = std::move(*agent);
  return c;
}

Controller::Controller(asio::io_context& io, const config::Config& config, router::RoutingTableCell* routing,
                       ControllerCallbacks callbacks)
    : io_(io), config_(config), routing_(routing), callbacks_(std::move(callbacks)) {}

Controller::~Controller() {
  if (agent_) agent_->KillAll();
}

void Controller::Deploy() {
  std::vector<router::Route> routes;
  for (const auto& app : config_.applications) {
    for (const auto& dc : app.deployments) {
      auto d = std::make_unique<Deployment>();
      d->application = app.name;
      d->config = dc;
      d->router = router::Router::Create(dc.name, dc.max_ongoing_requests, dc.max_queued_requests);
      if (dc.name == app.ingress) routes.push_back({app.route_prefix, app.name, dc.name, d->router});
      deployments_[ferry::StrCat(app.name, "/", dc.name)] = std::move(d);
    }
  }
  routing_->Publish(std::make_shared<const router::RoutingTable>(std::move(routes)));
  for (auto& [name, d] : deployments_) {
    ReportProgress(*d);
    Reconcile(*d);
  }
  if (!failed_ && !all_ready_reported_) {
    bool ready = std::all_of(deployments_.begin(), deployments_.end(),
                             [](const auto& e) { return e.second->config.num_replicas == 0; });
    if (ready) {
      all_ready_reported_ = true;
      if (callbacks_.on_all_ready) callbacks_.on_all_ready();
    }
  }
}

void Controller::Reconcile(Deployment& d) {
  if (shutting_down_ || failed_ || (d.backoff && d.backoff->expiry() > std::chrono::steady_clock::now())) return;
  int live = 0;
  for (const auto& [id, r] : d.replicas)
    if (r.state != ReplicaState::kStopping) ++live;
  for (int i = live; i < d.config.num_replicas; ++i) StartReplica(d);
}

void Controller::StartReplica(Deployment& d) {
  replica::ReplicaSpec spec;
  spec.replica_id = ferry::StrCat(d.application, "#", d.config.name, "#", NewShortId(8));
  spec.application = d.application;
  spec.deployment = d.config.name;
  spec.import_path = d.config.import_path;
  spec.builtin = d.config.kind == config::DeploymentConfig::Kind::kBuiltin;
  spec.plugin_path = d.config.plugin_path;
  spec.symbol = d.config.symbol;
  spec.args = d.config.args;
  spec.user_config = d.config.user_config;
  spec.max_ongoing_requests = d.config.max_ongoing_requests;
  spec.num_cpus = d.config.resources.num_cpus;
  spec.graceful_shutdown_timeout_s = d.config.graceful_shutdown_timeout_s;
  absl::Status s = agent_->StartReplica(spec);
  if (!s.ok()) {
    FERRY_LOG(kError, "controller", "cannot start a replica of ", d.config.name, ": ", s.message());
    if (!d.ever_ready) {
      failed_ = true;
      if (callbacks_.on_deploy_failed) callbacks_.on_deploy_failed(d.config.name, std::string(s.message()));
    }
    return;
  }
  Replica r;
  r.id = spec.replica_id;
  r.started = std::chrono::steady_clock::now();
  d.replicas[r.id] = r;
  by_replica_[r.id] = &d;
}

Controller::Deployment* Controller::FindByReplica(const std::string& replica_id) {
  auto it = by_replica_.find(replica_id);
  return it == by_replica_.end() ? nullptr : it->second;
}

void Controller::ReportProgress(const Deployment& d) {
  if (!callbacks_.on_progress || all_ready_reported_) return;
  int ready = 0;
  for (const auto& [id, r] : d.replicas)
    if (r.state == ReplicaState::kRunning) ++ready;
  callbacks_.on_progress(
      ferry::StrCat(d.application, "/", d.config.name, ": ", ready, "/", d.config.num_replicas, " replicas ready"));
}

void Controller::OnReplicaReady(const std::string& replica_id, const std::string& socket_path, pid_t pid) {
  Deployment* d = FindByReplica(replica_id);
  if (!d) return;
  Replica& r = d->replicas[replica_id];
  if (shutting_down_) return;
  r.state = ReplicaState::kRunning;
  auto endpoint = std::make_shared<router::ReplicaEndpoint>();
  endpoint->replica_id = replica_id;
  endpoint->socket_path = socket_path;
  endpoint->key = next_key_++;
  r.endpoint = endpoint;
  d->router->AddReplica(endpoint);
  r.health = std::make_shared<HealthChecker>(
      io_, replica_id, socket_path,
      std::chrono::milliseconds(static_cast<int64_t>(d->config.health_check_period_s * 1000)),
      std::chrono::milliseconds(static_cast<int64_t>(d->config.health_check_timeout_s * 1000)),
      [this](const std::string& id, const std::string& message) { OnUnhealthy(id, message); });
  r.health->Start();
  d->ever_ready = true;
  FERRY_LOG(kInfo, "controller", "replica ", replica_id, " (pid ", pid, ") is RUNNING");
  ReportProgress(*d);
  if (!all_ready_reported_) {
    bool all = true;
    for (const auto& [name, dep] : deployments_) {
      int running = 0;
      for (const auto& [id, rep] : dep->replicas)
        if (rep.state == ReplicaState::kRunning) ++running;
      if (running < dep->config.num_replicas) all = false;
    }
    if (all) {
      all_ready_reported_ = true;
      if (callbacks_.on_all_ready) callbacks_.on_all_ready();
    }
  }
}

void Controller::OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) {
  Deployment* d = FindByReplica(replica_id);
  if (!d) return;
  auto it = d->replicas.find(replica_id);
  if (it != d->replicas.end()) {
    if (it->second.endpoint) d->router->RemoveReplica(it->second.endpoint->key);
    if (it->second.health) {
      d->health_check_failures += it->second.health->total_failures();
      it->second.health->Stop();
    }
    bool long_lived = std::chrono::steady_clock::now() - it->second.started > std::chrono::seconds(10);
    d->replicas.erase(it);
    if (long_lived) d->consecutive_failures = 0;
  }
  by_replica_.erase(replica_id);
  if (shutting_down_) {
    CheckShutdownDone();
    return;
  }
  if (!all_ready_reported_ && !was_ready) {
    // During start-up a deployment that cannot construct fails the deploy, as it would forever.
    if (!failed_) {
      failed_ = true;
      if (callbacks_.on_deploy_failed)
        callbacks_.on_deploy_failed(ferry::StrCat(d->application, "/", d->config.name), message);
    }
    return;
  }
  FERRY_LOG(kWarning, "controller", "replica ", replica_id, " ", was_ready ? "died: " : "failed to start: ", message,
            "; starting a replacement");
  ++d->restarts;
  ++d->consecutive_failures;
  // Backoff: 0 for the first replacement, then 100 ms doubling up to 10 s.
  int n = d->consecutive_failures - 1;
  auto delay = std::chrono::milliseconds(n <= 0 ? 0 : std::min<int64_t>(10000, 100ll << std::min(n - 1, 10)));
  d->backoff = std::make_unique<asio::steady_timer>(io_, delay);
  d->backoff->async_wait([this, d](const boost::system::error_code& ec) {
    if (ec) return;
    d->backoff.reset();
    Reconcile(*d);
  });
}

void Controller::OnUnhealthy(const std::string& replica_id, const std::string& message) {
  Deployment* d = FindByReplica(replica_id);
  if (!d || shutting_down_) return;
  auto it = d->replicas.find(replica_id);
  if (it == d->replicas.end() || it->second.state != ReplicaState::kRunning) return;
  FERRY_LOG(kWarning, "controller", "replica ", replica_id, " failed ", HealthChecker::kFailuresToReplace,
            " health checks in a row (", message, "); taking it out of routing and replacing it");
  // Out of routing now; requests already on it may finish during its graceful shutdown. Its exit starts
  // the replacement through OnReplicaExited.
  d->router->RemoveReplica(it->second.endpoint->key);
  it->second.state = ReplicaState::kStopping;
  agent_->StopReplica(replica_id,
                      std::chrono::milliseconds(static_cast<int64_t>(d->config.graceful_shutdown_timeout_s * 1000)));
}

void Controller::Shutdown(std::function<void()> done) {
  shutting_down_ = true;
  shutdown_done_ = std::move(done);
  for (auto& [name, d] : deployments_) {
    if (d->backoff) d->backoff->cancel();
    auto timeout = std::chrono::milliseconds(static_cast<int64_t>(d->config.graceful_shutdown_timeout_s * 1000));
    for (auto& [id, r] : d->replicas) {
      if (r.endpoint) d->router->RemoveReplica(r.endpoint->key);
      if (r.health) r.health->Stop();
      r.state = ReplicaState::kStopping;
      agent_->StopReplica(id, timeout);
    }
  }
  CheckShutdownDone();
}

void Controller::CheckShutdownDone() {
  if (!shutdown_done_ || agent_->live_replicas() > 0) return;
  auto done = std::move(shutdown_done_);
  shutdown_done_ = nullptr;
  done();
}

int Controller::restarts(const std::string& application, const std::string& deployment) const {
  auto it = deployments_.find(ferry::StrCat(application, "/", deployment));
  return it == deployments_.end() ? 0 : it->second->restarts;
}

int Controller::health_check_failures(const std::string& application, const std::string& deployment) const {
  auto it = deployments_.find(StrCat(application, "/", deployment));
  if (it == deployments_.end()) return 0;
  int n = it->second->health_check_failures;
  for (const auto& [id, r] : it->second->replicas)
    if (r.health) n += r.health->total_failures();
  return n;
}

int Controller::running_replicas(const std::string& application, const std::string& deployment) const {
  auto it = deployments_.find(ferry::StrCat(application, "/", deployment));
  if (it == deployments_.end()) return 0;
  int n = 0;
  for (const auto& [id, r] : it->second->replicas)
    if (r.state == ReplicaState::kRunning) ++n;
  return n;
}

}  // namespace ferry::controller
