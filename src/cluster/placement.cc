#include "cluster/placement.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <tuple>

#include "common/common.h"

namespace ferry::cluster {
namespace {

constexpr double kEpsilon = 1e-9;

std::string Number(double v) {
  std::ostringstream out;
  out << v;
  std::string s = out.str();
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

}  // namespace

namespace detail {

// The state Place works on: what each node has left, and who runs where.
struct Cluster {
  const std::vector<PlacementNode>& nodes;
  std::map<std::string, ResourceSet> used;                           // by node, listed or not
  std::map<std::string, ResourceSet> free;                           // by listed node: its total less used
  std::map<std::string, int> replicas;                               // by node: replicas of all deployments
  std::map<std::pair<std::string, std::string>, int> of_deployment;  // (node, deployment) -> replicas
  std::map<std::pair<std::string, std::string>, int> of_version;     // (node, deployment@version) -> replicas

  Cluster(const std::vector<PlacementNode>& n, const std::vector<PlacedReplica>& placed) : nodes(n) {
    Renode();
    for (const PlacedReplica& r : placed) Take(r);
  }
  // `nodes` changed (a node came, went, or changed its resources): what is taken stays taken.
  void Renode() {
    free.clear();
    for (const PlacementNode& node : nodes) {
      ResourceSet& f = free[node.node_id] = node.total;
      if (auto u = used.find(node.node_id); u != used.end())
        for (const auto& [k, v] : u->second) f[k] -= v;
    }
  }
  void Take(const PlacedReplica& r) {
    for (const auto& [node, resources] : r.taken) {
      ResourceSet& u = used[node];
      for (const auto& [k, v] : resources) u[k] += v;
      auto f = free.find(node);
      if (f == free.end()) continue;  // a node that is gone
      for (const auto& [k, v] : resources) f->second[k] -= v;
    }
    if (!r.node_id.empty() && !r.leaving) {
      ++replicas[r.node_id];
      ++of_deployment[{r.node_id, r.deployment}];
      ++of_version[{r.node_id, VersionKey(r.deployment, r.version)}];
    }
  }
  void Give(const PlacedReplica& r) {  // undoes Take
    for (const auto& [node, resources] : r.taken) {
      ResourceSet& u = used[node];
      for (const auto& [k, v] : resources) u[k] -= v;
      auto f = free.find(node);
      if (f == free.end()) continue;
      for (const auto& [k, v] : resources) f->second[k] += v;
    }
    if (!r.node_id.empty() && !r.leaving) {
      if (--replicas[r.node_id] <= 0) replicas.erase(r.node_id);
      if (--of_deployment[{r.node_id, r.deployment}] <= 0) of_deployment.erase({r.node_id, r.deployment});
      const std::pair<std::string, std::string> v{r.node_id, VersionKey(r.deployment, r.version)};
      if (--of_version[v] <= 0) of_version.erase(v);
    }
  }
  bool Fits(const std::string& node, const ResourceSet& need) const {
    const ResourceSet& f = free.at(node);
    for (const auto& [k, v] : need) {
      if (v <= 0) continue;
      auto it = f.find(k);
      if (it == f.end() || it->second + kEpsilon < v) return false;
    }
    return true;
  }
  static std::string VersionKey(const std::string& deployment, const std::string& version) {
    return deployment + "@" + version;
  }
  // The order among nodes that fit: fewest of the deployment's version (a rolling update's new replicas
  // spread among themselves while the old ones still run), fewest of the deployment, fewest in all, most
  // free CPU, name.
  auto SpreadKey(const PlacementNode& n, const std::string& deployment, const std::string& version_key) const {
    auto v = of_version.find({n.node_id, version_key});
    auto d = of_deployment.find({n.node_id, deployment});
    auto all = replicas.find(n.node_id);
    const ResourceSet& f = free.at(n.node_id);
    auto cpu = f.find("CPU");
    return std::make_tuple(v == of_version.end() ? 0 : v->second, d == of_deployment.end() ? 0 : d->second,
                           all == replicas.end() ? 0 : all->second, -(cpu == f.end() ? 0.0 : cpu->second),
                           std::string_view(n.node_id));
  }
};

}  // namespace detail

namespace {

using detail::Cluster;

bool LabelsMatch(const PlacementNode& n, const std::map<std::string, std::string>& selector) {
  for (const auto& [k, v] : selector) {
    auto it = n.labels.find(k);
    if (it == n.labels.end() || it->second != v) return false;
  }
  return true;
}

ResourceSet Sum(const std::vector<ResourceSet>& sets) {
  ResourceSet total;
  for (const ResourceSet& s : sets)
    for (const auto& [k, v] : s) total[k] += v;
  return total;
}

// How far `free` is from `need`: (resources short, their relative shortfall summed).
std::pair<int, double> Shortfall(const ResourceSet& free, const ResourceSet& need) {
  int count = 0;
  double relative = 0;
  for (const auto& [k, v] : need) {
    if (v <= 0) continue;
    auto it = free.find(k);
    const double have = it == free.end() ? 0 : it->second;
    if (have + kEpsilon < v) {
      ++count;
      relative += (v - std::max(0.0, have)) / v;
    }
  }
  return {count, relative};
}

std::string Lacks(const ResourceSet& free, const ResourceSet& need) {
  std::string out;
  for (const auto& [k, v] : need) {
    if (v <= 0) continue;
    auto it = free.find(k);
    const double have = it == free.end() ? 0 : std::max(0.0, it->second);
    if (have + kEpsilon < v)
      StrAppend(&out, out.empty() ? "" : ", ", k, " (needs ", Number(v), ", has ", Number(have), " free)");
  }
  return out;
}

// Why nothing fits `need` on `eligible` nodes: the closest node's shortfall (a node that could hold it
// once emptied comes before one that never could).
std::string ClosestLacks(const Cluster& c, const std::vector<const PlacementNode*>& eligible, const ResourceSet& need) {
  const PlacementNode* best = nullptr;
  std::tuple<bool, int, double> best_gap;
  for (const PlacementNode* n : eligible) {
    auto [count, relative] = Shortfall(c.free.at(n->node_id), need);
    auto gap = std::make_tuple(Shortfall(n->total, need).first > 0, count, relative);
    if (!best || gap < best_gap) {
      best = n;
      best_gap = gap;
    }
  }
  if (!best) return "";
  return StrCat("the node closest to fitting, ", best->node_id, ", lacks ", Lacks(c.free.at(best->node_id), need));
}

Placement PlaceOne(Cluster& c, const ReplicaRequest& r) {
  Placement p;
  p.replica_id = r.replica_id;
  std::vector<const PlacementNode*> eligible;
  bool any_live = false, any_labelled = false;
  for (const PlacementNode& n : c.nodes) {
    if (!n.schedulable) continue;
    any_live = true;
    if (!LabelsMatch(n, r.label_selector)) continue;
    any_labelled = true;
    eligible.push_back(&n);
  }
  if (!any_live) {
    p.why_not = "no live node takes replicas (every node is dead or draining)";
    return p;
  }
  if (!any_labelled) {
    std::string labels;
    for (const auto& [k, v] : r.label_selector) StrAppend(&labels, labels.empty() ? "" : ",", k, "=", v);
    p.why_not = StrCat("no live node has the labels ", labels);
    return p;
  }
  // The replica's own node (bundle 0's) must have room under max_replicas_per_node.
  auto under_cap = [&](const PlacementNode* n) {
    if (!r.max_replicas_per_node) return true;
    auto it = c.of_deployment.find({n->node_id, r.deployment});
    return (it == c.of_deployment.end() ? 0 : it->second) < *r.max_replicas_per_node;
  };
  // Each node's spread key is computed once (a sort's comparisons would look it up again and again).
  const std::string version_key = Cluster::VersionKey(r.deployment, r.version);
  using Keyed = std::pair<decltype(c.SpreadKey(*eligible.front(), r.deployment, version_key)), const PlacementNode*>;
  std::vector<Keyed> keyed;
  keyed.reserve(eligible.size());
  for (const PlacementNode* n : eligible) keyed.emplace_back(c.SpreadKey(*n, r.deployment, version_key), n);
  std::sort(keyed.begin(), keyed.end(), [](const Keyed& a, const Keyed& b) { return a.first < b.first; });
  eligible.clear();
  std::vector<const PlacementNode*> hosts;  // may run the replica itself
  for (const auto& [key, n] : keyed) {
    eligible.push_back(n);
    if (under_cap(n)) hosts.push_back(n);
  }
  if (hosts.empty()) {
    p.why_not = StrCat("every node it may use already runs max_replicas_per_node (", *r.max_replicas_per_node,
                       ") of its replicas");
    return p;
  }

  PlacedReplica placed;
  placed.replica_id = r.replica_id;
  placed.deployment = r.deployment;
  placed.version = r.version;
  if (r.bundles.empty()) {
    for (const PlacementNode* n : hosts) {
      if (!c.Fits(n->node_id, r.resources)) continue;
      p.node_id = n->node_id;
      placed.node_id = n->node_id;
      placed.taken[n->node_id] = r.resources;
      c.Take(placed);
      return p;
    }
    p.why_not = ClosestLacks(c, hosts, r.resources);
    return p;
  }

  // Bundles: a tentative copy of what is free, so a group that does not fit whole takes nothing.
  const ResourceSet whole = Sum(r.bundles);
  std::map<std::string, ResourceSet> free = c.free;
  auto fits = [&](const std::string& node, const ResourceSet& need) {
    for (const auto& [k, v] : need) {
      if (v <= 0) continue;
      auto it = free[node].find(k);
      if (it == free[node].end() || it->second + kEpsilon < v) return false;
    }
    return true;
  };
  auto take = [&](const std::string& node, const ResourceSet& need) {
    for (const auto& [k, v] : need) free[node][k] -= v;
    for (const auto& [k, v] : need) placed.taken[node][k] += v;
  };
  std::vector<std::string> chosen;
  const bool pack = r.strategy == BundleStrategy::kPack || r.strategy == BundleStrategy::kStrictPack;
  if (pack) {
    for (const PlacementNode* n : hosts) {  // all on one node, when one can hold them all
      if (!fits(n->node_id, whole)) continue;
      for (const ResourceSet& b : r.bundles) {
        take(n->node_id, b);
        chosen.push_back(n->node_id);
      }
      break;
    }
    if (chosen.empty() && r.strategy == BundleStrategy::kStrictPack) {
      p.why_not = StrCat("STRICT_PACK needs one node with all its bundles, ", ResourcesText(whole), "; ",
                         ClosestLacks(c, hosts, whole));
      return p;
    }
    if (chosen.empty()) {  // PACK, best effort: each bundle where the earlier ones went when it fits
      for (size_t i = 0; i < r.bundles.size(); ++i) {
        const std::vector<const PlacementNode*>& pool = i == 0 ? hosts : eligible;
        const PlacementNode* pick = nullptr;
        for (const std::string& used : chosen)
          if (!pick && fits(used, r.bundles[i]))
            for (const PlacementNode* n : pool)
              if (n->node_id == used) pick = n;
        for (const PlacementNode* n : pool)
          if (!pick && fits(n->node_id, r.bundles[i])) pick = n;
        if (!pick) {
          p.why_not = StrCat("bundle ", i, " ", ResourcesText(r.bundles[i]), " fits on no node; ",
                             ClosestLacks(c, pool, r.bundles[i]));
          return p;
        }
        take(pick->node_id, r.bundles[i]);
        chosen.push_back(pick->node_id);
      }
    }
  } else {  // SPREAD and STRICT_SPREAD: each bundle on a node no earlier bundle took, if it can
    for (size_t i = 0; i < r.bundles.size(); ++i) {
      const std::vector<const PlacementNode*>& pool = i == 0 ? hosts : eligible;
      const PlacementNode* pick = nullptr;
      for (const PlacementNode* n : pool)
        if (!pick && std::find(chosen.begin(), chosen.end(), n->node_id) == chosen.end() &&
            fits(n->node_id, r.bundles[i]))
          pick = n;
      if (!pick && r.strategy == BundleStrategy::kSpread)
        for (const PlacementNode* n : pool)
          if (!pick && fits(n->node_id, r.bundles[i])) pick = n;
      if (!pick) {
        p.why_not = r.strategy == BundleStrategy::kStrictSpread
                        ? StrCat("STRICT_SPREAD needs ", r.bundles.size(), " distinct nodes for its bundles; bundle ",
                                 i, " ", ResourcesText(r.bundles[i]), " fits on no node left")
                        : StrCat("bundle ", i, " ", ResourcesText(r.bundles[i]), " fits on no node; ",
                                 ClosestLacks(c, pool, r.bundles[i]));
        return p;
      }
      take(pick->node_id, r.bundles[i]);
      chosen.push_back(pick->node_id);
    }
  }
  p.node_id = chosen.front();
  p.bundle_nodes = chosen;
  placed.node_id = p.node_id;
  c.Take(placed);
  return p;
}

// What a placement takes, as PlacedReplica (PlaceOne took the same).
PlacedReplica PlacedFrom(const ReplicaRequest& r, const Placement& p) {
  PlacedReplica placed;
  placed.replica_id = r.replica_id;
  placed.deployment = r.deployment;
  placed.version = r.version;
  placed.node_id = p.node_id;
  if (r.bundles.empty()) {
    placed.taken[p.node_id] = r.resources;
  } else {
    for (size_t i = 0; i < p.bundle_nodes.size() && i < r.bundles.size(); ++i)
      for (const auto& [k, v] : r.bundles[i]) placed.taken[p.bundle_nodes[i]][k] += v;
  }
  return placed;
}

}  // namespace

std::string ResourcesText(const ResourceSet& r) {
  std::string out = "{";
  for (const auto& [k, v] : r) StrAppend(&out, out.size() > 1 ? ", " : "", "\"", k, "\": ", Number(v));
  return out + "}";
}

std::optional<BundleStrategy> ParseBundleStrategy(const std::string& name) {
  if (name == "PACK") return BundleStrategy::kPack;
  if (name == "SPREAD") return BundleStrategy::kSpread;
  if (name == "STRICT_PACK") return BundleStrategy::kStrictPack;
  if (name == "STRICT_SPREAD") return BundleStrategy::kStrictSpread;
  return std::nullopt;
}

std::vector<Placement> Place(const std::vector<PlacementNode>& nodes, const std::vector<PlacedReplica>& placed,
                             const std::vector<ReplicaRequest>& requests) {
  Cluster c(nodes, placed);
  std::vector<Placement> out;
  out.reserve(requests.size());
  for (const ReplicaRequest& r : requests) out.push_back(PlaceOne(c, r));
  return out;
}

std::vector<std::string> ChooseToStop(const std::vector<std::string>& candidates,
                                      const std::vector<PlacedReplica>& placed, size_t count) {
  std::map<std::string, const PlacedReplica*> by_id;
  std::map<std::string, int> per_node;
  for (const PlacedReplica& r : placed) {
    by_id[r.replica_id] = &r;
    if (!r.node_id.empty()) ++per_node[r.node_id];
  }
  std::vector<std::pair<std::tuple<int, int, std::string>, std::string>> ranked;
  for (const std::string& id : candidates) {
    auto it = by_id.find(id);
    if (it == by_id.end() || it->second->node_id.empty()) {
      ranked.push_back({{0, 0, id}, id});  // not placed: first
    } else {
      ranked.push_back({{1, per_node[it->second->node_id], it->second->node_id + "/" + id}, id});
    }
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < ranked.size() && out.size() < count; ++i) out.push_back(ranked[i].second);
  return out;
}

namespace {

std::string UnschedulableMessageOf(const Cluster& c, const std::string& application, const std::string& deployment,
                                   size_t count, const ReplicaRequest& request, const std::string& why_not);

}  // namespace

std::string UnschedulableMessage(const std::string& application, const std::string& deployment, size_t count,
                                 const ReplicaRequest& request, const std::vector<PlacementNode>& nodes,
                                 const std::vector<PlacedReplica>& placed, const std::string& why_not) {
  return UnschedulableMessageOf(Cluster(nodes, placed), application, deployment, count, request, why_not);
}

PlacementState::PlacementState() : cluster_(std::make_unique<Cluster>(nodes_, std::vector<PlacedReplica>{})) {}
PlacementState::~PlacementState() = default;

void PlacementState::SetNodes(std::vector<PlacementNode> nodes) {
  nodes_ = std::move(nodes);
  cluster_->Renode();  // not every placed replica taken again: a node's loss among 10,000 replicas is cheap
}

void PlacementState::Set(PlacedReplica replica) {
  Remove(replica.replica_id);
  cluster_->Take(replica);
  std::string id = replica.replica_id;
  placed_.emplace(std::move(id), std::move(replica));
}

void PlacementState::Remove(const std::string& replica_id) {
  auto it = placed_.find(replica_id);
  if (it == placed_.end()) return;
  cluster_->Give(it->second);
  placed_.erase(it);
}

void PlacementState::Clear() {
  placed_.clear();
  cluster_ = std::make_unique<Cluster>(nodes_, std::vector<PlacedReplica>{});
}

Placement PlacementState::Place(const ReplicaRequest& request) {
  Remove(request.replica_id);
  Placement p = PlaceOne(*cluster_, request);  // takes what it places
  if (!p.node_id.empty()) placed_.emplace(request.replica_id, PlacedFrom(request, p));
  return p;
}

std::string PlacementState::UnschedulableMessage(const std::string& application, const std::string& deployment,
                                                 size_t count, const ReplicaRequest& request,
                                                 const std::string& why_not) const {
  return UnschedulableMessageOf(*cluster_, application, deployment, count, request, why_not);
}

namespace {

std::string UnschedulableMessageOf(const Cluster& c, const std::string& application, const std::string& deployment,
                                   size_t count, const ReplicaRequest& request, const std::string& why_not) {
  const std::vector<PlacementNode>& nodes = c.nodes;
  ResourceSet available;
  for (const PlacementNode& n : nodes)
    if (n.schedulable)
      for (const auto& [k, v] : c.free.at(n.node_id)) available[k] += std::max(0.0, v);
  std::string required;
  if (request.bundles.empty()) {
    required = ResourcesText(request.resources);
  } else {
    required = "[";
    for (size_t i = 0; i < request.bundles.size(); ++i)
      StrAppend(&required, i ? ", " : "", ResourcesText(request.bundles[i]));
    required += "]";
  }
  return StrCat("Deployment '", deployment, "' in application '", application, "' has ", count, " replica",
                count == 1 ? "" : "s", " that cannot be scheduled. Resources required for each replica: ", required,
                ", total resources available: ", ResourcesText(available), ". ", why_not.empty() ? "" : why_not,
                why_not.empty() ? "" : ". ", "Use `ferry nodes` for more details.");
}

}  // namespace

}  // namespace ferry::cluster
