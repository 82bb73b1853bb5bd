#include "controller/autoscaling_policy.h"

#include <gtest/gtest.h>

namespace ferry::controller {
namespace {

using namespace std::chrono_literals;
using Time = AutoscalingPolicy::Time;

config::AutoscalingConfig Config() {
  config::AutoscalingConfig c;
  c.min_replicas = 1;
  c.max_replicas = 10;
  c.target_ongoing_requests = 2;
  c.upscale_delay_s = 3;
  c.downscale_delay_s = 10;
  c.metrics_interval_s = 1;
  c.look_back_period_s = 4;
  return c;
}

// Feeds `load` every second from `start` for `seconds`, deciding each second; returns the replica count.
int Simulate(AutoscalingPolicy& p, Time& now, int current, double load, int seconds, int running = -1) {
  for (int i = 0; i < seconds; ++i) {
    now += 1s;
    p.MaybeRecord(now, load);
    if (auto d = p.Decide(now, current, running < 0 ? current : running, 0)) current = d->to;
  }
  return current;
}

TEST(AutoscalingPolicyTest, DefaultsAreRayServes) {
  config::AutoscalingConfig c;
  EXPECT_EQ(c.min_replicas, 1);
  EXPECT_EQ(c.max_replicas, 1);
  EXPECT_EQ(c.target_ongoing_requests, 2);
  EXPECT_EQ(c.upscale_delay_s, 30);
  EXPECT_EQ(c.downscale_delay_s, 600);
  EXPECT_EQ(c.metrics_interval_s, 10);
  EXPECT_EQ(c.look_back_period_s, 30);
  EXPECT_FALSE(c.initial_replicas.has_value());
}

TEST(AutoscalingPolicyTest, ScalesUpOnlyAfterTheDelay) {
  AutoscalingPolicy p(Config());
  Time now{};
  // 12 ongoing at 2 per replica wants 6; the wish must hold for upscale_delay_s (3 s) first.
  EXPECT_EQ(Simulate(p, now, 1, 12, 2), 1);
  EXPECT_EQ(Simulate(p, now, 1, 12, 2), 6);
}

TEST(AutoscalingPolicyTest, ScalesDownAfterTheLongerDelayAndStopsAtMin) {
  AutoscalingPolicy p(Config());
  Time now{};
  int n = Simulate(p, now, 6, 0, 8);
  EXPECT_EQ(n, 6);  // the window still remembers load, and the down delay is 10 s
  n = Simulate(p, now, 6, 0, 20);
  EXPECT_EQ(n, 1);
}

TEST(AutoscalingPolicyTest, ClampsToMax) {
  AutoscalingPolicy p(Config());
  Time now{};
  EXPECT_EQ(Simulate(p, now, 1, 1000, 10), 10);
}

TEST(AutoscalingPolicyTest, BriefSpikesDoNotScale) {
  AutoscalingPolicy p(Config());
  Time now{};
  int n = 2;
  for (int i = 0; i < 30; ++i) n = Simulate(p, now, n, i % 3 == 0 ? 12 : 3, 1);
  EXPECT_LE(n, 4);
}

TEST(AutoscalingPolicyTest, SmoothingStillMovesWhenRoundingWouldNot) {
  config::AutoscalingConfig c = Config();
  c.downscaling_factor = 0.1;
  c.downscale_delay_s = 0;
  AutoscalingPolicy p(c);
  Time now{};
  // 4 replicas, load wants 2: 4 + 0.1 * (2 - 4) = 3.8 rounds back up to 4 in Ray Serve (#46148).
  now += 1s;
  p.MaybeRecord(now, 4);
  auto d = p.Decide(now, 4, 4, 0);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->to, 3);
}

TEST(AutoscalingPolicyTest, ScaleToZeroUsesItsOwnDelayAndColdStartsAtOnce) {
  config::AutoscalingConfig c = Config();
  c.min_replicas = 0;
  c.downscale_delay_s = 2;
  c.downscale_to_zero_delay_s = 6;
  AutoscalingPolicy p(c);
  Time now{};
  int n = Simulate(p, now, 3, 0, 4);
  EXPECT_EQ(n, 1);  // through one replica first, after downscale_delay_s
  n = Simulate(p, now, n, 0, 4);
  EXPECT_EQ(n, 1);  // the to-zero delay is longer
  n = Simulate(p, now, n, 0, 4);
  EXPECT_EQ(n, 0);
  // A request arrives with no replica: one starts now, whatever the delays.
  auto d = p.Decide(now, 0, 0, 1);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->to, 1);
  EXPECT_NE(d->reason.find("cold start"), std::string::npos);
  // Many waiting: as many as the target asks for.
  d = p.Decide(now, 0, 0, 9);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->to, 5);
}

TEST(AutoscalingPolicyTest, InitialReplicas) {
  config::AutoscalingConfig c = Config();
  EXPECT_EQ(AutoscalingPolicy(c).InitialReplicas(), 1);
  c.initial_replicas = 4;
  EXPECT_EQ(AutoscalingPolicy(c).InitialReplicas(), 4);
}

}  // namespace
}  // namespace ferry::controller
