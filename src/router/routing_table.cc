#include "router/routing_table.h"

#include <algorithm>

namespace ferry::router {

bool PrefixMatches(std::string_view prefix, std::string_view path) {
  if (prefix == "/") return !path.empty() && path[0] == '/';
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  return path.size() == prefix.size() || path[prefix.size()] == '/';
}

RoutingTable::RoutingTable(std::vector<Route> routes) : routes_(std::move(routes)) {
  std::stable_sort(routes_.begin(), routes_.end(),
                   [](const Route& a, const Route& b) { return a.route_prefix.size() > b.route_prefix.size(); });
}

const Route* RoutingTable::Match(std::string_view path) const {
  for (const Route& r : routes_)
    if (PrefixMatches(r.route_prefix, path)) return &r;
  return nullptr;
}

}  // namespace ferry::router
