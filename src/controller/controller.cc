// The controller's API half: applying configs, history and rollback, persistence, status.
#include "controller/controller.h"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <fstream>
#include <set>
#include <sstream>

#include "common/common.h"
#include "controller/internal/state.h"
#include "node/node_agent.h"
#include "tracing/tracing.h"

namespace ferry::controller {

namespace asio = boost::asio;
using nlohmann::json;

const char* ApplicationStatusName(ApplicationStatus status) {
  switch (status) {
    case ApplicationStatus::kNotStarted:
      return "NOT_STARTED";
    case ApplicationStatus::kDeploying:
      return "DEPLOYING";
    case ApplicationStatus::kRunning:
      return "RUNNING";
    case ApplicationStatus::kDeployFailed:
      return "DEPLOY_FAILED";
    case ApplicationStatus::kUnhealthy:
      return "UNHEALTHY";
    case ApplicationStatus::kDeleting:
      return "DELETING";
  }
  return "?";
}

const char* DeploymentStatusName(DeploymentStatus status) {
  switch (status) {
    case DeploymentStatus::kUpdating:
      return "UPDATING";
    case DeploymentStatus::kHealthy:
      return "HEALTHY";
    case DeploymentStatus::kUnhealthy:
      return "UNHEALTHY";
    case DeploymentStatus::kUpscaling:
      return "UPSCALING";
    case DeploymentStatus::kDownscaling:
      return "DOWNSCALING";
    case DeploymentStatus::kDeployFailed:
      return "DEPLOY_FAILED";
  }
  return "?";
}

const char* ReplicaStateName(ReplicaState state) {
  switch (state) {
    case ReplicaState::kStarting:
      return "STARTING";
    case ReplicaState::kUpdating:
      return "UPDATING";
    case ReplicaState::kRecovering:
      return "RECOVERING";
    case ReplicaState::kRunning:
      return "RUNNING";
    case ReplicaState::kStopping:
      return "STOPPING";
  }
  return "?";
}

namespace {

uint64_t Fnv1a(uint64_t h, std::string_view bytes) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

bool SameDeployment(const config::DeploymentConfig& a, const config::DeploymentConfig& b) {
  config::ApplicationConfig x, y;
  x.deployments = {a};
  y.deployments = {b};
  return config::ToJson(x) == config::ToJson(y);
}

}  // namespace

std::string DeploymentVersion(const config::DeploymentConfig& d) {
  uint64_t h = 1469598103934665603ull;
  h = Fnv1a(h, d.ResolvedImportPath());
  h = Fnv1a(h, d.args.dump());
  h = Fnv1a(h, StrCat(d.resources.num_cpus, "/", d.resources.num_gpus));
  if (d.batching) h = Fnv1a(h, config::ToJson(*d.batching).dump());  // the replica's execution mode
  spec::PlacementSpec plain;  // where it may run, when it says more than its CPUs
  plain.resources = {{"CPU", d.resources.num_cpus}};
  if (d.placement != plain) h = Fnv1a(h, spec::ToJson(d.placement).dump());
  if (d.kind != config::DeploymentConfig::Kind::kBuiltin) {
    // The plugin library's or the model file's contents: replacing either in place is a new version too.
    std::ifstream in(d.kind == config::DeploymentConfig::Kind::kRuntime ? d.model_path : d.plugin_path,
                     std::ios::binary);
    char buf[1 << 16];
    while (in.read(buf, sizeof(buf)) || in.gcount() > 0)
      h = Fnv1a(h, std::string_view(buf, static_cast<size_t>(in.gcount())));
  }
  return HexString(h, 12);
}

absl::StatusOr<std::unique_ptr<Controller>> Controller::Create(asio::io_context& io, std::string ferry_binary,
                                                               std::string run_dir, endpoints::Publisher* publisher,
                                                               StateStore* store, ControllerCallbacks callbacks,
                                                               ControllerOptions options) {
  std::unique_ptr<Controller> c(new Controller(io, publisher, store, std::move(callbacks), options));
  absl::StatusOr<std::unique_ptr<node::NodeAgent>> agent =
      node::NodeAgent::Create(io, std::move(ferry_binary), std::move(run_dir), c.get(), publisher);
  if (!agent.ok()) return agent.status();
  c->launcher_ = std::move(*agent);
  return c;
}

std::unique_ptr<Controller> Controller::CreateWithLauncher(asio::io_context& io, const LauncherFactory& make_launcher,
                                                           endpoints::Publisher* publisher, StateStore* store,
                                                           ControllerCallbacks callbacks, ControllerOptions options) {
  std::unique_ptr<Controller> c(new Controller(io, publisher, store, std::move(callbacks), options));
  c->launcher_ = make_launcher(c.get());
  return c;
}

Controller::Controller(asio::io_context& io, endpoints::Publisher* publisher, StateStore* store,
                       ControllerCallbacks callbacks, ControllerOptions options)
    : io_(io),
      clock_(options.clock),
      publisher_(publisher),
      store_(store),
      callbacks_(std::move(callbacks)),
      options_(options),
      tick_timer_(io),
      base_log_level_(Log::level()) {
  // A request waiting with no replica (a cold start), or a drain that finished, is looked at now, not at
  // the next tick.
  publisher_->SetWakeHook([this, alive = std::weak_ptr<bool>(alive_)] {
    asio::post(io_, [this, alive] {
      if (!alive.expired()) ScheduleTick();
    });
  });
}

Controller::~Controller() {
  publisher_->SetWakeHook(nullptr);
  if (launcher_) launcher_->KillAll();
}

void Controller::Start() {
  tick_timer_.expires_after(options_.tick);
  tick_timer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
    if (ec || alive.expired()) return;  // cancelled, or fired just before the controller went
    Tick();
    Start();
  });
}

void Controller::ScheduleTick() {
  if (tick_scheduled_) return;
  tick_scheduled_ = true;
  asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
    if (alive.expired()) return;
    tick_scheduled_ = false;
    Tick();
  });
}

absl::Status Controller::Apply(const config::Config& config) { return ApplyInternal(config, false, true); }

absl::Status Controller::ApplyInternal(const config::Config& config, bool recovering, bool record_history) {
  if (shutting_down_) return absl::UnavailableError("the node is shutting down");
  ApplyNodeObservability(config);
  const double now_s = WallSeconds();
  std::set<std::string> wanted_apps, wanted_deployments;
  bool changed = false;
  // What runs: as given, but an application whose code failed to build keeps the version it runs.
  config::Config effective = config;
  std::vector<std::pair<std::string, std::string>> failed_builds;  // told once this config is in place
  for (auto& app_config : effective.applications) {
    wanted_apps.insert(app_config.name);
    auto& app = apps_[app_config.name];
    if (!app_config.build_error.empty()) {
      const std::string error = app_config.build_error;
      const bool running = app && !app->deleting && app->config.build_error.empty();
      if (!app || app->build_error != error) {
        changed = true;
        FERRY_LOG(kError, "controller", "application ", app_config.name, " is DEPLOY_FAILED: its code did not build",
                  running ? "; its running version keeps serving" : "");
        failed_builds.emplace_back(app_config.name, error);
      }
      if (running) {
        app_config = app->config;  // what runs stays, and is what is stored
        for (const auto& dc : app_config.deployments) wanted_deployments.insert(StrCat(app_config.name, "/", dc.name));
      } else {
        if (!app) app = std::make_unique<Application>();
        app->config = app_config;
        app->deleting = false;
        app->last_deployed_time_s = now_s;
      }
      app->build_error = error;
      continue;
    }
    if (app) app->build_error.clear();
    json new_json = config::ToJson(app_config);
    std::map<std::string, std::string> versions;  // a plugin rebuilt in place changes only its version
    for (const auto& dc : app_config.deployments) versions[dc.name] = DeploymentVersion(dc);
    if (app && !app->deleting && config::ToJson(app->config) == new_json &&
        std::all_of(app_config.deployments.begin(), app_config.deployments.end(), [&](const auto& dc) {
          auto it = deployments_.find(StrCat(app_config.name, "/", dc.name));
          return it != deployments_.end() && it->second->version == versions[dc.name];
        })) {
      // Unchanged, but for what it inherits from the top level: the logging_config in effect, and tracing.
      for (const auto& dc : app_config.deployments) {
        std::string key = StrCat(app_config.name, "/", dc.name);
        Deployment& d = *deployments_[key];
        d.target.logging = dc.logging;
        ++d.in_place_generation;
        wanted_deployments.insert(std::move(key));
      }
      continue;  // unchanged: applying the same config twice changes nothing
    }
    changed = true;
    if (app && !app->deleting && record_history) {
      auto& h = history_[app_config.name];
      h.push_back({app->last_deployed_time_s, config::ToJson(app->config)});
      while (h.size() > options_.history_per_application) h.pop_front();
    }
    if (!app) app = std::make_unique<Application>();
    app->config = app_config;
    app->deleting = false;
    app->last_deployed_time_s = now_s;
    app->message.clear();
    for (const auto& dc : app_config.deployments) {
      std::string key = StrCat(app_config.name, "/", dc.name);
      wanted_deployments.insert(key);
      auto& d = deployments_[key];
      const std::string& version = versions[dc.name];
      if (!d) {
        d = std::make_unique<Deployment>();
        d->application = app_config.name;
        d->key = key;
        d->recovering = recovering;
      }
      if (d->deleting || d->version != version || !SameDeployment(d->target, dc)) {
        if (d->version != version) {
          d->start_failures = 0;
          d->version_failed = false;
          d->message.clear();
          d->reached_target = false;
        }
        d->deleting = false;
        d->version = version;
      }
      d->target = dc;
      ++d->in_place_generation;
      SetChanged(*d);  // its limits may have changed
      if (dc.autoscaling_config) {
        const config::AutoscalingConfig& a = *dc.autoscaling_config;
        if (!d->autoscaler) {
          d->autoscaler = std::make_unique<AutoscalingPolicy>(a);
          d->autoscaled_replicas = d->autoscaler->InitialReplicas();
        } else {
          d->autoscaler->set_config(a);
          d->autoscaled_replicas = std::clamp(d->autoscaled_replicas, a.min_replicas, a.max_replicas);
        }
      } else {
        d->autoscaler.reset();
      }
    }
    FERRY_LOG(kInfo, "controller", recovering ? "recovering" : "deploying", " application ", app_config.name);
  }
  for (auto& [name, app] : apps_) {
    if (!wanted_apps.count(name) && !app->deleting) {
      app->deleting = true;
      changed = true;
      FERRY_LOG(kInfo, "controller", "deleting application ", name);
    }
  }
  for (auto& [key, d] : deployments_) {
    if (!wanted_deployments.count(key) && !d->deleting) {
      d->deleting = true;
      changed = true;
    }
  }
  // The first config counts as a change even when it holds no application: the node opens once it is
  // applied.
  if (changed || !applied_) waiting_all_ready_ = true;
  applied_ = std::move(effective);
  routes_changed_ = true;
  PublishIfChanged();
  absl::Status saved = Persist();
  ScheduleTick();
  if (callbacks_.on_start_failure)
    for (const auto& [name, error] : failed_builds) callbacks_.on_start_failure(StrCat("application ", name), error);
  return saved;
}

absl::Status Controller::Restore() {
  if (!store_) return absl::OkStatus();
  absl::StatusOr<std::optional<std::string>> text = store_->Load();
  if (!text.ok()) return text.status();
  json state = *text ? json::parse(**text, nullptr, false) : json{{"config", nullptr}};
  if (!state.is_object()) return absl::DataLossError("controller state is not JSON");
  history_.clear();  // the store's is the whole history (a cluster's new leader may restore twice)
  if (state.contains("history") && state["history"].is_object()) {
    for (auto& [app, entries] : state["history"].items()) {
      for (auto& e : entries) history_[app].push_back({e.value("time_s", 0.0), e.value("config", json())});
    }
  }
  if (!state.contains("config") || state["config"].is_null()) {
    if (applied_ && !applied_->applications.empty()) {  // someone deleted everything meanwhile
      config::Config nothing = *applied_;
      nothing.applications.clear();
      absl::Status s = ApplyInternal(nothing, false, false);
      AdoptExisting();
      return s;
    }
    AdoptExisting();  // nothing to run: what a previous leader left running stops
    return absl::OkStatus();
  }
  absl::StatusOr<config::Config> config = config::ParseConfig(state["config"].dump(), "controller state", "/");
  if (!config.ok()) return absl::DataLossError(StrCat("stored config no longer loads: ", Message(config.status())));
  ApplyNodeObservability(*config);  // this line and the rest in the restored config's encoding
  FERRY_LOG(kInfo, "controller", "restoring ", config->applications.size(), " applications from the state store");
  absl::Status s = ApplyInternal(*config, true, false);
  if (s.ok()) AdoptExisting();  // before the first tick: replicas a previous leader placed keep serving
  return s;
}

absl::Status Controller::Rollback(const std::string& application) {
  auto app = apps_.find(application);
  if (app == apps_.end() || app->second->deleting)
    return absl::NotFoundError(StrCat("no application named \"", application, "\""));
  auto h = history_.find(application);
  if (h == history_.end() || h->second.empty())
    return absl::FailedPreconditionError(StrCat("application \"", application, "\" has no previous config"));
  json doc = config::ToJson(*applied_);
  json previous = h->second.back().config;
  for (auto& a : doc["applications"])
    if (a["name"] == application) a = previous;
  absl::StatusOr<config::Config> config = config::ParseConfig(doc.dump(), "history", "/");
  if (!config.ok())
    return absl::FailedPreconditionError(StrCat("previous config no longer loads: ", Message(config.status())));
  config->http_options = applied_->http_options;
  config->admin = applied_->admin;
  h->second.pop_back();  // the version rolled back from is not kept: rolling back again goes further back
  FERRY_LOG(kInfo, "controller", "rolling application ", application, " back to its config of ", previous.dump().size(),
            " bytes");
  return ApplyInternal(*config, false, false);
}

absl::Status Controller::DeleteAll() {
  config::Config empty;
  if (applied_) {  // the node's own settings stay
    empty.http_options = applied_->http_options;
    empty.admin = applied_->admin;
    empty.logging_config = applied_->logging_config;
    empty.tracing = applied_->tracing;
  }
  return ApplyInternal(empty, false, true);
}

void Controller::ApplyNodeObservability(const config::Config& config) {
  const config::LoggingConfig logging = config.logging_config.value_or(config::LoggingConfig{});
  Log::SetEncoding(logging.encoding);
  Log::SetLevel(config.logging_config ? logging.log_level : base_log_level_);
  if (!options_.tracer) return;
  tracing::TracingOptions t;
  if (config.tracing) {
    t.otlp_endpoint = config.tracing->otlp_endpoint;
    t.sampling_ratio = config.tracing->sampling_ratio;
  }
  absl::Status s = options_.tracer->Configure(t);  // validated with the config: cannot fail here
  if (!s.ok()) FERRY_LOG(kError, "controller", "tracing not configured: ", Message(s));
}

std::optional<spec::TracingConfig> Controller::ReplicaTracing() const {
  return applied_ ? applied_->tracing : std::nullopt;
}

void Controller::SetChanged(Deployment& d) {
  if (d.set_changed) return;
  d.set_changed = true;
  changed_sets_.push_back(d.key);
}

std::shared_ptr<const endpoints::EndpointSet> Controller::BuildEndpointSet(const Deployment& d,
                                                                           uint64_t version) const {
  auto set = std::make_shared<endpoints::EndpointSet>();
  set->deployment = d.key;
  set->version = version;
  set->max_ongoing_requests = d.target.max_ongoing_requests;
  set->max_queued_requests = d.target.max_queued_requests;
  set->scales_from_zero = d.autoscaler && d.autoscaler->config().min_replicas == 0 && !d.version_failed;
  for (const auto& [id, r] : d.replicas) {
    if (!r.endpoint || !(r.routed || r.draining)) continue;
    set->endpoints.push_back(*r.endpoint);
    set->endpoints.back().state = r.routed ? endpoints::EndpointState::kServing : endpoints::EndpointState::kDraining;
  }
  return set;
}

std::shared_ptr<const endpoints::RouteTable> Controller::BuildRouteTable() const {
  auto table = std::make_shared<endpoints::RouteTable>();
  for (const auto& [name, app] : apps_) {
    if (app->deleting) continue;
    std::string key = StrCat(name, "/", app->config.ingress);
    auto d = deployments_.find(key);
    if (d == deployments_.end()) continue;
    table->routes.push_back({app->config.route_prefix, name, app->config.ingress, std::move(key),
                             d->second->target.logging.enable_access_log});
  }
  for (const auto& [key, d] : deployments_) {
    auto app = apps_.find(d->application);
    if (app == apps_.end() || app->second->deleting || d->deleting || d->target.model_name.empty()) continue;
    table->models.push_back({d->target.model_name, d->target.model_version, d->application, d->target.name, key,
                             d->target.logging.enable_access_log});
  }
  table->access_log = !applied_ || !applied_->logging_config || applied_->logging_config->enable_access_log;
  if (applied_) table->proxy_location = applied_->proxy_location;
  table->head_node = options_.node_id;
  return table;
}

void Controller::PublishIfChanged() {
  if (changed_sets_.empty() && !routes_changed_) return;
  auto next = std::make_shared<endpoints::Snapshot>(*published_);  // unchanged sets are shared, not copied
  next->version = published_->version + 1;
  for (const std::string& key : changed_sets_) {
    auto d = deployments_.find(key);
    if (d == deployments_.end()) {
      next->sets.erase(key);
      continue;
    }
    d->second->set_changed = false;
    next->sets[key] = BuildEndpointSet(*d->second, next->version);
  }
  changed_sets_.clear();
  if (routes_changed_) next->routes = BuildRouteTable();
  routes_changed_ = false;
  published_ = std::move(next);
  publisher_->Publish(published_);
}

absl::Status Controller::Persist() {
  if (!store_) return absl::OkStatus();
  json state = {{"version", 1}};
  if (applied_) {
    config::Config without_deleted = *applied_;
    state["config"] = config::ToJson(without_deleted);
  } else {
    state["config"] = nullptr;
  }
  json history = json::object();
  for (const auto& [app, entries] : history_) {
    json list = json::array();
    for (const auto& e : entries) list.push_back({{"time_s", e.time_s}, {"config", e.config}});
    history[app] = std::move(list);
  }
  state["history"] = std::move(history);
  absl::Status s = store_->Save(state.dump(1));
  if (!s.ok()) FERRY_LOG(kError, "controller", "cannot save the controller state: ", Message(s));
  return s;
}

ApplicationStatus Controller::application_status(const std::string& application) const {
  auto it = apps_.find(application);
  return it == apps_.end() ? ApplicationStatus::kNotStarted : it->second->status;
}

ControllerSnapshot Controller::Snapshot() const {
  ControllerSnapshot out;
  out.pid = getpid();
  out.node_id = options_.node_id;
  out.node_ip = options_.node_ip;
  if (applied_) out.http_options = applied_->http_options;
  if (options_.tracer) {
    out.spans_exported = options_.tracer->exported();
    out.spans_dropped = options_.tracer->dropped();
  }
  auto view_of = [this](const Deployment& d, bool in_config) {
    DeploymentView v;
    v.application = d.application;
    v.name = d.target.name;
    v.in_config = in_config;
    v.status = d.status;
    v.message = d.message;
    v.version = d.version;
    v.target_replicas = d.TargetReplicas();
    v.batching = d.target.batching.has_value();
    v.restarts = d.restarts;
    v.health_check_failures = d.health_check_failures;
    v.ongoing_requests = d.ongoing;
    v.queued_requests = d.queued;
    v.starts = d.starts;
    v.cold_starts = d.cold_starts;
    for (const auto& [id, r] : d.replicas) {
      ReplicaView rv{
          id, r.state, r.pid, r.start_time_s, r.version, std::nullopt, r.stats, r.location.node_id, r.location.node_ip};
      if (r.endpoint) rv.in_flight = d.InFlight(r.endpoint->key);
      v.replicas.push_back(std::move(rv));
    }
    if (d.autoscaler) {
      AutoscalingView a;
      a.target_replicas = d.autoscaled_replicas;
      a.min_replicas = d.autoscaler->config().min_replicas;
      a.max_replicas = d.autoscaler->config().max_replicas;
      a.average_load = d.autoscaler->AverageLoad(clock_->Now());
      if (d.last_cold_start_s >= 0) a.last_cold_start_s = d.last_cold_start_s;
      a.decisions.assign(d.decisions.begin(), d.decisions.end());
      v.autoscaling = std::move(a);
    }
    return v;
  };
  for (const auto& [name, app] : apps_) {
    ApplicationView a;
    a.name = name;
    a.route_prefix = app->config.route_prefix;
    a.status = app->status;
    a.message = app->message;
    a.last_deployed_time_s = app->last_deployed_time_s;
    a.deployed_app_config = config::ToJson(app->config);
    std::set<std::string> listed;
    for (const auto& dc : app->config.deployments) {
      auto it = deployments_.find(StrCat(name, "/", dc.name));
      if (it == deployments_.end()) continue;
      listed.insert(it->first);
      a.deployments.push_back(view_of(*it->second, true));
    }
    // Deployments that left the config but still have replicas stopping.
    for (auto it = deployments_.lower_bound(StrCat(name, "/")); it != deployments_.end(); ++it) {
      if (it->second->application != name) break;
      if (!listed.count(it->first)) a.deployments.push_back(view_of(*it->second, false));
    }
    out.applications.push_back(std::move(a));
  }
  return out;
}

json Controller::HistoryJson() const {
  json out = json::object();
  for (const auto& [app, entries] : history_) {
    json list = json::array();
    for (const auto& e : entries) list.push_back({{"deployed_time_s", e.time_s}, {"config", e.config}});
    out[app] = std::move(list);
  }
  return out;
}

}  // namespace ferry::controller
