// Where a cluster's replicas run: Ray Serve's scheduling rules over the nodes' declared resources, as a
// pure function of the cluster's state (the leader's controller calls it each tick; tests call it on
// fake clusters).
//   - A replica needs its ray_actor_options: num_cpus (Ray's default 1) as "CPU", num_gpus as "GPU",
//     memory as "memory" (bytes), and each of `resources` by name, against each node's declared
//     resources minus what the replicas already placed there take.
//   - With placement_group_bundles, the bundles are reserved instead (the replica runs in bundle 0) and
//     placed by placement_group_strategy: PACK (as few nodes as possible, best effort), STRICT_PACK (one
//     node, or nowhere), SPREAD (distinct nodes, best effort), STRICT_SPREAD (distinct nodes, or nowhere).
//   - max_replicas_per_node caps a deployment's replicas on any one node; a label selector restricts the
//     nodes (every label must match). Only live nodes that are not draining take new replicas.
//   - Otherwise replicas spread (Ray's default SPREAD): the feasible node with the fewest replicas of the
//     same deployment, then the fewest replicas in all, then the most free CPU.
//   - A replica that fits nowhere gets a message in Ray's words naming what it needs and what the node
//     closest to fitting lacks.
// Downscaling stops, first, replicas not placed yet, then those on the nodes with the fewest replicas in
// all (so nodes empty out and can be given back), as Ray does.
// Thread-compatible: plain values.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry::cluster {

using ResourceSet = std::map<std::string, double>;  // "CPU", "GPU", "memory", custom names

std::string ResourcesText(const ResourceSet& r);  // {"CPU": 1.0, "GPU": 1.0}, as Ray prints them

enum class BundleStrategy { kPack, kSpread, kStrictPack, kStrictSpread };
// "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD" (Ray's names); nullopt for anything else.
std::optional<BundleStrategy> ParseBundleStrategy(const std::string& name);

struct PlacementNode {
  std::string node_id;
  ResourceSet total;  // as declared (--resources)
  std::map<std::string, std::string> labels;
  bool schedulable = true;  // alive and not draining
};

// A replica that already has a node (running, starting, or placed this tick).
struct PlacedReplica {
  std::string replica_id;
  std::string deployment;  // "app/name"
  // What it takes on each node it occupies: one entry without bundles, one per node its bundles went to.
  std::map<std::string, ResourceSet> taken;  // node id -> resources
  std::string node_id;                       // where the replica itself runs (bundle 0's node)
  // Asked to stop: it holds its resources until it is gone, but no longer counts among its deployment's
  // replicas on its node (so a rolling update's replacements spread as the new version's replicas).
  bool leaving = false;
  std::string version;  // the deployment's version it runs
};

struct ReplicaRequest {
  std::string replica_id;
  std::string deployment;  // "app/name"
  std::string version;     // the deployment's version: its replicas spread among themselves first
  ResourceSet resources;   // the replica's own (ray_actor_options); ignored when there are bundles
  std::vector<ResourceSet> bundles;
  BundleStrategy strategy = BundleStrategy::kPack;
  std::optional<int> max_replicas_per_node;
  std::map<std::string, std::string> label_selector;
};

struct Placement {
  std::string replica_id;
  std::string node_id;                    // empty: it fits nowhere now
  std::vector<std::string> bundle_nodes;  // each bundle's node, with bundles
  std::string why_not;                    // when it fits nowhere: what it needs and what the best node lacks
};

// Places `requests` in order, each seeing the ones placed before it. `placed` are the replicas that hold
// resources already.
std::vector<Placement> Place(const std::vector<PlacementNode>& nodes, const std::vector<PlacedReplica>& placed,
                             const std::vector<ReplicaRequest>& requests);

// Which `count` of `candidates` (replica ids of one deployment, placed or not) to stop when it scales
// down: unplaced ones first, then those on the nodes with the fewest replicas of all deployments.
std::vector<std::string> ChooseToStop(const std::vector<std::string>& candidates,
                                      const std::vector<PlacedReplica>& placed, size_t count);

// Ray's message for a deployment whose replicas cannot be scheduled: "Deployment 'NAME' in application
// 'APP' has N replicas that cannot be scheduled. Resources required for each replica: {...}, total
// resources available: {...}." and the best node's shortfall.
std::string UnschedulableMessage(const std::string& application, const std::string& deployment, size_t count,
                                 const ReplicaRequest& request, const std::vector<PlacementNode>& nodes,
                                 const std::vector<PlacedReplica>& placed, const std::string& why_not);

namespace detail {
struct Cluster;
}

// Place's state kept up to date as replicas come and go (the leader's launcher): each Place is then a
// walk over the nodes, not over every replica placed. The same rules as Place.
class PlacementState {
 public:
  PlacementState();
  ~PlacementState();
  // The nodes and their state (what is placed stays placed; on a node that is gone it takes nothing).
  void SetNodes(std::vector<PlacementNode> nodes);
  // A replica that holds resources now (added, or replacing the one with its id).
  void Set(PlacedReplica replica);
  void Remove(const std::string& replica_id);
  void Clear();  // every replica
  // Places one replica and, when it fits, counts it placed.
  Placement Place(const ReplicaRequest& request);
  std::string UnschedulableMessage(const std::string& application, const std::string& deployment, size_t count,
                                   const ReplicaRequest& request, const std::string& why_not) const;
  const std::vector<PlacementNode>& nodes() const { return nodes_; }
  size_t placed() const { return placed_.size(); }

 private:
  std::vector<PlacementNode> nodes_;
  std::map<std::string, PlacedReplica> placed_;
  std::unique_ptr<detail::Cluster> cluster_;  // refers to nodes_
};

}  // namespace ferry::cluster
