// The controller's loop half: each tick compares every deployment's replicas with its target and acts;
// replica events from the node agent feed it.
#include <algorithm>
#include <cmath>

#include "common/common.h"
#include "controller/controller.h"
#include "controller/internal/state.h"

namespace ferry::controller {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

constexpr int kHealthFailuresToReplace = 3;  // Ray Serve's
constexpr int kMaxPerReplicaRetryCount = 3;  // Ray Serve's MAX_PER_REPLICA_RETRY_COUNT
constexpr milliseconds kFirstHealthRetry{500};
constexpr milliseconds kStatsPeriod{1000};  // how fresh a replica's histograms are in /metrics
constexpr milliseconds kStatsGiveUp{5000};  // a stats request unanswered this long is asked again

milliseconds Millis(double seconds) { return milliseconds(static_cast<int64_t>(seconds * 1000)); }

bool Serving(ReplicaState s) { return s == ReplicaState::kRunning || s == ReplicaState::kUpdating; }
bool Starting(ReplicaState s) { return s == ReplicaState::kStarting || s == ReplicaState::kRecovering; }

}  // namespace

Controller::Deployment* Controller::FindByReplica(const std::string& replica_id) {
  auto it = by_replica_.find(replica_id);
  return it == by_replica_.end() ? nullptr : it->second;
}

void Controller::Autoscale(Deployment& d, SteadyTime now) {
  if (!d.autoscaler || d.deleting || shutting_down_) return;
  d.autoscaler->MaybeRecord(now, d.ongoing + d.queued);
  std::optional<AutoscalingDecision> decision =
      d.autoscaler->Decide(now, d.autoscaled_replicas, d.RoutedReplicas(), d.queued);
  if (!decision) return;
  if (decision->from == 0 && !d.cold_start_began) d.cold_start_began = now;
  d.autoscaled_replicas = decision->to;
  FERRY_LOG(kInfo, "controller", "autoscaling ", d.key, ": ", decision->from, " -> ", decision->to, " replicas (",
            decision->reason, ")");
  d.decisions.push_back({{"time_s", WallSeconds()},
                         {"from", decision->from},
                         {"to", decision->to},
                         {"average_load", decision->average_load},
                         {"desired", decision->desired},
                         {"reason", decision->reason}});
  while (d.decisions.size() > 20) d.decisions.pop_front();
}

void Controller::CollectReports() {
  std::vector<endpoints::ConsumerReport> reports = publisher_->CollectReports();
  oldest_applied_version_ = UINT64_MAX;
  for (auto& [key, d] : deployments_) {
    d->queued = d->ongoing = 0;
    d->in_flight.clear();
  }
  for (const endpoints::ConsumerReport& report : reports) {
    oldest_applied_version_ = std::min(oldest_applied_version_, report.applied_version);
    // Both are ordered by deployment key: one walk matches them.
    auto d = deployments_.begin();
    for (const endpoints::DeploymentLoad& load : report.deployments) {
      while (d != deployments_.end() && d->first < load.deployment) ++d;
      if (d == deployments_.end()) break;
      if (d->first != load.deployment) continue;
      Deployment& dep = *d->second;
      dep.queued += load.queued;
      dep.ongoing += load.ongoing;
      for (const auto& [k, n] : load.in_flight) {
        auto it =
            std::find_if(dep.in_flight.begin(), dep.in_flight.end(), [k = k](const auto& p) { return p.first == k; });
        if (it == dep.in_flight.end())
          dep.in_flight.emplace_back(k, n);
        else
          it->second += n;
      }
    }
  }
}

bool Controller::Drained(const Deployment& d, const Replica& r) const {
  if (!r.endpoint) return true;  // never published
  if (r.routed) return false;
  // Every consumer must route by a snapshot without it, and have nothing left in flight on it.
  return oldest_applied_version_ >= r.unrouted_version && d.InFlight(r.endpoint->key) == 0;
}

void Controller::Tick() {
  const SteadyTime now = clock_->Now();
  CollectReports();
  for (auto& [key, d] : deployments_) {
    Autoscale(*d, now);
    ReconcileDeployment(*d, now);
  }
  for (auto it = deployments_.begin(); it != deployments_.end();) {
    if (it->second->deleting && it->second->replicas.empty()) {
      FERRY_LOG(kInfo, "controller", "deployment ", it->first, " deleted");
      if (!it->second->set_changed) changed_sets_.push_back(it->first);  // its set leaves the snapshot
      routes_changed_ = true;
      it = deployments_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = apps_.begin(); it != apps_.end();) {
    if (it->second->deleting && std::none_of(deployments_.begin(), deployments_.end(),
                                             [&](const auto& d) { return d.second->application == it->first; })) {
      history_.erase(it->first);
      it = apps_.erase(it);
    } else {
      ++it;
    }
  }
  UpdateStatuses();
  PublishIfChanged();
  if (shutting_down_ && shutdown_done_ && launcher_->live_replicas() == 0) {
    auto done = std::move(shutdown_done_);
    shutdown_done_ = nullptr;
    done();
  }
}

void Controller::ReconcileDeployment(Deployment& d, SteadyTime now) {
  const config::DeploymentConfig& t = d.target;
  // Each replica: stops in progress, start deadlines, health, in-place updates.
  for (auto& [id, r] : d.replicas) {
    if (r.state == ReplicaState::kStopping) {
      bool drained = Drained(d, r);
      if (!r.stop_sent && (drained || now >= r.drain_deadline)) {
        launcher_->StopReplica(id, Millis(t.graceful_shutdown_timeout_s));
        r.stop_sent = true;
      }
      continue;
    }
    if (!r.ready) {
      if (now - r.started > Millis(t.startup_timeout_s)) {
        std::string why =
            StrCat("replica ", id, " did not become ready within startup_timeout_s (", t.startup_timeout_s, " s)");
        if (r.version == d.version) RecordStartFailure(d, why);
        BeginStop(d, r, now);
      }
      continue;
    }
    AdvanceHealth(d, r, now);
    PollStats(r, now);
    if (Serving(r.state)) AdvanceUpdate(d, r);
  }
  if (d.deleting || shutting_down_) {
    for (auto& [id, r] : d.replicas)
      if (r.state != ReplicaState::kStopping) BeginStop(d, r, now);
    return;
  }

  const int n = d.TargetReplicas();
  std::vector<Replica*> current_starting, current_serving, old_starting, old_serving;
  for (auto& [id, r] : d.replicas) {
    if (r.state == ReplicaState::kStopping) continue;
    // One on a draining node counts as old: replaced first, then stopped, as in a rolling update.
    bool current = r.version == d.version && !launcher_->Evicting(id);
    if (Starting(r.state))
      (current ? current_starting : old_starting).push_back(&r);
    else
      (current ? current_serving : old_serving).push_back(&r);
  }
  const int current_total = static_cast<int>(current_starting.size() + current_serving.size());
  // An old-version replica that is not serving yet will never be needed.
  for (Replica* r : old_starting) BeginStop(d, *r, now);
  // Start current-version replicas. While an old version serves, a bounded surge at a time (Ray Serve's
  // 20%), so a rolling update adds capacity before it removes any; otherwise all that are missing.
  if (!d.version_failed && now >= d.backoff_until) {
    int surge = old_serving.empty() ? n : std::max(1, static_cast<int>(std::ceil(0.2 * n)));
    int to_start = std::min(n - current_total, surge - static_cast<int>(current_starting.size()));
    for (int i = 0; i < to_start; ++i)
      if (!StartReplica(d)) break;
  }
  // num_replicas went down: stop the extras, those not serving yet first, then the newest.
  for (int extra = current_total - n; extra > 0; --extra) {
    Replica* victim = nullptr;
    if (!current_starting.empty()) {
      victim = current_starting.back();
      current_starting.pop_back();
    } else {
      auto newest = std::max_element(current_serving.begin(), current_serving.end(),
                                     [](Replica* a, Replica* b) { return a->started < b->started; });
      victim = *newest;
      current_serving.erase(newest);
    }
    BeginStop(d, *victim, now);
  }
  // The old version keeps serving only what the new one cannot yet: capacity never dips during a rollout.
  const int keep_old = std::max(0, n - static_cast<int>(current_serving.size()));
  std::sort(old_serving.begin(), old_serving.end(), [](Replica* a, Replica* b) { return a->started < b->started; });
  for (size_t i = static_cast<size_t>(keep_old); i < old_serving.size(); ++i) BeginStop(d, *old_serving[i], now);
}

bool Controller::StartReplica(Deployment& d) {
  const config::DeploymentConfig& t = d.target;
  spec::ReplicaSpec spec;
  spec.replica_id = StrCat(d.application, "#", t.name, "#", NewShortId(8));
  spec.application = d.application;
  spec.deployment = t.name;
  spec.import_path = t.import_path;
  spec.builtin = t.kind == config::DeploymentConfig::Kind::kBuiltin;
  spec.plugin_path = t.plugin_path;
  spec.symbol = t.symbol;
  spec.args = t.args;
  if (t.kind == config::DeploymentConfig::Kind::kRuntime) {
    // A model runtime learns its file, its served name and its CPU share from its args.
    spec.args["model_path"] = t.model_path;
    spec.args["model_name"] = t.model_name;
    if (!t.model_version.empty()) spec.args["model_version"] = t.model_version;
    if (!spec.args.contains("num_cpus")) spec.args["num_cpus"] = t.resources.num_cpus;
  }
  spec.user_config = t.user_config;
  spec.max_ongoing_requests = t.max_ongoing_requests;
  spec.num_cpus = t.resources.num_cpus;
  spec.graceful_shutdown_timeout_s = t.graceful_shutdown_timeout_s;
  spec.batching = t.batching;
  spec.logging = t.logging;
  spec.tracing = ReplicaTracing();
  spec.tcp_host = options_.replica_tcp_host;
  spec.version = d.version;
  spec.placement = t.placement;
  absl::Status s = launcher_->StartReplica(spec);
  if (absl::IsResourceExhausted(s)) {
    // It fits on no node now: not a failed start. Said once, shown in the status until it fits.
    if (d.unschedulable != Message(s)) FERRY_LOG(kWarning, "controller", Message(s));
    d.unschedulable = std::string(Message(s));
    return false;
  }
  if (!s.ok()) {
    FERRY_LOG(kError, "controller", "cannot start a replica of ", d.key, ": ", Message(s));
    RecordStartFailure(d, std::string(Message(s)));
    return false;
  }
  ++d.starts;
  d.unschedulable.clear();
  Replica& r = d.replicas[spec.replica_id];
  r.id = spec.replica_id;
  r.version = d.version;
  r.state = d.recovering ? ReplicaState::kRecovering : ReplicaState::kStarting;
  r.recovering = d.recovering;
  r.started = clock_->Now();
  r.start_time_s = WallSeconds();
  r.applied_user_config = t.user_config;
  r.applied_max_ongoing = t.max_ongoing_requests;
  r.applied_logging = spec.logging;
  r.applied_tracing = spec.tracing;
  r.checked_generation = d.in_place_generation;
  r.location = launcher_->LocationOf(r.id);
  by_replica_[r.id] = &d;
  return true;
}

void Controller::AdoptExisting() {
  const SteadyTime now = clock_->Now();
  for (node::ExistingReplica& e : launcher_->Existing()) {
    const std::string& id = e.spec.replica_id;
    auto it = deployments_.find(StrCat(e.spec.application, "/", e.spec.deployment));
    if (it == deployments_.end() || it->second->deleting || by_replica_.count(id)) {
      FERRY_LOG(kInfo, "controller", "stopping replica ", id, ": its deployment is not in the config");
      launcher_->StopReplica(id, Millis(e.spec.graceful_shutdown_timeout_s));
      continue;
    }
    Deployment& d = *it->second;
    Replica& r = d.replicas[id];
    r.id = id;
    r.version = e.spec.version;
    r.location = launcher_->LocationOf(id);
    r.state = ReplicaState::kStarting;
    r.started = now;
    r.start_time_s = WallSeconds();
    // What it was started with; a reconfigure made since is compared again and applied again if needed.
    r.applied_user_config = e.spec.user_config;
    r.applied_max_ongoing = e.spec.max_ongoing_requests;
    r.applied_logging = e.spec.logging;
    r.applied_tracing = e.spec.tracing;
    r.checked_generation = 0;
    by_replica_[id] = &d;
    if (e.ready) {  // it was serving: it goes on serving, and is checked at the next period
      r.ready = true;
      r.pid = e.pid;
      r.endpoint = NewEndpoint(r, e.address, e.tcp_address);
      r.next_health = now + Millis(d.target.health_check_period_s);
      MarkRunning(d, r);
    }
    FERRY_LOG(kInfo, "controller", "took over replica ", id, " on node ", r.location.node_id,
              e.ready ? " (RUNNING)" : " (STARTING)");
  }
}

endpoints::Endpoint Controller::NewEndpoint(const Replica& r, const std::string& address,
                                            const std::string& tcp_address) {
  endpoints::Endpoint endpoint;
  endpoint.replica_id = r.id;
  endpoint.address = address;
  endpoint.tcp_address = tcp_address;
  endpoint.node_id = r.location.node_id.empty() ? options_.node_id : r.location.node_id;
  endpoint.key = next_key_++;
  endpoint.version = r.version;
  return endpoint;
}

void Controller::BeginStop(Deployment& d, Replica& r, SteadyTime now) {
  if (r.state == ReplicaState::kStopping) return;
  if (r.routed) {  // out of routing first: the next snapshot has it draining
    r.routed = false;
    r.draining = true;
    r.unrouted_version = published_->version + 1;
    SetChanged(d);
  }
  r.state = ReplicaState::kStopping;
  r.drain_deadline = now + Millis(d.target.graceful_shutdown_timeout_s);
  if (!r.ready) {  // never served: nothing to drain
    launcher_->StopReplica(r.id, Millis(d.target.graceful_shutdown_timeout_s));
    r.stop_sent = true;
  }
}

void Controller::AdvanceHealth(Deployment& d, Replica& r, SteadyTime now) {
  if (r.health_outstanding) {
    if (now >= r.health_deadline)
      OnHealthResult(r.health_token,
                     absl::DeadlineExceededError(StrCat("check_health did not answer within health_check_timeout_s (",
                                                        d.target.health_check_timeout_s, " s)")));
    return;
  }
  if (now < r.next_health) return;
  r.health_outstanding = true;
  r.health_token = next_token_++;
  health_waits_[r.health_token] = {&d, &r};  // the answer finds its replica by the token: no name lookups
  r.health_deadline = now + Millis(d.target.health_check_timeout_s);
  launcher_->CheckHealth(r.id, [this, token = r.health_token](const absl::Status& s) { OnHealthResult(token, s); });
}

// Every kStatsPeriod, a running replica's stats: the processing-time and batch-size histograms /metrics shows.
void Controller::PollStats(Replica& r, SteadyTime now) {
  if (r.state != ReplicaState::kRunning) return;
  if (r.stats_outstanding && now - r.stats_sent < kStatsGiveUp) return;
  if (!r.stats_outstanding && now < r.next_stats) return;
  r.stats_outstanding = true;
  r.stats_sent = now;
  r.next_stats = now + kStatsPeriod;
  launcher_->GetStats(r.id, [this, id = r.id](absl::StatusOr<node::ReplicaStats> stats) {
    Deployment* d = FindByReplica(id);
    if (!d) return;
    auto it = d->replicas.find(id);
    if (it == d->replicas.end()) return;
    Replica& replica = it->second;
    replica.stats_outstanding = false;
    if (!stats.ok()) return;
    if (replica.endpoint && stats->model_ids != replica.endpoint->model_ids) {
      // Its multiplexed models changed: routers learn it now, at most a stats period after the change.
      replica.endpoint->model_ids = stats->model_ids;
      if (replica.routed) {
        SetChanged(*d);
        PublishIfChanged();
      }
    }
    replica.stats = std::move(*stats);
  });
}

void Controller::OnHealthResult(uint64_t token, const absl::Status& status) {
  auto wait = health_waits_.find(token);
  if (wait == health_waits_.end()) return;  // answered already (timed out), or the replica is gone
  auto [d, replica] = wait->second;
  health_waits_.erase(wait);
  Replica& r = *replica;
  const std::string& replica_id = r.id;
  if (!r.health_outstanding || r.health_token != token || r.state == ReplicaState::kStopping) return;
  r.health_outstanding = false;
  const SteadyTime now = clock_->Now();
  const bool starting = Starting(r.state);
  r.next_health = now + (starting ? std::min(kFirstHealthRetry, Millis(d->target.health_check_period_s))
                                  : Millis(d->target.health_check_period_s));
  if (status.ok()) {
    r.health_failures = 0;
    if (starting) {
      MarkRunning(*d, r);
      ScheduleTick();  // routed from the tick's publish: one snapshot for every replica ready by then
    }
    return;
  }
  ++r.health_failures;
  ++d->health_check_failures;
  FERRY_LOG(kWarning, "controller", "replica ", replica_id, " failed a health check (", r.health_failures, "/",
            kHealthFailuresToReplace, "): ", Message(status));
  if (r.health_failures < kHealthFailuresToReplace) return;
  std::string message = StrCat("replica ", replica_id, " failed ", kHealthFailuresToReplace,
                               " health checks in a row (", Message(status), ")");
  if (starting) {
    // A new replica that never passes its check never takes traffic: a failed start.
    if (r.version == d->version) RecordStartFailure(*d, message);
  } else {
    FERRY_LOG(kWarning, "controller", message, "; taking it out of routing and replacing it");
    d->unhealthy = true;
    d->message = message;
    ++d->restarts;
  }
  BeginStop(*d, r, now);
  PublishIfChanged();
  ScheduleTick();
}

void Controller::MarkRunning(Deployment& d, Replica& r) {
  r.state = ReplicaState::kRunning;
  r.routed = true;
  SetChanged(d);
  if (r.version == d.version) d.start_failures = 0;
  FERRY_LOG(kInfo, "controller", "replica ", r.id, " (pid ", r.pid, ") is RUNNING");
  if (d.cold_start_began) {
    d.last_cold_start_s = std::chrono::duration<double>(clock_->Now() - *d.cold_start_began).count();
    ++d.cold_starts;
    d.cold_start_began.reset();
    FERRY_LOG(kInfo, "controller", d.key, " cold start: first replica RUNNING ", d.last_cold_start_s * 1000,
              " ms after requests arrived with none");
  }
  ReportProgress(d);
}

void Controller::AdvanceUpdate(Deployment& d, Replica& r) {
  const config::DeploymentConfig& t = d.target;
  if (r.version != d.version || r.update_outstanding || r.checked_generation == d.in_place_generation) return;
  const uint64_t generation = d.in_place_generation;
  spec::ReplicaUpdate update;
  if (r.applied_user_config != t.user_config) update.user_config = t.user_config;
  if (r.applied_max_ongoing != t.max_ongoing_requests) update.max_ongoing_requests = t.max_ongoing_requests;
  // Logs and traces change in place too: a new log level is no reason to restart a model.
  if (r.applied_logging != t.logging) update.logging = t.logging;
  if (std::optional<spec::TracingConfig> tracing = ReplicaTracing(); r.applied_tracing != tracing)
    update.tracing = tracing;
  if (update.empty()) {
    r.checked_generation = generation;
    return;
  }
  r.update_outstanding = true;
  r.update_token = next_token_++;
  r.state = ReplicaState::kUpdating;
  launcher_->Reconfigure(
      r.id, update, [this, id = r.id, token = r.update_token, generation, update](const absl::Status& s) {
        Deployment* d = FindByReplica(id);
        if (!d) return;
        auto it = d->replicas.find(id);
        if (it == d->replicas.end() || it->second.update_token != token) return;
        Replica& r = it->second;
        r.update_outstanding = false;
        if (r.state != ReplicaState::kUpdating) return;
        if (s.ok()) {
          if (update.user_config) r.applied_user_config = *update.user_config;
          if (update.max_ongoing_requests) r.applied_max_ongoing = *update.max_ongoing_requests;
          if (update.logging) r.applied_logging = *update.logging;
          if (update.tracing) r.applied_tracing = *update.tracing;
          r.checked_generation = generation;  // a newer apply meanwhile is compared at the next tick
          r.state = ReplicaState::kRunning;
          FERRY_LOG(kInfo, "controller", "replica ", id, " reconfigured in place: ", spec::ToJson(update).dump());
        } else {
          // A replica that cannot take the new config is replaced by one constructed with it.
          d->message = StrCat("reconfigure of replica ", id, " failed: ", Message(s));
          FERRY_LOG(kWarning, "controller", d->message, "; replacing it");
          r.state = ReplicaState::kRunning;
          BeginStop(*d, r, clock_->Now());
          PublishIfChanged();
        }
        ScheduleTick();
      });
}

void Controller::RecordStartFailure(Deployment& d, const std::string& message) {
  ++d.start_failures;
  // As Ray Serve: a version fails after min(max_constructor_retry_count, 3 x target replicas) failed starts,
  // so a constructor that always throws fails a small deployment in a few tries, not twenty.
  const int per_replica_limit = kMaxPerReplicaRetryCount * std::max(1, d.TargetReplicas());
  const int limit = std::min(d.target.max_constructor_retry_count, per_replica_limit);
  d.message = StrCat(
      "replica failed to start (", d.start_failures, " of ", limit,
      limit == d.target.max_constructor_retry_count ? " (max_constructor_retry_count)" : " (3 per target replica)",
      "): ", message);
  auto delay = milliseconds(std::min<int64_t>(5000, 100ll << std::min(d.start_failures - 1, 10)));
  d.backoff_until = clock_->Now() + delay;
  if (d.start_failures >= limit && !d.version_failed) {
    d.version_failed = true;
    SetChanged(d);  // a failed version no longer scales from zero on demand
    d.message = StrCat("deployment failed to start after ", d.start_failures, " attempts: ", message);
    FERRY_LOG(kError, "controller", d.key, " is DEPLOY_FAILED: ", message);
  } else {
    FERRY_LOG(kWarning, "controller", d.key, ": ", d.message);
  }
  if (callbacks_.on_start_failure) callbacks_.on_start_failure(StrCat("deployment ", d.key), message);
}

void Controller::OnReplicaReady(const std::string& replica_id, const std::string& socket_path,
                                const std::string& tcp_address, pid_t pid) {
  Deployment* d = FindByReplica(replica_id);
  if (!d) return;
  Replica& r = d->replicas[replica_id];
  r.ready = true;
  r.pid = pid;
  r.endpoint = NewEndpoint(r, socket_path, tcp_address);
  r.next_health = clock_->Now();  // it serves once its first check passes
  ScheduleTick();
}

void Controller::OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) {
  Deployment* d = FindByReplica(replica_id);
  if (!d) return;
  auto it = d->replicas.find(replica_id);
  by_replica_.erase(replica_id);
  if (it == d->replicas.end()) return;
  Replica r = it->second;
  if (it->second.health_outstanding) health_waits_.erase(it->second.health_token);
  d->replicas.erase(it);
  if (r.routed || r.draining) SetChanged(*d);
  if (r.state != ReplicaState::kStopping && !shutting_down_ && !d->deleting) {
    if (Starting(r.state)) {
      if (r.version == d->version) RecordStartFailure(*d, message);
    } else {
      const auto now = clock_->Now();
      d->crash_streak = now - r.started > std::chrono::seconds(10) ? 1 : d->crash_streak + 1;
      // Backoff: none for the first replacement, then 100 ms doubling up to 10 s.
      int n = d->crash_streak - 1;
      d->backoff_until = now + milliseconds(n <= 0 ? 0 : std::min<int64_t>(10000, 100ll << std::min(n - 1, 10)));
      d->unhealthy = true;
      ++d->restarts;
      d->message = StrCat("replica ", replica_id, " died: ", message);
      FERRY_LOG(kWarning, "controller", "replica ", replica_id, " died: ", message, "; starting a replacement");
    }
  }
  (void)was_ready;
  PublishIfChanged();
  ScheduleTick();
}

void Controller::UpdateStatuses() {
  for (auto& [key, d] : deployments_) {
    const int n = d->TargetReplicas();
    int current_serving = 0, current_total = 0, other = 0;
    for (const auto& [id, r] : d->replicas) {
      if (r.state == ReplicaState::kStopping) continue;
      if (r.version != d->version || launcher_->Evicting(id)) {
        ++other;
        continue;
      }
      ++current_total;
      if (Serving(r.state)) ++current_serving;
    }
    if (d->version_failed) {
      d->status = DeploymentStatus::kDeployFailed;
    } else if (current_serving == n && current_total == n && other == 0) {
      if (!d->reached_target || d->status != DeploymentStatus::kHealthy) d->message.clear();
      d->status = DeploymentStatus::kHealthy;
      d->unhealthy = false;
      d->reached_target = true;
      d->recovering = false;
      d->unschedulable.clear();
    } else if (d->unhealthy) {
      d->status = DeploymentStatus::kUnhealthy;
    } else if (other > 0 || !d->reached_target) {
      d->status = current_total > n && other == 0 && d->reached_target ? DeploymentStatus::kDownscaling
                                                                       : DeploymentStatus::kUpdating;
    } else {
      d->status = current_total > n ? DeploymentStatus::kDownscaling : DeploymentStatus::kUpscaling;
    }
    if (!d->unschedulable.empty() && d->status != DeploymentStatus::kHealthy) d->message = d->unschedulable;
  }
  bool all_running = true;
  for (auto& [name, app] : apps_) {
    ApplicationStatus status = ApplicationStatus::kRunning;
    std::string message;
    if (app->deleting) {
      status = ApplicationStatus::kDeleting;
    } else if (!app->build_error.empty()) {  // Ray's wording
      status = ApplicationStatus::kDeployFailed;
      message = StrCat("Deploying app '", name, "' failed with exception:\n", app->build_error);
    } else {
      for (const auto& dc : app->config.deployments) {
        auto it = deployments_.find(StrCat(name, "/", dc.name));
        if (it == deployments_.end()) continue;
        const Deployment& d = *it->second;
        if (d.status == DeploymentStatus::kDeployFailed) {
          status = ApplicationStatus::kDeployFailed;
          message = StrCat("deployment ", dc.name, ": ", d.message);
        } else if (d.status == DeploymentStatus::kUnhealthy && status != ApplicationStatus::kDeployFailed) {
          status = ApplicationStatus::kUnhealthy;
          message = StrCat("deployment ", dc.name, ": ", d.message);
        } else if (d.status == DeploymentStatus::kUpdating && status == ApplicationStatus::kRunning) {
          status = ApplicationStatus::kDeploying;
        }
      }
    }
    app->status = status;
    app->message = message;
    if (status != ApplicationStatus::kRunning) all_running = false;
  }
  if (waiting_all_ready_ && all_running) {
    waiting_all_ready_ = false;
    if (callbacks_.on_all_ready) callbacks_.on_all_ready();
  }
}

void Controller::ReportProgress(const Deployment& d) {
  if (!callbacks_.on_progress || !waiting_all_ready_) return;
  int ready = 0;
  for (const auto& [id, r] : d.replicas)
    if (Serving(r.state) && r.version == d.version) ++ready;
  callbacks_.on_progress(StrCat(d.key, ": ", ready, "/", d.TargetReplicas(), " replicas ready"));
}

void Controller::StandDown(std::function<void()> done) {
  Shutdown([this, done = std::move(done)] {
    // Everything stopped: forget it all (nothing is saved: the desired state stays where it is) and
    // publish the empty snapshot, numbered after the last, so routers drop the sets.
    for (const auto& [key, d] : deployments_) changed_sets_.push_back(key);
    routes_changed_ = true;
    deployments_.clear();
    by_replica_.clear();
    health_waits_.clear();
    apps_.clear();
    history_.clear();
    applied_.reset();
    waiting_all_ready_ = false;
    shutting_down_ = false;
    PublishIfChanged();
    done();
  });
}

void Controller::Shutdown(std::function<void()> done) {
  shutting_down_ = true;
  shutdown_done_ = std::move(done);
  const SteadyTime now = clock_->Now();
  for (auto& [key, d] : deployments_)
    for (auto& [id, r] : d->replicas) BeginStop(*d, r, now);
  Tick();
}

}  // namespace ferry::controller
