// The replica's deployment host, driving the built-ins through the plugin ABI as a replica does.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "replica/internal/deployment_host.h"

namespace ferry::replica {
namespace {

using ::testing::HasSubstr;

ReplicaSpec Spec(std::string symbol, nlohmann::json args = nlohmann::json::object()) {
  ReplicaSpec s;
  s.replica_id = "app#D#1";
  s.application = "app";
  s.deployment = "D";
  s.import_path = "builtin:" + symbol;
  s.builtin = true;
  s.symbol = std::move(symbol);
  s.args = std::move(args);
  return s;
}

transport::RequestMessage Request(std::string_view query = "") {
  transport::RequestMessage m;
  m.request_id = "rid-1";
  m.method = "PUT";
  m.path = "/app/x";
  m.query = query;
  m.route_prefix = "/app";
  m.headers = {{"x-a", "1"}};
  m.body = "payload";
  return m;
}

TEST(ReplicaHostTest, EchoAnswersWithTheRequest) {
  auto host = DeploymentHost::Create(Spec("echo"));
  ASSERT_TRUE(host.ok()) << host.status();
  std::atomic<bool> cancelled{false};
  FerryResponseSink response;
  (*host)->Handle(Request("q=1"), cancelled, &response);
  EXPECT_EQ(response.status, 200);
  auto body = nlohmann::json::parse(response.body);
  EXPECT_EQ(body["method"], "PUT");
  EXPECT_EQ(body["path"], "/app/x");
  EXPECT_EQ(body["query"], "q=1");
  EXPECT_EQ(body["route_prefix"], "/app");
  EXPECT_EQ(body["headers"]["x-a"], "1");
  EXPECT_EQ(body["body"], "payload");
  EXPECT_EQ(body["request_id"], "rid-1");
}

TEST(ReplicaHostTest, ConstructorErrorCarriesTheExceptionText) {
  auto host = DeploymentHost::Create(Spec("busy", {{"work_us", -1}}));
  ASSERT_FALSE(host.ok());
  EXPECT_THAT(std::string(host.status().message()), HasSubstr("constructor of D failed: args.work_us"));
  auto wrong_type = DeploymentHost::Create(Spec("busy", {{"work_us", "lots"}}));
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_THAT(std::string(wrong_type.status().message()), HasSubstr("args.work_us"));
}

TEST(ReplicaHostTest, UnknownBuiltinAndMissingPluginFail) {
  EXPECT_FALSE(DeploymentHost::Create(Spec("nope")).ok());
  ReplicaSpec plugin = Spec("Model");
  plugin.builtin = false;
  plugin.plugin_path = "/nonexistent/libmodel.so";
  auto host = DeploymentHost::Create(plugin);
  ASSERT_FALSE(host.ok());
  EXPECT_THAT(std::string(host.status().message()), HasSubstr("cannot load plugin"));
}

TEST(ReplicaHostTest, BusyWorksAndStopsWhenCancelled) {
  auto host = DeploymentHost::Create(Spec("busy", {{"work_us", 100}}));
  ASSERT_TRUE(host.ok()) << host.status();
  std::atomic<bool> cancelled{false};
  FerryResponseSink done;
  (*host)->Handle(Request(), cancelled, &done);
  auto body = nlohmann::json::parse(done.body);
  EXPECT_EQ(body["work_us"], 100);
  EXPECT_GE(body["spent_us"].get<int>(), 100);
  EXPECT_EQ(body["cancelled"], false);

  cancelled.store(true);
  FerryResponseSink stopped;
  (*host)->Handle(Request("work_us=60000000"), cancelled, &stopped);  // a minute of work, cancelled at once
  auto b2 = nlohmann::json::parse(stopped.body);
  EXPECT_EQ(b2["cancelled"], true);
  EXPECT_LT(b2["spent_us"].get<int>(), 60000000);

  FerryResponseSink bad;
  cancelled.store(false);
  (*host)->Handle(Request("work_us=abc"), cancelled, &bad);
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.body, HasSubstr("work_us"));
}

}  // namespace
}  // namespace ferry::replica
