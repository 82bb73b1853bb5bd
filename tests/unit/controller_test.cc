// The controller's reconcile logic against a launcher without processes.
#include "controller/controller.h"

#include <filesystem>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "admin/render.h"
#include "common/fake_clock.h"
#include "common/fake_launcher.h"
#include "router/router_set.h"

namespace ferry::controller {
namespace {

using ::testing::HasSubstr;

config::Config Parse(const std::string& yaml) {
  config::ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view) { return true; };
  auto c = config::ParseConfig(yaml, "test.yaml", "/tmp", hooks);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// `replicas` < 0: no num_replicas (for an autoscaling_config in `extra`).
std::string App(int replicas, const std::string& args = "{v: 1}", const std::string& extra = "") {
  return "applications:\n  - name: app\n    route_prefix: /app\n    deployments:\n      - name: D\n"
         "        import_path: builtin:echo\n        health_check_period_s: 0\n" +
         (replicas >= 0 ? "        num_replicas: " + std::to_string(replicas) + "\n" : std::string()) +
         "        args: " + args + "\n" + extra;
}

class ControllerTest : public ::testing::Test {
 protected:
  // The data plane a node has: the proxy's routers, subscribed to what the controller publishes.
  void SetUp() override {
    publisher_.Subscribe(&routers_);
    Make(nullptr);
  }
  void TearDown() override {
    controller_.reset();
    publisher_.Unsubscribe(&routers_);
  }

  void Make(StateStore* store) {
    controller_ = Controller::CreateWithLauncher(
        io_,
        [this](node::ReplicaListener* listener) {
          auto fake = std::make_unique<testing::FakeLauncher>(listener);
          fake_ = fake.get();
          return fake;
        },
        &publisher_, store, {}, Options());
  }

  // Ticks, lets started replicas get ready and pass their first check, ticks again.
  void Settle(int rounds = 6) {
    for (int i = 0; i < rounds; ++i) {
      controller_->Tick();
      fake_->FinishStarts();
      fake_->FinishStops();
      io_.poll();
    }
  }

  nlohmann::json Deployment() {
    return admin::StatusJson(controller_->Snapshot())["applications"]["app"]["deployments"]["D"];
  }
  std::string AppStatus() { return admin::StatusJson(controller_->Snapshot())["applications"]["app"]["status"]; }
  int Routed() {
    const router::Route* r = routers_.routing()->Get()->Match("/app");
    return r ? r->router->Stats().replicas : -1;
  }

  ControllerOptions Options() {
    ControllerOptions o;
    o.clock = &clock_;  // simulated time: it moves only by Advance
    return o;
  }
  // Moves simulated time and ticks, as the controller's timer would.
  void AdvanceAndTick(std::chrono::milliseconds d) {
    clock_.Advance(d);
    controller_->Tick();
  }
  int Started() const { return static_cast<int>(fake_->started.size()); }

  testing::FakeClock clock_;
  boost::asio::io_context io_;
  endpoints::LocalPublisher publisher_;
  router::RouterSet routers_{[this] { publisher_.Wake(); }, /*seed=*/7};
  std::unique_ptr<Controller> controller_;
  testing::FakeLauncher* fake_ = nullptr;
};

TEST_F(ControllerTest, AppliesAConfigAndReportsRunning) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  EXPECT_EQ(AppStatus(), "NOT_STARTED");
  controller_->Tick();
  EXPECT_EQ(fake_->started.size(), 2u);
  EXPECT_EQ(Routed(), 0);  // routed only once ready and healthy
  EXPECT_EQ(Deployment()["status"], "UPDATING");
  Settle();
  EXPECT_EQ(AppStatus(), "RUNNING");
  EXPECT_EQ(Deployment()["status"], "HEALTHY");
  EXPECT_EQ(Deployment()["replica_states"]["RUNNING"], 2);
  EXPECT_EQ(Routed(), 2);
  EXPECT_EQ(fake_->started.size(), 2u);
}

TEST_F(ControllerTest, SameConfigTwiceChangesNothing) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  EXPECT_EQ(fake_->started.size(), 2u);
  EXPECT_TRUE(fake_->stopped.empty());
  EXPECT_TRUE(controller_->HistoryJson().empty());
}

TEST_F(ControllerTest, RollingUpdateNeverDropsBelowTarget) {
  ASSERT_TRUE(controller_->Apply(Parse(App(4))).ok());
  Settle();
  ASSERT_EQ(Routed(), 4);
  ASSERT_TRUE(controller_->Apply(Parse(App(4, "{v: 2}"))).ok());
  std::set<std::string> old_ids;
  for (const auto& s : fake_->started) old_ids.insert(s.replica_id);
  for (int i = 0; i < 40 && !(AppStatus() == "RUNNING" && fake_->stopped.size() == 4); ++i) {
    controller_->Tick();
    EXPECT_GE(Routed(), 4) << "capacity dipped at step " << i;
    // At most one new replica (20% of 4, at least 1) starts at a time.
    EXPECT_LE(Deployment()["replica_states"].value("STARTING", 0), 1);
    fake_->FinishStarts();
    fake_->FinishStops();
  }
  EXPECT_EQ(AppStatus(), "RUNNING");
  EXPECT_EQ(fake_->started.size(), 8u);
  EXPECT_EQ(std::set<std::string>(fake_->stopped.begin(), fake_->stopped.end()), old_ids);
  EXPECT_EQ(controller_->HistoryJson()["app"].size(), 1u);
}

TEST_F(ControllerTest, UserConfigAndLimitsApplyInPlace) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  ASSERT_TRUE(
      controller_
          ->Apply(Parse(App(2, "{v: 1}", "        user_config: {threshold: 3}\n        max_ongoing_requests: 9\n")))
          .ok());
  Settle();
  EXPECT_EQ(fake_->started.size(), 2u);  // no restart
  ASSERT_EQ(fake_->reconfigures.size(), 2u);
  EXPECT_EQ(fake_->reconfigures[0].second["user_config"]["threshold"], 3);
  EXPECT_EQ(fake_->reconfigures[0].second["max_ongoing_requests"], 9);
  EXPECT_EQ(Deployment()["status"], "HEALTHY");
}

TEST_F(ControllerTest, ScalingUpAndDown) {
  ASSERT_TRUE(controller_->Apply(Parse(App(1))).ok());
  Settle();
  ASSERT_TRUE(controller_->Apply(Parse(App(3))).ok());
  controller_->Tick();
  EXPECT_EQ(Deployment()["status"], "UPSCALING");
  Settle();
  EXPECT_EQ(Routed(), 3);
  ASSERT_TRUE(controller_->Apply(Parse(App(1))).ok());
  Settle();
  EXPECT_EQ(Routed(), 1);
  EXPECT_EQ(fake_->stopped.size(), 2u);
  EXPECT_EQ(Deployment()["status"], "HEALTHY");
}

TEST_F(ControllerTest, FailedVersionKeepsTheOldOneServing) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  ASSERT_TRUE(controller_->Apply(Parse(App(2, "{v: 2}", "        max_constructor_retry_count: 1\n"))).ok());
  controller_->Tick();
  fake_->FinishStarts("constructor said no");
  controller_->Tick();
  EXPECT_EQ(AppStatus(), "DEPLOY_FAILED");
  EXPECT_THAT(admin::StatusJson(controller_->Snapshot())["applications"]["app"]["message"].get<std::string>(),
              HasSubstr("constructor said no"));
  EXPECT_EQ(Routed(), 2);
  EXPECT_TRUE(fake_->stopped.empty());
  Settle();
  EXPECT_EQ(fake_->started.size(), 3u);  // no more attempts at the failed version
}

// A version whose code did not build (config::ApplicationConfig::build_error, a Python import that
// failed): the application is DEPLOY_FAILED with the traceback, the running version keeps serving and is
// what is stored, and the next version that builds clears it.
TEST_F(ControllerTest, AVersionThatDidNotBuildKeepsTheOldOneServing) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  config::Config broken = Parse(App(2, "{v: 2}"));
  broken.applications[0].deployments.clear();
  broken.applications[0].build_error = "Traceback (most recent call last):\nSyntaxError: invalid syntax";
  ASSERT_TRUE(controller_->Apply(broken).ok());
  Settle();
  EXPECT_EQ(AppStatus(), "DEPLOY_FAILED");
  EXPECT_THAT(admin::StatusJson(controller_->Snapshot())["applications"]["app"]["message"].get<std::string>(),
              HasSubstr("Deploying app 'app' failed with exception:\nTraceback (most recent call last):\nSyntaxError"));
  EXPECT_EQ(Routed(), 2);
  EXPECT_EQ(fake_->started.size(), 2u);
  EXPECT_TRUE(fake_->stopped.empty());
  EXPECT_EQ(Deployment()["replica_states"]["RUNNING"], 2);
  EXPECT_TRUE(controller_->HistoryJson().empty()) << "nothing new ran: no history";

  // A new application that did not build: DEPLOY_FAILED, nothing started, no route.
  config::Config both = broken;
  both.applications.push_back(broken.applications[0]);
  both.applications[1].name = "other";
  both.applications[1].route_prefix = "/other";
  ASSERT_TRUE(controller_->Apply(both).ok());
  Settle();
  EXPECT_EQ(admin::StatusJson(controller_->Snapshot())["applications"]["other"]["status"], "DEPLOY_FAILED");
  EXPECT_EQ(fake_->started.size(), 2u);
  EXPECT_EQ(routers_.routing()->Get()->Match("/other"), nullptr);

  // Built at last: the new version rolls out and the application runs.
  ASSERT_TRUE(controller_->Apply(Parse(App(2, "{v: 2}"))).ok());
  Settle(12);
  EXPECT_EQ(AppStatus(), "RUNNING");
  EXPECT_EQ(fake_->started.size(), 4u);
  EXPECT_EQ(admin::StatusJson(controller_->Snapshot())["applications"]["app"]["message"], "");
}

TEST_F(ControllerTest, CrashedReplicaIsReplaced) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  std::string victim = fake_->started[0].replica_id;
  fake_->Crash(victim);
  EXPECT_EQ(Routed(), 1);
  controller_->Tick();
  EXPECT_EQ(Deployment()["status"], "UNHEALTHY");
  Settle();
  EXPECT_EQ(Routed(), 2);
  EXPECT_EQ(Deployment()["restarts"], 1);
  EXPECT_EQ(Deployment()["status"], "HEALTHY");
}

TEST_F(ControllerTest, UnhealthyReplicaLeavesRoutingAndIsReplaced) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  std::string sick = fake_->started[0].replica_id;
  fake_->unhealthy.insert(sick);
  for (int i = 0; i < 3; ++i) controller_->Tick();
  EXPECT_EQ(Routed(), 1);  // out of routing before it stops
  EXPECT_EQ(Deployment()["health_check_failures"], 3);
  Settle();
  EXPECT_THAT(fake_->stopped, ::testing::Contains(sick));
  EXPECT_EQ(Routed(), 2);
  EXPECT_EQ(Deployment()["restarts"], 1);
}

TEST_F(ControllerTest, AReplicaStopsOnlyOnceTheDataPlaneHasNothingInFlightOnIt) {
  struct Holder : router::Waiter {
    void OnAssigned(router::ReplicaLease lease) override { held = std::move(lease); }
    router::ReplicaLease held;
  };
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  std::shared_ptr<router::Router> router = routers_.Find("app/D");
  ASSERT_NE(router, nullptr);
  std::vector<router::ReplicaLease> held(2);  // one request on each replica (two choices: the idle one wins)
  for (auto& lease : held)
    ASSERT_EQ(router->Acquire(std::make_shared<Holder>(), &lease), router::Router::Result::kAssigned);
  ASSERT_NE(held[0].replica().key, held[1].replica().key);
  ASSERT_TRUE(controller_->Apply(Parse(App(1))).ok());
  for (int i = 0; i < 3; ++i) {
    controller_->Tick();
    io_.poll();
  }
  EXPECT_EQ(Routed(), 1);
  EXPECT_TRUE(fake_->stopped.empty()) << "stopped with a request in flight on it";
  EXPECT_EQ(Deployment()["ongoing_requests"], 2);  // from the data plane's report
  held.clear();                                    // the requests end; the data plane wakes the controller
  io_.restart();
  io_.poll();
  EXPECT_EQ(fake_->stopped.size(), 1u);
  Settle();
  EXPECT_EQ(Deployment()["status"], "HEALTHY");
}

TEST_F(ControllerTest, DeletingAnApplicationStopsItAndRemovesItsRoute) {
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  Settle();
  ASSERT_TRUE(controller_->DeleteAll().ok());
  EXPECT_EQ(routers_.routing()->Get()->Match("/app"), nullptr);
  controller_->Tick();
  EXPECT_EQ(AppStatus(), "DELETING");
  Settle();
  EXPECT_TRUE(admin::StatusJson(controller_->Snapshot())["applications"].empty());
  EXPECT_EQ(fake_->live().size(), 0u);
}

TEST_F(ControllerTest, RollbackReturnsToThePreviousConfig) {
  EXPECT_FALSE(controller_->Rollback("app").ok());
  ASSERT_TRUE(controller_->Apply(Parse(App(1))).ok());
  Settle();
  EXPECT_TRUE(absl::IsFailedPrecondition(controller_->Rollback("app")));
  ASSERT_TRUE(controller_->Apply(Parse(App(3))).ok());
  Settle();
  ASSERT_TRUE(controller_->Rollback("app").ok());
  Settle();
  EXPECT_EQ(Routed(), 1);
  EXPECT_EQ(controller_->applied_config()->applications[0].deployments[0].num_replicas, 1);
}

TEST_F(ControllerTest, StateSurvivesARestart) {
  std::string dir = ::testing::TempDir() + "/controller-state";
  std::filesystem::remove_all(dir);
  auto store = EmbeddedStateStore::Open(dir);
  ASSERT_TRUE(store.ok());
  Make(store->get());
  ASSERT_TRUE(controller_->Apply(Parse(App(2))).ok());
  ASSERT_TRUE(controller_->Apply(Parse(App(3))).ok());
  Settle();
  controller_.reset();
  // A new node on the same state directory.
  auto reopened = EmbeddedStateStore::Open(dir);
  Make(reopened->get());
  ASSERT_TRUE(controller_->Restore().ok());
  controller_->Tick();
  EXPECT_EQ(Deployment()["replica_states"]["RECOVERING"], 3);
  Settle();
  EXPECT_EQ(AppStatus(), "RUNNING");
  EXPECT_EQ(controller_->HistoryJson()["app"].size(), 1u);
  ASSERT_TRUE(controller_->Rollback("app").ok());  // history came back too
  Settle();
  EXPECT_EQ(Routed(), 2);
}

// Simulated time: backoff, deadlines, drains and autoscaling delays, with the clock the test moves.

TEST_F(ControllerTest, CrashesInARowBackOffFrom100MsDoublingInSimulatedTime) {
  ASSERT_TRUE(controller_->Apply(Parse(App(1))).ok());
  Settle();
  ASSERT_EQ(Started(), 1);
  fake_->Crash(fake_->started.back().replica_id);
  controller_->Tick();
  EXPECT_EQ(Started(), 2) << "the first replacement starts at once";
  Settle();
  for (int delay_ms : {100, 200, 400}) {
    fake_->Crash(fake_->started.back().replica_id);  // crashed again soon after starting: no reset
    const int before = Started();
    AdvanceAndTick(std::chrono::milliseconds(delay_ms - 1));
    EXPECT_EQ(Started(), before) << "started before its " << delay_ms << " ms backoff";
    AdvanceAndTick(std::chrono::milliseconds(1));
    EXPECT_EQ(Started(), before + 1) << "not started once its " << delay_ms << " ms backoff passed";
    Settle();
  }
  // A replica that ran over 10 s before it died starts the count again: replaced at once.
  clock_.Advance(std::chrono::seconds(11));
  fake_->Crash(fake_->started.back().replica_id);
  const int before = Started();
  controller_->Tick();
  EXPECT_EQ(Started(), before + 1);
}

TEST_F(ControllerTest, AHealthCheckThatNeverAnswersFailsByItsTimeoutInSimulatedTime) {
  ASSERT_TRUE(
      controller_
          ->Apply(Parse("applications:\n  - name: app\n    route_prefix: /app\n    deployments:\n      - name: D\n"
                        "        import_path: builtin:echo\n        health_check_period_s: 10\n        "
                        "health_check_timeout_s: 5\n"))
          .ok());
  Settle();
  ASSERT_EQ(Routed(), 1);
  const std::string hung = fake_->started[0].replica_id;
  fake_->hung.insert(hung);
  // Checks every 10 s; each waits 5 s for an answer that never comes; the third failure replaces it.
  for (int failures = 0; failures < 3; ++failures) {
    AdvanceAndTick(std::chrono::seconds(10));  // the check is sent
    EXPECT_EQ(Deployment()["health_check_failures"], failures);
    AdvanceAndTick(std::chrono::milliseconds(4999));
    EXPECT_EQ(Deployment()["health_check_failures"], failures) << "failed before health_check_timeout_s";
    AdvanceAndTick(std::chrono::milliseconds(1));
    EXPECT_EQ(Deployment()["health_check_failures"], failures + 1);
  }
  EXPECT_EQ(Routed(), 0);
  controller_->Tick();  // it drained at once (nothing in flight): stopped
  EXPECT_THAT(fake_->stopped, ::testing::Contains(hung));
  EXPECT_THAT(Deployment()["message"].get<std::string>(), HasSubstr("did not answer within health_check_timeout_s"));
}

TEST_F(ControllerTest, ADrainThatNeverEndsStopsTheReplicaAtGracefulShutdownTimeoutInSimulatedTime) {
  struct Holder : router::Waiter {
    void OnAssigned(router::ReplicaLease lease) override { held = std::move(lease); }
    router::ReplicaLease held;
  };
  ASSERT_TRUE(controller_->Apply(Parse(App(1, "{v: 1}", "        graceful_shutdown_timeout_s: 20\n"))).ok());
  Settle();
  router::ReplicaLease stuck;  // a request that never finishes
  ASSERT_EQ(routers_.Find("app/D")->Acquire(std::make_shared<Holder>(), &stuck), router::Router::Result::kAssigned);
  ASSERT_TRUE(controller_->DeleteAll().ok());
  controller_->Tick();
  EXPECT_TRUE(fake_->stopped.empty());
  AdvanceAndTick(std::chrono::milliseconds(19999));
  EXPECT_TRUE(fake_->stopped.empty()) << "stopped with a request in flight before graceful_shutdown_timeout_s";
  AdvanceAndTick(std::chrono::milliseconds(1));
  EXPECT_EQ(fake_->stopped.size(), 1u);
}

TEST_F(ControllerTest, AutoscalingWaitsOutUpscaleDelayInSimulatedTime) {
  struct Holder : router::Waiter {
    void OnAssigned(router::ReplicaLease lease) override { held = std::move(lease); }
    router::ReplicaLease held;
  };
  ASSERT_TRUE(controller_
                  ->Apply(Parse(App(-1, "{v: 1}",
                                    "        autoscaling_config: {min_replicas: 1, max_replicas: 4, "
                                    "target_ongoing_requests: 2, upscale_delay_s: 30, metrics_interval_s: 1, "
                                    "look_back_period_s: 5}\n        max_ongoing_requests: 100\n")))
                  .ok());
  Settle();
  ASSERT_EQ(Routed(), 1);
  std::vector<router::ReplicaLease> load(8);  // 8 requests on 1 replica, target 2 each: it wants 4
  for (auto& lease : load)
    ASSERT_EQ(routers_.Find("app/D")->Acquire(std::make_shared<Holder>(), &lease), router::Router::Result::kAssigned);
  for (int s = 0; s < 29; ++s) AdvanceAndTick(std::chrono::seconds(1));
  EXPECT_EQ(Deployment()["target_num_replicas"], 1) << "scaled up before upscale_delay_s";
  for (int s = 0; s < 3; ++s) AdvanceAndTick(std::chrono::seconds(1));
  EXPECT_EQ(Deployment()["target_num_replicas"], 4);
  Settle();
  EXPECT_EQ(Routed(), 4);
}

TEST(StateStoreTest, SavesAtomicallyAndLoads) {
  std::string dir = ::testing::TempDir() + "/store-test";
  std::filesystem::remove_all(dir);
  auto store = EmbeddedStateStore::Open(dir);
  ASSERT_TRUE(store.ok());
  auto empty = (*store)->Load();
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->has_value());
  ASSERT_TRUE((*store)->Save("{\"a\": 1}").ok());
  ASSERT_TRUE((*store)->Save("{\"a\": 2}").ok());
  auto loaded = (*store)->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(**loaded, "{\"a\": 2}");
  EXPECT_FALSE(std::filesystem::exists((*store)->path() + ".tmp"));
}

}  // namespace
}  // namespace ferry::controller
