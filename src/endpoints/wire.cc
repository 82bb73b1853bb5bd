#include "endpoints/wire.h"

#include "common/common.h"

namespace ferry::endpoints {

using nlohmann::json;

namespace {

// Reads fields of one JSON object, keeping the first error (naming `where` and the field).
class Fields {
 public:
  Fields(const json& object, std::string where) : object_(object), where_(std::move(where)) {
    if (!object_.is_object()) Fail("expected an object");
  }
  template <typename T>
  void Get(const char* key, T* out) {
    if (!status_.ok() || !object_.contains(key)) return;
    try {
      *out = object_.at(key).get<T>();
    } catch (const std::exception& e) {
      Fail(StrCat(key, ": ", e.what()));
    }
  }
  const json& Array(const char* key) {
    static const json kEmpty = json::array();
    if (!status_.ok() || !object_.contains(key)) return kEmpty;
    if (!object_.at(key).is_array()) {
      Fail(StrCat(key, ": expected an array"));
      return kEmpty;
    }
    return object_.at(key);
  }
  void Fail(std::string_view message) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(StrCat(where_, ": ", message));
  }
  const absl::Status& status() const { return status_; }

 private:
  const json& object_;
  std::string where_;
  absl::Status status_;
};

}  // namespace

json SnapshotToJson(const Snapshot& snapshot) {
  json sets = json::array();
  for (const auto& [key, set] : snapshot.sets) {
    json endpoints = json::array();
    for (const Endpoint& e : set->endpoints) {
      endpoints.push_back({{"replica_id", e.replica_id},
                           {"address", e.address},
                           {"tcp_address", e.tcp_address},
                           {"key", e.key},
                           {"version", e.version},
                           {"node_id", e.node_id},
                           {"draining", e.state == EndpointState::kDraining}});
      if (!e.model_ids.empty()) endpoints.back()["model_ids"] = e.model_ids;
    }
    sets.push_back({{"deployment", set->deployment},
                    {"version", set->version},
                    {"max_ongoing_requests", set->max_ongoing_requests},
                    {"max_queued_requests", set->max_queued_requests},
                    {"scales_from_zero", set->scales_from_zero},
                    {"endpoints", std::move(endpoints)}});
  }
  json routes = json::array();
  for (const RouteEntry& r : snapshot.routes->routes)
    routes.push_back({{"route_prefix", r.route_prefix},
                      {"application", r.application},
                      {"ingress_deployment", r.ingress_deployment},
                      {"deployment_key", r.deployment_key},
                      {"access_log", r.access_log}});
  json models = json::array();
  for (const ModelEntry& m : snapshot.routes->models)
    models.push_back({{"name", m.name},
                      {"version", m.version},
                      {"application", m.application},
                      {"deployment", m.deployment},
                      {"deployment_key", m.deployment_key},
                      {"access_log", m.access_log}});
  return {{"version", snapshot.version},
          {"sets", std::move(sets)},
          {"routes", std::move(routes)},
          {"models", std::move(models)},
          {"access_log", snapshot.routes->access_log},
          {"proxy_location", snapshot.routes->proxy_location},
          {"head_node", snapshot.routes->head_node}};
}

absl::StatusOr<std::shared_ptr<const Snapshot>> SnapshotFromJson(const json& j) {
  auto snapshot = std::make_shared<Snapshot>();
  auto routes = std::make_shared<RouteTable>();
  Fields top(j, "snapshot");
  top.Get("version", &snapshot->version);
  for (const json& s : top.Array("sets")) {
    auto set = std::make_shared<EndpointSet>();
    Fields f(s, "snapshot set");
    f.Get("deployment", &set->deployment);
    f.Get("version", &set->version);
    f.Get("max_ongoing_requests", &set->max_ongoing_requests);
    f.Get("max_queued_requests", &set->max_queued_requests);
    f.Get("scales_from_zero", &set->scales_from_zero);
    for (const json& e : f.Array("endpoints")) {
      Endpoint endpoint;
      bool draining = false;
      Fields g(e, "snapshot endpoint");
      g.Get("replica_id", &endpoint.replica_id);
      g.Get("address", &endpoint.address);
      g.Get("tcp_address", &endpoint.tcp_address);
      g.Get("key", &endpoint.key);
      g.Get("version", &endpoint.version);
      g.Get("node_id", &endpoint.node_id);
      g.Get("draining", &draining);
      g.Get("model_ids", &endpoint.model_ids);
      if (!g.status().ok()) return g.status();
      endpoint.state = draining ? EndpointState::kDraining : EndpointState::kServing;
      set->endpoints.push_back(std::move(endpoint));
    }
    if (!f.status().ok()) return f.status();
    if (set->deployment.empty()) return absl::InvalidArgumentError("snapshot set: no deployment");
    snapshot->sets[set->deployment] = std::move(set);
  }
  for (const json& r : top.Array("routes")) {
    RouteEntry route;
    Fields f(r, "snapshot route");
    f.Get("route_prefix", &route.route_prefix);
    f.Get("application", &route.application);
    f.Get("ingress_deployment", &route.ingress_deployment);
    f.Get("deployment_key", &route.deployment_key);
    f.Get("access_log", &route.access_log);
    if (!f.status().ok()) return f.status();
    routes->routes.push_back(std::move(route));
  }
  for (const json& m : top.Array("models")) {
    ModelEntry model;
    Fields f(m, "snapshot model");
    f.Get("name", &model.name);
    f.Get("version", &model.version);
    f.Get("application", &model.application);
    f.Get("deployment", &model.deployment);
    f.Get("deployment_key", &model.deployment_key);
    f.Get("access_log", &model.access_log);
    if (!f.status().ok()) return f.status();
    routes->models.push_back(std::move(model));
  }
  top.Get("access_log", &routes->access_log);
  top.Get("proxy_location", &routes->proxy_location);
  top.Get("head_node", &routes->head_node);
  if (!top.status().ok()) return top.status();
  snapshot->routes = std::move(routes);
  return std::shared_ptr<const Snapshot>(std::move(snapshot));
}

json ReportToJson(const ConsumerReport& report) {
  json deployments = json::array();
  for (const DeploymentLoad& d : report.deployments) {
    json in_flight = json::array();
    for (const auto& [key, n] : d.in_flight) in_flight.push_back({key, n});
    deployments.push_back(
        {{"deployment", d.deployment}, {"queued", d.queued}, {"ongoing", d.ongoing}, {"in_flight", in_flight}});
  }
  return {{"applied_version", report.applied_version}, {"deployments", std::move(deployments)}};
}

absl::StatusOr<ConsumerReport> ReportFromJson(const json& j) {
  ConsumerReport report;
  Fields top(j, "report");
  top.Get("applied_version", &report.applied_version);
  for (const json& d : top.Array("deployments")) {
    DeploymentLoad load;
    Fields f(d, "report deployment");
    f.Get("deployment", &load.deployment);
    f.Get("queued", &load.queued);
    f.Get("ongoing", &load.ongoing);
    f.Get("in_flight", &load.in_flight);
    if (!f.status().ok()) return f.status();
    report.deployments.push_back(std::move(load));
  }
  if (!top.status().ok()) return top.status();
  return report;
}

}  // namespace ferry::endpoints
