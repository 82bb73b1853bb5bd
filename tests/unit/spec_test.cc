// The replica spec and its options: one default each, and one decoder for specs and reconfigure frames.
#include "spec/spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ferry::spec {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

ReplicaSpec Full() {
  ReplicaSpec s;
  s.replica_id = "app#D#1234";
  s.application = "app";
  s.deployment = "D";
  s.import_path = "builtin:busy";
  s.symbol = "busy";
  s.args = {{"work_us", 5}};
  s.user_config = {{"k", 1}};
  s.max_ongoing_requests = 9;
  s.batching = BatchingConfig{16, 0.02, 2, true};
  s.logging = LoggingConfig{LogEncoding::kJson, LogLevel::kWarning, false};
  s.tracing = TracingConfig{"http://127.0.0.1:4318/v1/traces", 0.5};
  return s;
}

TEST(SpecTest, ASpecRoundTripsThroughJsonWithItsTypedOptions) {
  ReplicaSpec s = Full();
  absl::StatusOr<ReplicaSpec> back = ReplicaSpecFromJson(ToJson(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ToJson(*back), ToJson(s));
  EXPECT_EQ(back->batching, s.batching);
  EXPECT_EQ(back->logging, s.logging);
  EXPECT_EQ(back->tracing, s.tracing);
  EXPECT_EQ(back->args, s.args);
}

TEST(SpecTest, LeftOutOptionsTakeTheirOneDefault) {
  absl::StatusOr<ReplicaSpec> s = ReplicaSpecFromJson(
      {{"replica_id", "r"}, {"application", "a"}, {"deployment", "d"}, {"import_path", "builtin:echo"}, {"symbol", "echo"},
       {"batching", json::object()}, {"tracing", {{"otlp_endpoint", "http://x:1/v1/traces"}}}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->batching, BatchingConfig{});
  EXPECT_EQ(s->batching->max_batch_size, 10);  // Ray Serve's @serve.batch defaults
  EXPECT_DOUBLE_EQ(s->batching->batch_wait_timeout_s, 0.01);
  EXPECT_EQ(s->logging, LoggingConfig{});
  EXPECT_DOUBLE_EQ(s->tracing->sampling_ratio, 0.01);
  EXPECT_EQ(s->max_ongoing_requests, 5);
}

TEST(SpecTest, BadSpecsAreErrorsThatNameTheField) {
  EXPECT_THAT(ReplicaSpecFromJson(json::object()).status().message(), HasSubstr("replica_id: required"));
  json j = ToJson(Full());
  j["max_ongoing_requests"] = "nine";
  EXPECT_THAT(ReplicaSpecFromJson(j).status().message(), HasSubstr("max_ongoing_requests: unexpected type string"));
  j = ToJson(Full());
  j["logging"]["encoding"] = "XML";
  EXPECT_THAT(ReplicaSpecFromJson(j).status().message(), HasSubstr("logging_config.encoding: expected TEXT or JSON"));
  j = ToJson(Full());
  j["batching"] = 3;
  EXPECT_THAT(ReplicaSpecFromJson(j).status().message(), HasSubstr("batching: expected an object"));
  EXPECT_FALSE(ReplicaSpecFromJson(json::parse("[1]")).ok());
}

TEST(SpecTest, AReconfigureCarriesOnlyWhatChanges) {
  ReplicaUpdate u;
  EXPECT_TRUE(u.empty());
  EXPECT_EQ(ToJson(u), json::object());
  u.max_ongoing_requests = 7;
  u.tracing = std::optional<TracingConfig>();  // tracing turned off
  json j = ToJson(u);
  EXPECT_EQ(j, json({{"max_ongoing_requests", 7}, {"tracing", nullptr}}));
  absl::StatusOr<ReplicaUpdate> back = ReplicaUpdateFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->max_ongoing_requests, 7);
  ASSERT_TRUE(back->tracing.has_value());
  EXPECT_FALSE(back->tracing->has_value());
  EXPECT_FALSE(back->logging);
  EXPECT_FALSE(back->user_config);
  u = {};
  u.user_config = json{{"threshold", 3}};
  u.logging = LoggingConfig{LogEncoding::kJson, LogLevel::kDebug, true};
  back = ReplicaUpdateFromJson(ToJson(u));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->user_config, u.user_config);
  EXPECT_EQ(back->logging, u.logging);
  EXPECT_FALSE(ReplicaUpdateFromJson({{"max_ongoing_requests", 0}}).ok());
  EXPECT_FALSE(ReplicaUpdateFromJson({{"logging_config", "loud"}}).ok());
}

}  // namespace
}  // namespace ferry::spec
