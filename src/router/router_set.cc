#include "router/router_set.h"

#include "common/common.h"

namespace ferry::router {

RouterSet::RouterSet(std::function<void()> wake, uint64_t seed, std::string local_node)
    : wake_(std::move(wake)), seed_(seed), local_node_(std::move(local_node)) {}

RouterSet::~RouterSet() {
  MutexLock lock(&mu_);
  for (auto& [key, e] : routers_) {  // leases still held may outlive this; their routers must not call it
    e.router->SetStarvedHook(nullptr);
    e.router->SetDrainedHook(nullptr);
  }
}

std::shared_ptr<Router> RouterSet::Find(const std::string& deployment_key) const {
  MutexLock lock(&mu_);
  auto it = routers_.find(deployment_key);
  return it == routers_.end() ? nullptr : it->second.router;
}

void RouterSet::OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) {
  MutexLock lock(&mu_);
  if (snapshot->version < applied_version_) return;  // a late delivery of an older snapshot
  bool table_changed = snapshot->routes != routes_;
  for (auto it = routers_.begin(); it != routers_.end();) {
    if (snapshot->sets.count(it->first)) {
      ++it;
      continue;
    }
    // The deployment is gone; requests still holding leases finish on the router they have.
    it->second.router->SetStarvedHook(nullptr);
    it->second.router->SetDrainedHook(nullptr);
    it = routers_.erase(it);
    table_changed = true;
  }
  for (const auto& [key, set] : snapshot->sets) {
    Entry& e = routers_[key];
    if (!e.router) {
      std::string name = key.substr(key.find('/') + 1);
      e.router = Router::Create(std::move(name), set->max_ongoing_requests, set->max_queued_requests,
                                seed_ ? seed_ + routers_.size() : 0, local_node_);
      if (wake_) {
        e.router->SetStarvedHook(wake_);
        e.router->SetDrainedHook(wake_);
      }
      table_changed = true;
    }
    if (e.set != set) {
      e.router->Update(*set);
      e.set = set;
    }
  }
  routes_ = snapshot->routes;
  applied_version_ = snapshot->version;
  if (table_changed) PublishTableLocked();
}

std::shared_ptr<Router> RouterSet::RouterOfLocked(const std::string& key) const {
  auto it = routers_.find(key);
  return it == routers_.end() ? nullptr : it->second.router;
}

void RouterSet::PublishTableLocked() {
  // proxy_location: this node's proxy may not be one that serves HTTP.
  std::string refusal;
  if (routes_->proxy_location == "Disabled")
    refusal = "proxy_location is Disabled: no proxy serves HTTP; call the deployments through handles";
  else if (routes_->proxy_location == "HeadOnly" && !local_node_.empty() && local_node_ != routes_->head_node)
    refusal = ferry::StrCat("proxy_location is HeadOnly: only the head node's proxy (node ", routes_->head_node,
                            ", whose controller leads) serves HTTP");
  if (!refusal.empty()) {
    routing_.Publish(std::make_shared<const RoutingTable>(std::vector<Route>{}, std::vector<ModelRoute>{},
                                                          routes_->access_log, std::move(refusal)));
    return;
  }
  std::vector<Route> routes;
  for (const endpoints::RouteEntry& r : routes_->routes) {
    std::shared_ptr<Router> router = RouterOfLocked(r.deployment_key);
    if (!router) continue;  // published without its set: not routable yet
    routes.push_back({r.route_prefix, r.application, r.ingress_deployment, std::move(router), r.access_log});
  }
  std::vector<ModelRoute> models;
  for (const endpoints::ModelEntry& m : routes_->models) {
    std::shared_ptr<Router> router = RouterOfLocked(m.deployment_key);
    if (!router) continue;
    models.push_back(
        {m.name,
         m.version,
         {ferry::StrCat("/v2/models/", m.name), m.application, m.deployment, std::move(router), m.access_log}});
  }
  routing_.Publish(std::make_shared<const RoutingTable>(std::move(routes), std::move(models), routes_->access_log));
}

endpoints::ConsumerReport RouterSet::Report() const {
  MutexLock lock(&mu_);
  endpoints::ConsumerReport report;
  report.applied_version = applied_version_;
  report.deployments.reserve(routers_.size());
  for (const auto& [key, e] : routers_) {
    endpoints::DeploymentLoad load = e.router->Load();
    load.deployment = key;
    report.deployments.push_back(std::move(load));
  }
  return report;
}

}  // namespace ferry::router
