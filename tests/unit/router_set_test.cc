// The data plane's side of published state: routers kept per deployment and updated from endpoint sets.
#include "router/router_set.h"

#include <atomic>
#include <gtest/gtest.h>

namespace ferry::router {
namespace {

using endpoints::EndpointState;

class HoldingWaiter : public Waiter {
 public:
  void OnAssigned(ReplicaLease lease) override { held = std::move(lease); }
  ReplicaLease held;
};

endpoints::Endpoint E(uint64_t key, EndpointState state = EndpointState::kServing) {
  return {"r" + std::to_string(key), "/tmp/r" + std::to_string(key), key, "v1", state, ""};
}

// Builds snapshots the way the controller does: unchanged sets are shared between versions.
class Snapshots {
 public:
  std::shared_ptr<const endpoints::Snapshot> With(const std::string& key, std::vector<endpoints::Endpoint> endpoints,
                                                  int max_ongoing = 10) {
    auto next = std::make_shared<endpoints::Snapshot>(*last_);
    next->version = last_->version + 1;
    auto set = std::make_shared<endpoints::EndpointSet>();
    set->deployment = key;
    set->version = next->version;
    set->max_ongoing_requests = max_ongoing;
    set->endpoints = std::move(endpoints);
    next->sets[key] = set;
    auto routes = std::make_shared<endpoints::RouteTable>();
    for (const auto& [k, s] : next->sets)
      routes->routes.push_back(
          {"/" + k.substr(0, k.find('/')), k.substr(0, k.find('/')), k.substr(k.find('/') + 1), k});
    if (!last_->routes || last_->routes->routes.size() != routes->routes.size())
      next->routes = routes;  // the route table changes only when a deployment comes or goes
    last_ = next;
    return last_;
  }
  std::shared_ptr<const endpoints::Snapshot> Without(const std::string& key) {
    auto next = std::make_shared<endpoints::Snapshot>(*last_);
    next->version = last_->version + 1;
    next->sets.erase(key);
    auto routes = std::make_shared<endpoints::RouteTable>();
    for (const auto& [k, s] : next->sets)
      routes->routes.push_back(
          {"/" + k.substr(0, k.find('/')), k.substr(0, k.find('/')), k.substr(k.find('/') + 1), k});
    next->routes = routes;
    last_ = next;
    return last_;
  }

 private:
  std::shared_ptr<const endpoints::Snapshot> last_ = std::make_shared<endpoints::Snapshot>();
};

ReplicaLease Take(Router& router) {
  ReplicaLease lease;
  EXPECT_EQ(router.Acquire(std::make_shared<HoldingWaiter>(), &lease), Router::Result::kAssigned);
  return lease;
}

int InFlight(const endpoints::ConsumerReport& report, const std::string& key, uint64_t endpoint) {
  for (const auto& d : report.deployments)
    if (d.deployment == key)
      for (const auto& [k, n] : d.in_flight)
        if (k == endpoint) return n;
  return 0;
}

TEST(RouterSetTest, RoutesByThePublishedSetsAndReportsWhatItApplied) {
  RouterSet routers(nullptr, /*seed=*/1);
  Snapshots s;
  routers.OnPublished(s.With("app/D", {E(1), E(2)}));
  const Route* route = routers.routing()->Get()->Match("/app/x");
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->application, "app");
  EXPECT_EQ(route->ingress_deployment, "D");
  EXPECT_EQ(route->router->Stats().replicas, 2);
  EXPECT_EQ(route->router, routers.Find("app/D"));
  EXPECT_EQ(routers.Report().applied_version, 1u);
}

TEST(RouterSetTest, InFlightCountsSurviveAnUpdate) {
  RouterSet routers(nullptr, 1);
  Snapshots s;
  routers.OnPublished(s.With("app/D", {E(1)}, /*max_ongoing=*/2));
  std::shared_ptr<Router> router = routers.Find("app/D");
  ReplicaLease a = Take(*router), b = Take(*router);
  auto table = routers.routing()->Get();
  routers.OnPublished(s.With("app/D", {E(1), E(2)}, 2));
  EXPECT_EQ(routers.Find("app/D"), router) << "the router is updated in place, not replaced";
  EXPECT_EQ(routers.routing()->Get(), table) << "no route changed: the table is not rebuilt";
  EXPECT_EQ(router->InFlight(1), 2);
  // Replica 1 is still full, so the next two requests go to the new replica 2.
  ReplicaLease c = Take(*router), d = Take(*router);
  EXPECT_EQ(c.replica().key, 2u);
  EXPECT_EQ(d.replica().key, 2u);
  ReplicaLease none;
  EXPECT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &none), Router::Result::kQueued);
}

TEST(RouterSetTest, ADrainingReplicaGetsNothingNewAndIsReportedUntilItsLastRequestEnds) {
  std::atomic<int> wakes{0};
  RouterSet routers([&] { ++wakes; }, 1);
  Snapshots s;
  routers.OnPublished(s.With("app/D", {E(1)}));
  std::shared_ptr<Router> router = routers.Find("app/D");
  ReplicaLease on_one = Take(*router);
  routers.OnPublished(s.With("app/D", {E(1, EndpointState::kDraining), E(2)}));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Take(*router).replica().key, 2u);
  endpoints::ConsumerReport report = routers.Report();
  EXPECT_EQ(report.applied_version, 2u);
  EXPECT_EQ(InFlight(report, "app/D", 1), 1);
  on_one.Release();
  EXPECT_EQ(wakes.load(), 1) << "the last request on a draining replica wakes the controller";
  EXPECT_EQ(InFlight(routers.Report(), "app/D", 1), 0);
  // Leaving the set altogether is the same for routing.
  routers.OnPublished(s.With("app/D", {E(2)}));
  EXPECT_EQ(router->Stats().replicas, 1);
}

TEST(RouterSetTest, QueuedRequestsGetTheFirstReplicaAndStarvationWakesTheController) {
  std::atomic<int> wakes{0};
  RouterSet routers([&] { ++wakes; }, 1);
  Snapshots s;
  routers.OnPublished(s.With("app/D", {}));
  auto waiter = std::make_shared<HoldingWaiter>();
  ReplicaLease unused;
  ASSERT_EQ(routers.Find("app/D")->Acquire(waiter, &unused), Router::Result::kQueued);
  EXPECT_EQ(wakes.load(), 1);
  EXPECT_EQ(routers.Report().deployments.at(0).queued, 1);
  routers.OnPublished(s.With("app/D", {E(3)}));
  ASSERT_TRUE(waiter->held);
  EXPECT_EQ(waiter->held.replica().key, 3u);
  EXPECT_EQ(waiter->held.replica().socket_path, "/tmp/r3");
}

TEST(RouterSetTest, ADeploymentThatLeavesLosesItsRouteAndALateSnapshotIsIgnored) {
  RouterSet routers(nullptr, 1);
  Snapshots s;
  auto first = s.With("a/X", {E(1)});
  routers.OnPublished(first);
  routers.OnPublished(s.With("b/Y", {E(2)}));
  ReplicaLease held = Take(*routers.Find("a/X"));
  routers.OnPublished(s.Without("a/X"));
  EXPECT_EQ(routers.Find("a/X"), nullptr);
  EXPECT_EQ(routers.routing()->Get()->Match("/a"), nullptr);
  ASSERT_NE(routers.routing()->Get()->Match("/b"), nullptr);
  held.Release();  // a lease outlives its deployment's router entry safely
  routers.OnPublished(first);
  EXPECT_EQ(routers.Find("a/X"), nullptr) << "an older snapshot delivered late changes nothing";
  EXPECT_EQ(routers.Report().applied_version, 3u);
}

TEST(LocalPublisherTest, ANewConsumerGetsTheLatestSnapshotAndReportsAreCollected) {
  endpoints::LocalPublisher publisher;
  Snapshots s;
  publisher.Publish(s.With("app/D", {E(1)}));
  RouterSet routers(nullptr, 1);
  publisher.Subscribe(&routers);
  ASSERT_NE(routers.Find("app/D"), nullptr);
  publisher.Publish(s.With("app/D", {E(1), E(2)}));
  std::vector<endpoints::ConsumerReport> reports = publisher.CollectReports();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].applied_version, 2u);
  int woken = 0;
  publisher.SetWakeHook([&] { ++woken; });
  publisher.Wake();
  publisher.SetWakeHook(nullptr);
  publisher.Wake();
  EXPECT_EQ(woken, 1);
  publisher.Unsubscribe(&routers);
  EXPECT_TRUE(publisher.CollectReports().empty());
}

}  // namespace
}  // namespace ferry::router
