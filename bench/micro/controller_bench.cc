// The controller's reconcile tick over a simulated cluster (replicas without processes, answering health
// checks at once): 1,000 deployments with 10,000 replicas, all running. Two cases: a steady tick (health
// checks come due every health_check_period_s, so few per tick) and the worst tick, where every replica
// is due a health check at once.
#include <benchmark/benchmark.h>
#include <sstream>

#include "common/common.h"
#include "common/fake_launcher.h"
#include "controller/controller.h"
#include "router/router_set.h"

namespace ferry::controller {
namespace {

config::Config BigConfig(int apps, int deployments_per_app, int replicas, double health_period_s) {
  std::ostringstream yaml;
  yaml << "applications:\n";
  for (int a = 0; a < apps; ++a) {
    yaml << "  - name: app" << a << "\n    route_prefix: /app" << a << "\n    deployments:\n";
    for (int d = 0; d < deployments_per_app; ++d)
      yaml << "      - {name: D" << d << ", import_path: \"builtin:echo\", num_replicas: " << replicas
           << ", health_check_period_s: " << health_period_s << "}\n";
  }
  config::ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view) { return true; };
  return *config::ParseConfig(yaml.str(), "bench.yaml", "/tmp", hooks);
}

void RunTicks(benchmark::State& state, double health_period_s) {
  Log::SetLevel(LogLevel::kWarning);
  boost::asio::io_context io;
  // The node's data plane beside it: a consumer that gets every snapshot and reports its load each tick.
  endpoints::LocalPublisher publisher;
  router::RouterSet routers([&publisher] { publisher.Wake(); });
  publisher.Subscribe(&routers);
  testing::FakeLauncher* fake = nullptr;
  auto controller = Controller::CreateWithLauncher(io,
                                                   [&](node::ReplicaListener* listener) {
                                                     auto f = std::make_unique<testing::FakeLauncher>(listener);
                                                     fake = f.get();
                                                     return f;
                                                   },
                                                   &publisher, nullptr, {});
  if (!controller->Apply(BigConfig(100, 10, 10, health_period_s)).ok()) state.SkipWithError("apply failed");
  for (int i = 0; i < 5; ++i) {
    controller->Tick();
    fake->FinishStarts();
    io.poll();
  }
  if (controller->replica_count() != 10000) state.SkipWithError("not all replicas started");
  for (auto _ : state) {
    controller->Tick();
    io.poll();
  }
  state.counters["replicas"] = static_cast<double>(controller->replica_count());
  state.counters["health_checks_per_tick"] =
      static_cast<double>(fake->health_checks) / static_cast<double>(state.iterations() + 5);
  controller.reset();
  publisher.Unsubscribe(&routers);
}

void BM_ReconcileTickSteady(benchmark::State& state) { RunTicks(state, 10); }
void BM_ReconcileTickAllHealthChecksDue(benchmark::State& state) { RunTicks(state, 0); }
BENCHMARK(BM_ReconcileTickSteady)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReconcileTickAllHealthChecksDue)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace ferry::controller
