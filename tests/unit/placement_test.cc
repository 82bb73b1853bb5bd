// Ray Serve's placement rules on fake clusters: resources, spreading, max_replicas_per_node, labels,
// placement-group strategies, what a replica that fits nowhere is told, and which replicas go first when
// a deployment scales down.
#include "cluster/placement.h"

#include <gtest/gtest.h>
#include <map>
#include <set>

namespace ferry::cluster {
namespace {

PlacementNode Node(std::string id, ResourceSet total, std::map<std::string, std::string> labels = {}) {
  return {std::move(id), std::move(total), std::move(labels), true};
}

ReplicaRequest Replica(std::string id, std::string deployment, ResourceSet resources) {
  ReplicaRequest r;
  r.replica_id = std::move(id);
  r.deployment = std::move(deployment);
  r.resources = std::move(resources);
  return r;
}

std::map<std::string, int> CountByNode(const std::vector<Placement>& placements) {
  std::map<std::string, int> n;
  for (const auto& p : placements) ++n[p.node_id];
  return n;
}

TEST(PlacementTest, ReplicasSpreadOverTheNodesThatFit) {
  std::vector<PlacementNode> nodes = {Node("a", {{"CPU", 4}}), Node("b", {{"CPU", 4}}), Node("c", {{"CPU", 4}})};
  std::vector<ReplicaRequest> six;
  for (int i = 0; i < 6; ++i) six.push_back(Replica("r" + std::to_string(i), "app/D", {{"CPU", 1}}));
  auto placed = Place(nodes, {}, six);
  EXPECT_EQ(CountByNode(placed), (std::map<std::string, int>{{"a", 2}, {"b", 2}, {"c", 2}}));
  // A node that is full takes nothing more; the others do.
  six.resize(3);
  auto more = Place(nodes, {{"x", "app/E", {{"a", {{"CPU", 4}}}}, "a", false, ""}}, six);
  EXPECT_EQ(CountByNode(more), (std::map<std::string, int>{{"b", 2}, {"c", 1}}));
}

TEST(PlacementTest, ResourcesIncludeGpusMemoryAndCustomOnes) {
  std::vector<PlacementNode> nodes = {
      Node("cpu-1", {{"CPU", 16}, {"memory", 64e9}}),
      Node("gpu-1", {{"CPU", 16}, {"GPU", 2}, {"memory", 64e9}, {"accelerator_A100", 2}})};
  auto placed = Place(nodes, {},
                      {Replica("g1", "app/LLM", {{"CPU", 1}, {"GPU", 1}, {"accelerator_A100", 1}}),
                       Replica("g2", "app/LLM", {{"CPU", 1}, {"GPU", 1}, {"accelerator_A100", 1}}),
                       Replica("g3", "app/LLM", {{"CPU", 1}, {"GPU", 1}, {"accelerator_A100", 1}}),
                       Replica("m1", "app/Big", {{"CPU", 1}, {"memory", 60e9}}),
                       Replica("m2", "app/Big", {{"CPU", 1}, {"memory", 60e9}})});
  EXPECT_EQ(placed[0].node_id, "gpu-1");
  EXPECT_EQ(placed[1].node_id, "gpu-1");
  EXPECT_EQ(placed[2].node_id, "");  // two GPUs, both taken
  EXPECT_NE(placed[2].why_not.find("gpu-1"), std::string::npos);
  EXPECT_NE(placed[2].why_not.find("GPU (needs 1.0, has 0.0 free)"), std::string::npos) << placed[2].why_not;
  EXPECT_EQ(placed[3].node_id, "cpu-1");  // fewer replicas there
  EXPECT_EQ(placed[4].node_id, "gpu-1");  // cpu-1's memory is taken
}

TEST(PlacementTest, MaxReplicasPerNodeAndLabelsLimitWhereReplicasGo) {
  std::vector<PlacementNode> nodes = {Node("a", {{"CPU", 8}}, {{"zone", "a"}}),
                                      Node("b", {{"CPU", 8}}, {{"zone", "b"}}),
                                      Node("c", {{"CPU", 8}}, {{"zone", "a"}})};
  std::vector<ReplicaRequest> five;
  for (int i = 0; i < 5; ++i) {
    five.push_back(Replica("r" + std::to_string(i), "app/D", {{"CPU", 1}}));
    five.back().max_replicas_per_node = 2;
  }
  auto placed = Place(nodes, {}, five);
  EXPECT_EQ(CountByNode(placed), (std::map<std::string, int>{{"a", 2}, {"b", 2}, {"c", 1}}));
  five.push_back(five.back());
  five.back().replica_id = "r5";
  five.push_back(five.back());
  five.back().replica_id = "r6";
  placed = Place(nodes, {}, five);
  EXPECT_EQ(placed[6].node_id, "");
  EXPECT_NE(placed[6].why_not.find("max_replicas_per_node (2)"), std::string::npos);

  ReplicaRequest zoned = Replica("z", "app/Z", {{"CPU", 1}});
  zoned.label_selector = {{"zone", "b"}};
  EXPECT_EQ(Place(nodes, {}, {zoned, zoned})[1].node_id, "b");
  zoned.label_selector = {{"zone", "moon"}};
  auto nowhere = Place(nodes, {}, {zoned});
  EXPECT_EQ(nowhere[0].node_id, "");
  EXPECT_EQ(nowhere[0].why_not, "no live node has the labels zone=moon");
}

TEST(PlacementTest, DeadOrDrainingNodesTakeNoReplicas) {
  std::vector<PlacementNode> nodes = {Node("a", {{"CPU", 8}}), Node("b", {{"CPU", 8}})};
  nodes[0].schedulable = false;
  auto placed = Place(nodes, {}, {Replica("r0", "app/D", {{"CPU", 1}}), Replica("r1", "app/D", {{"CPU", 1}})});
  EXPECT_EQ(CountByNode(placed), (std::map<std::string, int>{{"b", 2}}));
  nodes[1].schedulable = false;
  EXPECT_EQ(Place(nodes, {}, {Replica("r", "app/D", {})})[0].why_not,
            "no live node takes replicas (every node is dead or draining)");
}

TEST(PlacementTest, PlacementGroupStrategies) {
  std::vector<PlacementNode> nodes = {Node("a", {{"CPU", 4}, {"GPU", 2}}), Node("b", {{"CPU", 4}, {"GPU", 2}}),
                                      Node("c", {{"CPU", 4}, {"GPU", 2}})};
  ReplicaRequest tp = Replica("tp", "app/LLM", {});
  tp.bundles = {{{"CPU", 1}, {"GPU", 1}}, {{"GPU", 1}}};
  tp.strategy = BundleStrategy::kStrictPack;
  auto p = Place(nodes, {}, {tp});
  ASSERT_EQ(p[0].bundle_nodes.size(), 2u);
  EXPECT_EQ(p[0].bundle_nodes[0], p[0].bundle_nodes[1]);  // one node
  // Four GPUs in one node: no node has them.
  tp.bundles = {{{"GPU", 1}}, {{"GPU", 1}}, {{"GPU", 1}}, {{"GPU", 1}}};
  p = Place(nodes, {}, {tp});
  EXPECT_EQ(p[0].node_id, "");
  EXPECT_NE(p[0].why_not.find("STRICT_PACK needs one node"), std::string::npos);
  // PACK is best effort: two nodes.
  tp.strategy = BundleStrategy::kPack;
  p = Place(nodes, {}, {tp});
  ASSERT_EQ(p[0].bundle_nodes.size(), 4u);
  EXPECT_EQ(std::set<std::string>(p[0].bundle_nodes.begin(), p[0].bundle_nodes.end()).size(), 2u);
  // STRICT_SPREAD: distinct nodes, or nowhere.
  tp.strategy = BundleStrategy::kStrictSpread;
  tp.bundles = {{{"CPU", 1}}, {{"CPU", 1}}, {{"CPU", 1}}};
  p = Place(nodes, {}, {tp});
  EXPECT_EQ(std::set<std::string>(p[0].bundle_nodes.begin(), p[0].bundle_nodes.end()).size(), 3u);
  tp.bundles.push_back({{"CPU", 1}});
  p = Place(nodes, {}, {tp});
  EXPECT_EQ(p[0].node_id, "");
  EXPECT_NE(p[0].why_not.find("STRICT_SPREAD needs 4 distinct nodes"), std::string::npos);
  // SPREAD shares a node when it must.
  tp.strategy = BundleStrategy::kSpread;
  p = Place(nodes, {}, {tp});
  EXPECT_EQ(p[0].bundle_nodes.size(), 4u);
  EXPECT_EQ(std::set<std::string>(p[0].bundle_nodes.begin(), p[0].bundle_nodes.end()).size(), 3u);
  // A group that does not fit takes nothing: the next request still has the room.
  tp.strategy = BundleStrategy::kStrictPack;
  tp.bundles = {{{"GPU", 2}}, {{"GPU", 5}}};
  p = Place(nodes, {}, {tp, Replica("after", "app/X", {{"GPU", 2}})});
  EXPECT_EQ(p[0].node_id, "");
  EXPECT_NE(p[1].node_id, "");
}

TEST(PlacementTest, ScalingDownEmptiesTheLeastUsedNodesFirst) {
  std::vector<PlacedReplica> placed = {{"d1", "app/D", {{"a", {{"CPU", 1}}}}, "a", false, ""},
                                       {"d2", "app/D", {{"b", {{"CPU", 1}}}}, "b", false, ""},
                                       {"x1", "app/X", {{"b", {{"CPU", 1}}}}, "b", false, ""},
                                       {"x2", "app/X", {{"b", {{"CPU", 1}}}}, "b", false, ""},
                                       {"d3", "app/D", {}, "", false, ""}};
  // d3 has no node yet; then d1 (node a runs one replica) before d2 (node b runs three).
  EXPECT_EQ(ChooseToStop({"d1", "d2", "d3"}, placed, 2), (std::vector<std::string>{"d3", "d1"}));
  EXPECT_EQ(ChooseToStop({"d1", "d2", "d3"}, placed, 5).size(), 3u);
}

TEST(PlacementTest, TheMessageForReplicasThatFitNowhereIsRays) {
  std::vector<PlacementNode> nodes = {Node("gpu-1", {{"CPU", 4}, {"GPU", 1}})};
  ReplicaRequest r = Replica("r", "app/LLM", {{"CPU", 1}, {"GPU", 2}});
  auto p = Place(nodes, {}, {r});
  ASSERT_EQ(p[0].node_id, "");
  std::string m = UnschedulableMessage("app", "LLM", 1, r, nodes, {}, p[0].why_not);
  EXPECT_EQ(m,
            "Deployment 'LLM' in application 'app' has 1 replica that cannot be scheduled. Resources required for "
            "each replica: {\"CPU\": 1.0, \"GPU\": 2.0}, total resources available: {\"CPU\": 4.0, \"GPU\": 1.0}. "
            "the node closest to fitting, gpu-1, lacks GPU (needs 2.0, has 1.0 free). Use `ferry nodes` for more "
            "details.");
  EXPECT_EQ(ResourcesText({{"CPU", 0.5}, {"memory", 6.4e10}}), "{\"CPU\": 0.5, \"memory\": 6.4e+10}");
  EXPECT_EQ(ParseBundleStrategy("STRICT_SPREAD"), BundleStrategy::kStrictSpread);
  EXPECT_FALSE(ParseBundleStrategy("pack").has_value());
}

// The leader's incremental state places as Place does, frees what a replica took when it goes, and keeps
// what is placed across a change of the nodes (a node gone takes nothing; one back counts it again).
TEST(PlacementTest, TheIncrementalStateAgreesWithPlaceAndFreesWhatLeaves) {
  std::vector<PlacementNode> nodes = {Node("a", {{"CPU", 2}}), Node("b", {{"CPU", 2}}), Node("c", {{"CPU", 1}})};
  std::vector<ReplicaRequest> requests;
  for (int i = 0; i < 6; ++i) requests.push_back(Replica("r" + std::to_string(i), "app/D", {{"CPU", 1}}));
  std::vector<Placement> batch = Place(nodes, {}, requests);
  PlacementState state;
  state.SetNodes(nodes);
  for (size_t i = 0; i < requests.size(); ++i) {
    Placement p = state.Place(requests[i]);
    EXPECT_EQ(p.node_id, batch[i].node_id) << i;
  }
  EXPECT_EQ(batch[5].node_id, "");  // five CPUs
  EXPECT_EQ(state.placed(), 5u);
  // r0 leaves: its CPU is free for the next.
  const std::string freed = batch[0].node_id;
  state.Remove("r0");
  EXPECT_EQ(state.Place(Replica("r6", "app/D", {{"CPU", 1}})).node_id, freed);
  // Set replaces a replica by id: placed again, it is counted once.
  state.Set({"r6", "app/D", {{freed, {{"CPU", 1}}}}, freed, false, ""});
  Placement none = state.Place(Replica("r7", "app/D", {{"CPU", 1}}));
  EXPECT_EQ(none.node_id, "");
  EXPECT_NE(state.UnschedulableMessage("app", "D", 1, Replica("r7", "app/D", {{"CPU", 1}}), none.why_not)
                .find("has 1 replica that cannot be scheduled"),
            std::string::npos);
  // Node c dies: nothing goes there; back, it is full again with what is placed on it (r2).
  nodes[2].schedulable = false;
  state.SetNodes(nodes);
  ASSERT_EQ(batch[2].node_id, "c");  // spread: a, b, c, a, b
  state.Remove("r4");
  state.Remove("r1");
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(state.Place(Replica("s" + std::to_string(i), "app/E", {{"CPU", 1}})).node_id, "b");
  EXPECT_EQ(state.Place(Replica("s2", "app/E", {{"CPU", 1}})).node_id, "");  // c is out
  nodes[2].schedulable = true;
  state.SetNodes(nodes);
  EXPECT_EQ(state.Place(Replica("s9", "app/E", {{"CPU", 1}})).node_id, "");
  // c leaves the list and comes back with 2 CPUs: what it runs (r2) still counts, the new CPU is free.
  nodes.pop_back();
  state.SetNodes(nodes);
  nodes.push_back(Node("c", {{"CPU", 2}}));
  state.SetNodes(nodes);
  EXPECT_EQ(state.Place(Replica("s10", "app/E", {{"CPU", 1}})).node_id, "c");
  EXPECT_EQ(state.Place(Replica("s11", "app/E", {{"CPU", 1}})).node_id, "");
  state.Remove("r2");
  EXPECT_EQ(state.Place(Replica("s12", "app/E", {{"CPU", 1}})).node_id, "c");
}

// A rolling update starts the new version's replicas while the old ones still run: the new ones spread among
// themselves (not all onto the one node without an old replica), and a replica asked to stop keeps its
// resources but no longer counts against its node's spread.
TEST(PlacementTest, ARollingUpdatesNewReplicasSpreadAmongThemselves) {
  PlacementState state;
  state.SetNodes({Node("a", {{"CPU", 4}}), Node("b", {{"CPU", 4}}), Node("c", {{"CPU", 4}})});
  auto request = [](std::string id, std::string version, double cpus) {
    ReplicaRequest r = Replica(std::move(id), "app/D", {{"CPU", cpus}});
    r.version = std::move(version);
    return r;
  };
  EXPECT_EQ(state.Place(request("old1", "v1", 1)).node_id, "a");
  EXPECT_EQ(state.Place(request("old2", "v1", 1)).node_id, "b");
  // The new version: the first goes where no replica of the deployment runs, the second not onto it too.
  EXPECT_EQ(state.Place(request("new1", "v2", 0.5)).node_id, "c");
  const std::string second = state.Place(request("new2", "v2", 0.5)).node_id;
  EXPECT_TRUE(second == "a" || second == "b") << second;

  // Leaving: old1 (on a) is being stopped; it still holds its CPU, but a's spread counts it gone.
  PlacementState leaving;
  leaving.SetNodes({Node("a", {{"CPU", 1}}), Node("b", {{"CPU", 4}})});
  PlacedReplica old1{"old1", "app/D", {{"a", {{"CPU", 1}}}}, "a", false, ""};
  old1.version = "v1";
  old1.leaving = true;
  leaving.Set(old1);
  leaving.Set({"old2", "app/D", {{"b", {{"CPU", 1}}}}, "b", false, "v1"});
  // a has no CPU left (old1 still holds it): the replacement goes to b although a "has none" of D.
  EXPECT_EQ(leaving.Place(request("new1", "v1", 1)).node_id, "b");
  leaving.Remove("old1");  // gone: its CPU is free again
  EXPECT_EQ(leaving.Place(request("new2", "v1", 1)).node_id, "a");
}

}  // namespace
}  // namespace ferry::cluster
