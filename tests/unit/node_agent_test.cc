// The node agent with real replica processes (this build's ferry binary in replica mode): start, ready,
// health, reconfigure, stats, stop, a constructor that throws, and a replica killed by a signal. Every wait
// runs the io_context for a bounded time.
#include "node/node_agent.h"

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <map>

namespace ferry::node {
namespace {

using ::testing::HasSubstr;

struct Events : ReplicaListener {
  void OnReplicaReady(const std::string& id, const std::string& socket_path, const std::string& tcp_address,
                      pid_t pid) override {
    ready[id] = {socket_path, pid};
  }
  void OnReplicaExited(const std::string& id, bool was_ready, const std::string& message) override {
    exited[id] = {was_ready, message};
  }
  std::map<std::string, std::pair<std::string, pid_t>> ready;
  std::map<std::string, std::pair<bool, std::string>> exited;
};

spec::ReplicaSpec Echo(const std::string& id, nlohmann::json args = nlohmann::json::object()) {
  spec::ReplicaSpec s;
  s.replica_id = id;
  s.application = "app";
  s.deployment = "Echo";
  s.import_path = "builtin:echo";
  s.symbol = "echo";
  s.args = std::move(args);
  s.graceful_shutdown_timeout_s = 5;
  return s;
}

class NodeAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = std::filesystem::path(::testing::TempDir()) / ("node-agent-" + std::to_string(getpid()));
    std::filesystem::create_directories(run_dir_);
    auto agent = NodeAgent::Create(io_, FERRY_BIN_FOR_TESTS, run_dir_.string(), &events_);
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = std::move(*agent);
  }
  void TearDown() override {
    agent_.reset();
    std::filesystem::remove_all(run_dir_);
  }
  // Runs the agent's events until `done` holds (at most 60 s).
  bool RunUntil(const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      io_.restart();
      io_.run_for(std::chrono::milliseconds(20));
    }
    return done();
  }

  boost::asio::io_context io_;
  std::filesystem::path run_dir_;
  Events events_;
  std::unique_ptr<NodeAgent> agent_;
};

TEST_F(NodeAgentTest, StartsAReplicaAndCarriesControlCallsToIt) {
  ASSERT_TRUE(agent_->StartReplica(Echo("app#Echo#1")).ok());
  ASSERT_TRUE(RunUntil([&] { return events_.ready.count("app#Echo#1") > 0; })) << "not ready";
  EXPECT_GT(events_.ready["app#Echo#1"].second, 0);
  EXPECT_EQ(agent_->live_replicas(), 1u);

  std::optional<absl::Status> health, reconfigured, sick;
  agent_->CheckHealth("app#Echo#1", [&](const absl::Status& s) { health = s; });
  ASSERT_TRUE(RunUntil([&] { return health.has_value(); }));
  EXPECT_TRUE(health->ok()) << *health;
  spec::ReplicaUpdate update;
  update.user_config = nlohmann::json{{"healthy", false}};
  agent_->Reconfigure("app#Echo#1", update, [&](const absl::Status& s) { reconfigured = s; });
  ASSERT_TRUE(RunUntil([&] { return reconfigured.has_value(); }));
  EXPECT_TRUE(reconfigured->ok()) << *reconfigured;
  agent_->CheckHealth("app#Echo#1", [&](const absl::Status& s) { sick = s; });
  ASSERT_TRUE(RunUntil([&] { return sick.has_value(); }));
  EXPECT_FALSE(sick->ok());
  std::optional<absl::StatusOr<ReplicaStats>> stats;
  agent_->GetStats("app#Echo#1", [&](absl::StatusOr<ReplicaStats> s) { stats = std::move(s); });
  ASSERT_TRUE(RunUntil([&] { return stats.has_value(); }));
  ASSERT_TRUE(stats->ok()) << stats->status();
  EXPECT_EQ((*stats)->requests_total, 0u);

  agent_->StopReplica("app#Echo#1", std::chrono::seconds(5));
  ASSERT_TRUE(RunUntil([&] { return events_.exited.count("app#Echo#1") > 0; })) << "did not exit";
  EXPECT_TRUE(events_.exited["app#Echo#1"].first);
  EXPECT_EQ(events_.exited["app#Echo#1"].second, "exited with code 0");
  EXPECT_EQ(agent_->live_replicas(), 0u);
  std::optional<absl::Status> gone;
  agent_->CheckHealth("app#Echo#1", [&](const absl::Status& s) { gone = s; });
  ASSERT_TRUE(gone.has_value());
  EXPECT_TRUE(absl::IsNotFound(*gone));
}

TEST_F(NodeAgentTest, AConstructorErrorAndACrashAreReportedAsTheyHappened) {
  ASSERT_TRUE(agent_->StartReplica(Echo("app#Echo#bad", {{"fail_constructor", "weights are corrupt"}})).ok());
  ASSERT_TRUE(RunUntil([&] { return events_.exited.count("app#Echo#bad") > 0; }));
  EXPECT_FALSE(events_.exited["app#Echo#bad"].first);
  EXPECT_THAT(events_.exited["app#Echo#bad"].second, HasSubstr("weights are corrupt"));

  ASSERT_TRUE(agent_->StartReplica(Echo("app#Echo#2")).ok());
  ASSERT_TRUE(RunUntil([&] { return events_.ready.count("app#Echo#2") > 0; }));
  ::kill(events_.ready["app#Echo#2"].second, SIGKILL);
  ASSERT_TRUE(RunUntil([&] { return events_.exited.count("app#Echo#2") > 0; }));
  EXPECT_TRUE(events_.exited["app#Echo#2"].first);
  EXPECT_THAT(events_.exited["app#Echo#2"].second, HasSubstr("killed by signal 9"));
}

}  // namespace
}  // namespace ferry::node
