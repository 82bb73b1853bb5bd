// The router's critical section: one Acquire (power of two choices) and one Release, uncontended and from
// two threads at once.
#include <benchmark/benchmark.h>

#include "router/router.h"

namespace ferry::router {
namespace {

class NoopWaiter : public Waiter {
 public:
  void OnAssigned(ReplicaLease) override {}
};

std::shared_ptr<Router> MakeRouter(int replicas) {
  auto router = Router::Create("D", 1000000, -1);
  for (int i = 0; i < replicas; ++i) {
    auto r = std::make_shared<ReplicaEndpoint>();
    r->key = static_cast<uint64_t>(i + 1);
    r->replica_id = "r" + std::to_string(i);
    router->AddReplica(r);
  }
  return router;
}

void BM_AcquireRelease(benchmark::State& state) {
  static std::shared_ptr<Router> router;
  if (state.thread_index() == 0) router = MakeRouter(static_cast<int>(state.range(0)));
  auto waiter = std::make_shared<NoopWaiter>();
  for (auto _ : state) {
    ReplicaLease lease;
    router->Acquire(waiter, &lease);
    lease.Release();
  }
}
BENCHMARK(BM_AcquireRelease)->Arg(2)->Arg(100)->Threads(1)->Threads(2);

}  // namespace
}  // namespace ferry::router
