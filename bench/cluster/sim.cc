// bench/cluster/sim: a simulated cluster against a real etcd (started here): NODES node agents in this one
// process — each a ClusterMember (its own lease) and a NodeWorker following its assignments, over a launcher
// without processes whose replicas are ready at once — and a leading node whose controller places REPLICAS
// replicas (100 deployments of builtin:echo, num_cpus 1) through the real ClusterLauncher and etcd. Health
// checks answer at once (no replica processes to call). Measured:
//   1. the deploy: until every replica is RUNNING;
//   2. the controller's tick in steady state (Tick() timed 50 times) and etcd's writes per second;
//   3. a LOST-node loss (their members halt, as killed processes would: leases lapse after the TTL, 2 s):
//      until every replica is RUNNING again, none on a lost node;
//   4. the leader's loss: until the standby leads, and until its controller (restored from etcd, its replicas
//      taken over from its launcher's mirror of etcd, kept since before the loss as a real node's is) has
//      every replica RUNNING, taken over rather than restarted. The agents do not campaign: the simulation
//      runs no controller for them (a real node's would follow etcd from its start, as the standby's does).
// Usage: build/bench/cluster_sim [NODES] [REPLICAS] [LOST]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "cluster/cluster.h"
#include "cluster/cluster_launcher.h"
#include "common/common.h"
#include "common/etcd_server.h"
#include "common/fake_launcher.h"
#include "controller/controller.h"
#include "endpoints/endpoints.h"

using namespace ferry;
using SimClock = std::chrono::steady_clock;

namespace {

double Seconds(SimClock::duration d) { return std::chrono::duration<double>(d).count(); }

config::Config BigConfig(int deployments, int replicas_each) {
  std::ostringstream yaml;
  yaml << "applications:\n  - name: sim\n    route_prefix: /sim\n    deployments:\n";
  for (int d = 0; d < deployments; ++d)
    yaml << "      - {name: D" << d << ", import_path: \"builtin:echo\", num_replicas: " << replicas_each
         << ", health_check_period_s: 10}\n";
  config::ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view) { return true; };
  return *config::ParseConfig(yaml.str(), "sim.yaml", "/tmp", hooks);
}

cluster::ClusterOptions Options(const testing::EtcdServer& etcd, const std::string& name, double cpus, bool campaign) {
  cluster::ClusterOptions o;
  o.campaign = campaign;
  o.etcd = {etcd.endpoint()};
  o.node_id = name;
  o.address = "127.0.0.1";
  o.resources = {{"CPU", cpus}};
  o.lease_ttl_s = 2;
  return o;
}

int64_t Revision(cluster::Etcd& etcd) {
  absl::StatusOr<cluster::RangeResult> r = etcd.Get("/ferry/leader");
  return r.ok() ? r->revision : -1;
}

}  // namespace

int main(int argc, char** argv) {
  const int nodes = argc > 1 ? std::atoi(argv[1]) : 100;
  const int replicas = argc > 2 ? std::atoi(argv[2]) : 10000;
  const int lost = argc > 3 ? std::atoi(argv[3]) : 10;
  Log::SetLevel(LogLevel::kError);
  testing::EtcdServer etcd_server;
  cluster::Etcd etcd(cluster::EtcdOptions{{etcd_server.endpoint()}});
  boost::asio::io_context io;

  // The leading node: it runs the controller and takes no replicas (CPU 0); a standby like it takes over
  // when it dies.
  cluster::ClusterMember leader(Options(etcd_server, "ctl", 0, true), {});
  if (!leader.Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok()) return 1;
  while (!leader.leading()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  cluster::ClusterMember standby(Options(etcd_server, "ctl-2", 0, true), {});
  if (!standby.Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok()) return 1;

  // The agents: room for their share of the replicas and a tenth more (a loss of a tenth fits).
  const double cpus = std::ceil(1.25 * replicas / nodes);
  std::vector<std::unique_ptr<cluster::ClusterMember>> members;
  std::vector<std::unique_ptr<cluster::NodeWorker>> workers;
  std::vector<testing::FakeLauncher*> launchers;
  for (int i = 0; i < nodes; ++i) {
    members.push_back(std::make_unique<cluster::ClusterMember>(
        Options(etcd_server, "agent-" + std::to_string(i), cpus, false), cluster::ClusterMember::Callbacks{}));
    if (!members.back()->Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok()) return 1;
    workers.push_back(cluster::NodeWorker::CreateWith(io, members.back().get(), [&](node::ReplicaListener* l) {
      auto fake = std::make_unique<testing::FakeLauncher>(l);
      launchers.push_back(fake.get());
      return fake;
    }));
    workers.back()->Start();
  }

  endpoints::LocalPublisher publisher;
  testing::FakeLauncher control(nullptr);  // health checks answer at once
  std::vector<std::unique_ptr<cluster::EtcdStateStore>> stores;
  // The controller of the node `member` (as a node makes it at its start); `launcher_out`, when not null,
  // gets its launcher.
  auto make_controller = [&](cluster::ClusterMember* member, cluster::ClusterLauncher** launcher_out) {
    stores.push_back(std::make_unique<cluster::EtcdStateStore>(member));
    controller::ControllerOptions options;
    options.node_id = member->options().node_id;
    return controller::Controller::CreateWithLauncher(
        io,
        [&, member, launcher_out](node::ReplicaListener* listener) {
          auto launcher = std::make_unique<cluster::ClusterLauncher>(io, member, listener);
          launcher->SetControlOverride(&control);
          if (launcher_out) *launcher_out = launcher.get();
          return launcher;
        },
        &publisher, stores.back().get(), {}, options);
  };
  auto controller = make_controller(&leader, nullptr);
  // The agents' replicas get ready (and stop) as soon as they are asked (every 5 ms); the controller ticks on
  // its timer. `until` is asked every 25 ms (so the times measured are late by up to that): it takes the
  // controller's snapshot of 10,000 replicas, which would otherwise take the io thread from the nodes.
  auto run = [&](auto until, double limit_s) {
    const auto deadline = SimClock::now() + std::chrono::duration<double>(limit_s);
    while (!until() && SimClock::now() < deadline) {
      for (int i = 0; i < 5; ++i) {
        io.restart();  // a run out of work stops the io_context
        io.run_for(std::chrono::milliseconds(5));
        for (testing::FakeLauncher* f : launchers) {
          f->FinishStarts();
          f->FinishStops();
        }
      }
    }
    return until();
  };
  auto running = [&](const std::set<std::string>& not_on) {
    controller::ControllerSnapshot s = controller->Snapshot();
    int n = 0;
    for (const auto& app : s.applications)
      for (const auto& d : app.deployments)
        for (const auto& r : d.replicas)
          if (r.state == controller::ReplicaState::kRunning && !not_on.contains(r.node_id)) ++n;
    return n;
  };
  if (!controller->Restore().ok()) return 1;
  controller->Start();

  const int deployments = 100;
  const auto deploy_at = SimClock::now();
  if (!controller->Apply(BigConfig(deployments, replicas / deployments)).ok()) return 1;
  const int want = replicas / deployments * deployments;
  // Every replica RUNNING, none on `not_on`: the application's status is asked first (cheap), the snapshot
  // of every replica only once it says RUNNING.
  auto all_running = [&](const std::set<std::string>& not_on) {
    return controller->application_status("sim") == controller::ApplicationStatus::kRunning && running(not_on) == want;
  };
  if (!run([&] { return all_running({}); }, 300)) {
    std::printf("deploy: only %d of %d replicas RUNNING after 300 s\n", running({}), want);
    return 1;
  }
  std::printf("deploy: %d replicas on %d nodes RUNNING after %.2f s\n", want, nodes,
              Seconds(SimClock::now() - deploy_at));

  // Steady state: the controller's tick, and etcd's writes.
  run([] { return false; }, 3);
  std::vector<double> ticks;
  for (int i = 0; i < 50; ++i) {
    const auto t0 = SimClock::now();
    controller->Tick();
    ticks.push_back(Seconds(SimClock::now() - t0) * 1000);
    run([] { return false; }, 0.05);
  }
  std::sort(ticks.begin(), ticks.end());
  const int64_t before = Revision(etcd);
  run([] { return false; }, 10);
  const int64_t writes = Revision(etcd) - before;
  std::printf(
      "steady state: controller tick p50 %.2f ms, max %.2f ms (50 ticks, %d replicas); etcd writes %lld in "
      "10 s (%.1f/s)\n",
      ticks[ticks.size() / 2], ticks.back(), want, static_cast<long long>(writes), writes / 10.0);

  // FERRY_SIM_VERBOSE=1: the info log (placements, replicas RUNNING, the election) from here on.
  if (getenv("FERRY_SIM_VERBOSE")) Log::SetLevel(LogLevel::kInfo);
  // A loss of `lost` nodes: their members halt (leases lapse after the TTL).
  std::set<std::string> gone;
  const auto lost_at = SimClock::now();
  for (int i = 0; i < lost && i < nodes; ++i) {
    members[i]->Halt();
    gone.insert("agent-" + std::to_string(i));
  }
  // A timeline of the recovery, every 250 ms: replicas RUNNING on the lost nodes and elsewhere.
  auto next_mark = SimClock::now();
  auto progress = [&] {
    if (SimClock::now() < next_mark) return false;
    next_mark += std::chrono::milliseconds(250);
    controller::ControllerSnapshot s = controller->Snapshot();
    int on_lost = 0, off_lost = 0, other = 0;
    for (const auto& app : s.applications)
      for (const auto& d : app.deployments)
        for (const auto& r : d.replicas) {
          if (r.state != controller::ReplicaState::kRunning)
            ++other;
          else if (gone.contains(r.node_id))
            ++on_lost;
          else
            ++off_lost;
        }
    std::printf("  +%.2f s: RUNNING on the lost nodes %d, elsewhere %d; not RUNNING %d\n",
                Seconds(SimClock::now() - lost_at), on_lost, off_lost, other);
    return false;
  };
  if (!run([&] { return progress() || all_running(gone); }, 120)) {
    std::printf("loss: only %d of %d replicas RUNNING off the lost nodes after 120 s\n", running(gone), want);
    return 1;
  }
  std::printf(
      "loss of %d nodes (%d replicas): every replica RUNNING again on the others after %.2f s (lease TTL "
      "2 s)\n",
      lost, want / nodes * lost, Seconds(SimClock::now() - lost_at));

  // The leader's node dies: its member halts (its lease lapses) and its controller goes with it. The standby
  // has run its controller all along (not leading, it only follows etcd); it leads, waits until its
  // launcher's mirror shows its own election, restores the desired state from etcd and takes the live
  // replicas over; measured until it leads, and until its controller has every replica RUNNING.
  cluster::ClusterLauncher* standby_launcher = nullptr;
  auto standby_controller = make_controller(&standby, &standby_launcher);
  for (bool synced = false; !synced;) {  // its first read of the whole prefix takes a while
    bool answered = false;
    standby_launcher->WhenCaughtUp(Revision(etcd), [&](bool current) { answered = true, synced = current; });
    run([&] { return answered; }, 30);
  }
  auto running_ids = [&] {
    std::set<std::string> ids;
    for (const auto& app : controller->Snapshot().applications)
      for (const auto& d : app.deployments)
        for (const auto& r : d.replicas)
          if (r.state == controller::ReplicaState::kRunning) ids.insert(r.replica_id);
    return ids;
  };
  const std::set<std::string> before_failover = running_ids();
  const auto failover_at = SimClock::now();
  leader.Halt();
  controller.reset();
  if (!run([&] { return standby.leading(); }, 60)) {
    std::printf("failover: the standby did not lead within 60 s\n");
    return 1;
  }
  const double led_after = Seconds(SimClock::now() - failover_at);
  controller = std::move(standby_controller);
  const auto restore_at = SimClock::now();
  bool restored = false;
  standby_launcher->WhenCaughtUp(standby.fence(), [&](bool) {
    if (!controller->Restore().ok()) std::printf("failover: the new leader could not restore\n");
    std::printf("  the new leader caught up and restored in %.2f s\n", Seconds(SimClock::now() - restore_at));
    controller->Start();
    restored = true;
  });
  next_mark = SimClock::now();
  if (!run([&] { return progress() || (restored && all_running(gone)); }, 120)) {
    std::printf("failover: only %d of %d replicas RUNNING under the new leader after 120 s\n", running(gone), want);
    return 1;
  }
  const double all_after = Seconds(SimClock::now() - failover_at);
  const std::set<std::string> after_failover = running_ids();
  int kept = 0;
  for (const std::string& id : after_failover) kept += before_failover.contains(id);
  std::printf(
      "leader failover with %d replicas: %s leads after %.2f s, every replica RUNNING under its controller "
      "after %.2f s, %d of them the same replicas taken over (lease TTL 2 s)\n",
      want, standby.options().node_id.c_str(), led_after, all_after, kept);
  controller.reset();
  workers.clear();
  for (auto& m : members) m->Stop();
  standby.Stop();
  return 0;
}
