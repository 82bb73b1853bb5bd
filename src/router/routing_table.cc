#include "router/routing_table.h"

#include <algorithm>

namespace ferry::router {

bool PrefixMatches(std::string_view prefix, std::string_view path) {
  if (prefix == "/") return !path.empty() && path[0] == '/';
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  return path.size() == prefix.size() || path[prefix.size()] == '/';
}

RoutingTable::RoutingTable(std::vector<Route> routes, std::vector<ModelRoute> models, bool access_log,
                           std::string refusal)
    : routes_(std::move(routes)), models_(std::move(models)), access_log_(access_log), refusal_(std::move(refusal)) {
  std::stable_sort(routes_.begin(), routes_.end(),
                   [](const Route& a, const Route& b) { return a.route_prefix.size() > b.route_prefix.size(); });
  std::sort(models_.begin(), models_.end(), [](const ModelRoute& a, const ModelRoute& b) { return a.name < b.name; });
}

const ModelRoute* RoutingTable::FindModel(std::string_view name) const {
  auto it = std::lower_bound(models_.begin(), models_.end(), name,
                             [](const ModelRoute& m, std::string_view n) { return m.name < n; });
  return it != models_.end() && it->name == name ? &*it : nullptr;
}

const Route* RoutingTable::Match(std::string_view path) const {
  for (const Route& r : routes_)
    if (PrefixMatches(r.route_prefix, path)) return &r;
  return nullptr;
}

}  // namespace ferry::router
