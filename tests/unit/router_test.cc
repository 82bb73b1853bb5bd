#include "router/router.h"

#include <atomic>
#include <gtest/gtest.h>
#include <map>
#include <set>
#include <thread>

namespace ferry::router {
namespace {

std::shared_ptr<const ReplicaEndpoint> Replica(uint64_t key) {
  auto r = std::make_shared<ReplicaEndpoint>();
  r->replica_id = "r" + std::to_string(key);
  r->socket_path = "/tmp/r" + std::to_string(key);
  r->key = key;
  return r;
}

// A waiter that keeps the lease it gets.
class HoldingWaiter : public Waiter {
 public:
  void OnAssigned(ReplicaLease lease) override {
    ++calls;
    held = std::move(lease);
  }
  int calls = 0;
  ReplicaLease held;
};

// Replicas on the router's own node take requests while one has room; another node's only after.
TEST(RouterTest, PrefersReplicasOnItsOwnNodeWhileTheyHaveRoom) {
  auto router = Router::Create("d", /*max_ongoing=*/2, /*max_queued=*/-1, /*seed=*/7, /*local_node=*/"a");
  endpoints::EndpointSet set;
  set.deployment = "app/d";
  set.max_ongoing_requests = 2;
  set.endpoints = {{"a1", "/tmp/a1", 1, "v", endpoints::EndpointState::kServing, "a"},
                   {"b1", "/tmp/b1", 2, "v", endpoints::EndpointState::kServing, "b"},
                   {"a2", "/tmp/a2", 3, "v", endpoints::EndpointState::kServing, "a"},
                   {"b2", "/tmp/b2", 4, "v", endpoints::EndpointState::kServing, "b"}};
  router->Update(set);
  std::vector<ReplicaLease> leases;
  std::map<std::string, int> where;
  for (int i = 0; i < 8; ++i) {
    auto w = std::make_shared<HoldingWaiter>();
    ReplicaLease lease;
    ASSERT_EQ(router->Acquire(w, &lease), Router::Result::kAssigned);
    ++where[lease.replica().replica_id];
    // The first four fill node a's two replicas (2 each); only then does node b get any.
    if (i < 4) {
      EXPECT_EQ(lease.replica().replica_id[0], 'a') << "request " << i;
    }
    leases.push_back(std::move(lease));
  }
  EXPECT_EQ(where["a1"], 2);
  EXPECT_EQ(where["a2"], 2);
  EXPECT_EQ(where["b1"] + where["b2"], 4);
  // Room on node a again: the next request goes there.
  leases[0].Release();
  auto w = std::make_shared<HoldingWaiter>();
  ReplicaLease again;
  ASSERT_EQ(router->Acquire(w, &again), Router::Result::kAssigned);
  EXPECT_EQ(again.replica().replica_id[0], 'a');
}

// A replica that refused a connection (dead, and not yet out of the endpoint set) is avoided while another
// has room; when none has, it is tried again rather than queueing behind it.
TEST(RouterTest, AReplicaReportedUnreachableIsAvoidedWhileAnotherHasRoom) {
  auto router = Router::Create("d", /*max_ongoing=*/3, /*max_queued=*/-1, /*seed=*/7);
  router->AddReplica(Replica(1));
  router->AddReplica(Replica(2));
  router->ReportUnreachable(1);
  std::vector<ReplicaLease> leases;
  for (int i = 0; i < 3; ++i) {
    auto w = std::make_shared<HoldingWaiter>();
    ReplicaLease lease;
    ASSERT_EQ(router->Acquire(w, &lease), Router::Result::kAssigned);
    EXPECT_EQ(lease.replica().key, 2u) << "request " << i;
    leases.push_back(std::move(lease));
  }
  // Replica 2 is full: the avoided one is the only room left.
  auto w = std::make_shared<HoldingWaiter>();
  ReplicaLease lease;
  ASSERT_EQ(router->Acquire(w, &lease), Router::Result::kAssigned);
  EXPECT_EQ(lease.replica().key, 1u);
  // Releases keep going to the right slots.
  lease.Release();
  leases[0].Release();
  ReplicaLease next;
  ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &next), Router::Result::kAssigned);
  EXPECT_EQ(next.replica().key, 2u);
}

// Ray's multiplexed routing: a model's requests go to the replicas that have it loaded while one has room;
// a model nobody holds goes to the replicas holding the fewest models; full holders spill to any other.
// The models a replica holds change with the endpoint set, without losing its in-flight count.
TEST(RouterTest, AModelsRequestsGoFirstToTheReplicasThatHoldIt) {
  auto router = Router::Create("d", /*max_ongoing=*/2, /*max_queued=*/-1, /*seed=*/7);
  endpoints::EndpointSet set;
  set.deployment = "app/d";
  set.max_ongoing_requests = 2;
  auto endpoint = [](const char* id, uint64_t key, std::vector<std::string> models) {
    endpoints::Endpoint e{id, std::string("/tmp/") + id, key, "v", endpoints::EndpointState::kServing, ""};
    e.model_ids = std::move(models);
    return e;
  };
  set.endpoints = {endpoint("r1", 1, {"a", "b"}), endpoint("r2", 2, {"c"}), endpoint("r3", 3, {})};
  router->Update(set);
  auto acquire = [&](std::string_view model) {
    ReplicaLease lease;
    EXPECT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &lease, model), Router::Result::kAssigned);
    return lease;
  };
  for (int i = 0; i < 10; ++i) EXPECT_EQ(acquire("c").replica().replica_id, "r2");
  for (int i = 0; i < 10; ++i) EXPECT_EQ(acquire("a").replica().replica_id, "r1");
  for (int i = 0; i < 10; ++i) EXPECT_EQ(acquire("zzz").replica().replica_id, "r3");  // holds none
  ReplicaLease direct;
  ASSERT_TRUE(router->TryAcquire(&direct, "b"));
  EXPECT_EQ(direct.replica().replica_id, "r1");
  // r1 full (2 ongoing): "a" spills to the replica with the fewest models that has room.
  ReplicaLease second = acquire("a");
  EXPECT_EQ(second.replica().replica_id, "r1");
  ReplicaLease spilled = acquire("a");
  EXPECT_EQ(spilled.replica().replica_id, "r3");
  // r3 loads "c" too; r2 evicts it: the set says so, and "c" now goes to r3. r1's two requests still count.
  set.endpoints = {endpoint("r1", 1, {"a", "b"}), endpoint("r2", 2, {"d"}), endpoint("r3", 3, {"a", "c"})};
  set.version = 2;
  router->Update(set);
  EXPECT_EQ(router->InFlight(1), 2);
  EXPECT_EQ(acquire("c").replica().replica_id, "r3");
  EXPECT_EQ(acquire("d").replica().replica_id, "r2");
  // Without a model id, any replica.
  std::set<std::string> any;
  for (int i = 0; i < 30; ++i) {
    ReplicaLease l;
    if (router->TryAcquire(&l)) any.insert(l.replica().replica_id);
  }
  EXPECT_GE(any.size(), 2u);
}

TEST(RouterTest, NeverExceedsMaxOngoingPerReplica) {
  auto router = Router::Create("D", 2, -1);
  router->AddReplica(Replica(1));
  router->AddReplica(Replica(2));
  std::vector<ReplicaLease> leases;
  std::map<uint64_t, int> per_replica;
  for (int i = 0; i < 4; ++i) {
    ReplicaLease lease;
    ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &lease), Router::Result::kAssigned);
    ++per_replica[lease.replica().key];
    leases.push_back(std::move(lease));
  }
  EXPECT_EQ(per_replica[1], 2);
  EXPECT_EQ(per_replica[2], 2);
  ReplicaLease extra;
  auto waiter = std::make_shared<HoldingWaiter>();
  EXPECT_EQ(router->Acquire(waiter, &extra), Router::Result::kQueued);
  EXPECT_FALSE(extra);
  EXPECT_EQ(router->Stats().ongoing, 4);
  EXPECT_EQ(router->Stats().queued, 1);
  // A freed slot goes to the queued waiter, on the same replica.
  uint64_t freed = leases[0].replica().key;
  leases[0].Release();
  EXPECT_EQ(waiter->calls, 1);
  EXPECT_EQ(waiter->held.replica().key, freed);
  EXPECT_EQ(router->Stats().queued, 0);
  EXPECT_EQ(router->Stats().ongoing, 4);
}

TEST(RouterTest, QueueIsFifoAndBounded) {
  auto router = Router::Create("D", 1, 2);
  router->AddReplica(Replica(1));
  ReplicaLease first;
  ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &first), Router::Result::kAssigned);
  auto a = std::make_shared<HoldingWaiter>();
  auto b = std::make_shared<HoldingWaiter>();
  ReplicaLease unused;
  EXPECT_EQ(router->Acquire(a, &unused), Router::Result::kQueued);
  EXPECT_EQ(router->Acquire(b, &unused), Router::Result::kQueued);
  EXPECT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &unused), Router::Result::kRejected);
  first.Release();
  EXPECT_EQ(a->calls, 1);
  EXPECT_EQ(b->calls, 0);
  a->held.Release();
  EXPECT_EQ(b->calls, 1);
}

TEST(RouterTest, ZeroQueueShedsAtOnce) {
  auto router = Router::Create("D", 1, 0);
  router->AddReplica(Replica(1));
  ReplicaLease held, unused;
  ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &held), Router::Result::kAssigned);
  EXPECT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &unused), Router::Result::kRejected);
}

TEST(RouterTest, CancelledWaiterIsNeverCalled) {
  auto router = Router::Create("D", 1, -1);
  router->AddReplica(Replica(1));
  ReplicaLease held, unused;
  ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &held), Router::Result::kAssigned);
  auto a = std::make_shared<HoldingWaiter>();
  auto b = std::make_shared<HoldingWaiter>();
  ASSERT_EQ(router->Acquire(a, &unused), Router::Result::kQueued);
  ASSERT_EQ(router->Acquire(b, &unused), Router::Result::kQueued);
  EXPECT_TRUE(router->Cancel(a.get()));
  EXPECT_FALSE(router->Cancel(a.get()));
  held.Release();
  EXPECT_EQ(a->calls, 0);
  EXPECT_EQ(b->calls, 1);
  EXPECT_FALSE(router->Cancel(b.get()));  // already assigned
}

TEST(RouterTest, RequestsWaitForTheFirstReplica) {
  auto router = Router::Create("D", 1, -1);
  auto w = std::make_shared<HoldingWaiter>();
  ReplicaLease unused;
  EXPECT_EQ(router->Acquire(w, &unused), Router::Result::kQueued);
  router->AddReplica(Replica(7));
  EXPECT_EQ(w->calls, 1);
  EXPECT_EQ(w->held.replica().key, 7u);
}

TEST(RouterTest, RemovedReplicaGetsNoNewRequestsAndCountsStayTrue) {
  auto router = Router::Create("D", 10, -1);
  router->AddReplica(Replica(1));
  router->AddReplica(Replica(2));
  std::vector<ReplicaLease> on_one, on_two;
  for (int i = 0; i < 6; ++i) {
    ReplicaLease l;
    ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &l), Router::Result::kAssigned);
    (l.replica().key == 1 ? on_one : on_two).push_back(std::move(l));
  }
  ASSERT_EQ(on_one.size(), 3u);  // two choices among two replicas: always the less loaded
  on_two.clear();
  router->RemoveReplica(1);
  for (int i = 0; i < 20; ++i) {
    ReplicaLease l;
    if (router->Acquire(std::make_shared<HoldingWaiter>(), &l) == Router::Result::kAssigned) {
      EXPECT_EQ(l.replica().key, 2u);
    }
  }
  EXPECT_EQ(router->Stats().replicas, 1);
  EXPECT_EQ(router->InFlight(1), 3);  // a removed replica is drained until its last request ends
  on_one.pop_back();
  EXPECT_EQ(router->InFlight(1), 2);
  on_one.clear();  // releases on the removed replica must not corrupt replica 2's count
  EXPECT_EQ(router->InFlight(1), 0);
  EXPECT_EQ(router->Stats().ongoing, 0);
}

TEST(RouterTest, PowerOfTwoChoicesBalancesLoad) {
  auto router = Router::Create("D", 1000, -1, /*seed=*/42);  // seeded: the same choices on every run
  for (uint64_t k = 1; k <= 4; ++k) router->AddReplica(Replica(k));
  std::vector<ReplicaLease> held;
  std::map<uint64_t, int> count;
  for (int i = 0; i < 400; ++i) {
    ReplicaLease l;
    ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &l), Router::Result::kAssigned);
    ++count[l.replica().key];
    held.push_back(std::move(l));
  }
  // With two choices the most and least loaded differ by a few requests, not tens.
  int lo = 1000, hi = 0;
  for (auto& [k, c] : count) {
    lo = std::min(lo, c);
    hi = std::max(hi, c);
  }
  EXPECT_LE(hi - lo, 6) << "lo=" << lo << " hi=" << hi;
}

TEST(RouterTest, ConcurrentCallersKeepTheLimit) {
  auto router = Router::Create("D", 3, -1);
  router->AddReplica(Replica(1));
  router->AddReplica(Replica(2));
  std::atomic<int> active[3] = {0, 0, 0};
  std::atomic<bool> violated{false};
  std::atomic<int> done{0};
  struct Worker : Waiter {
    std::atomic<int>* active;
    std::atomic<bool>* violated;
    std::atomic<int>* done;
    void Run(ReplicaLease lease) {
      int now = ++active[lease.replica().key];
      if (now > 3) violated->store(true);
      --active[lease.replica().key];
      lease.Release();
      ++*done;
    }
    void OnAssigned(ReplicaLease lease) override { Run(std::move(lease)); }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        auto w = std::make_shared<Worker>();
        w->active = active;
        w->violated = &violated;
        w->done = &done;
        ReplicaLease lease;
        if (router->Acquire(w, &lease) == Router::Result::kAssigned) w->Run(std::move(lease));
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(violated.load());
  EXPECT_EQ(done.load(), 8000);
  EXPECT_EQ(router->Stats().ongoing, 0);
  EXPECT_EQ(router->Stats().queued, 0);
}

TEST(RouterTest, RaisingTheLimitDrainsTheQueue) {
  auto router = Router::Create("D", 1, -1);
  router->AddReplica(Replica(1));
  ReplicaLease held, unused;
  ASSERT_EQ(router->Acquire(std::make_shared<HoldingWaiter>(), &held), Router::Result::kAssigned);
  auto w = std::make_shared<HoldingWaiter>();
  ASSERT_EQ(router->Acquire(w, &unused), Router::Result::kQueued);
  router->SetLimits(2, -1);
  EXPECT_EQ(w->calls, 1);
}

}  // namespace
}  // namespace ferry::router
