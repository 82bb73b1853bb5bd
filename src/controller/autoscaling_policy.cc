#include "controller/autoscaling_policy.h"

#include <algorithm>
#include <cmath>

#include "common/common.h"

namespace ferry::controller {
namespace {

std::chrono::nanoseconds Seconds(double s) { return std::chrono::nanoseconds(static_cast<int64_t>(s * 1e9)); }

}  // namespace

int AutoscalingPolicy::InitialReplicas() const { return config_.initial_replicas.value_or(config_.min_replicas); }

bool AutoscalingPolicy::MaybeRecord(Time now, double load) {
  if (last_sample_ && now - *last_sample_ < Seconds(config_.metrics_interval_s)) return false;
  last_sample_ = now;
  samples_.emplace_back(now, load);
  while (!samples_.empty() && now - samples_.front().first > Seconds(config_.look_back_period_s)) samples_.pop_front();
  return true;
}

double AutoscalingPolicy::AverageLoad(Time now) const {
  double sum = 0;
  int n = 0;
  for (const auto& [t, load] : samples_) {
    if (now - t > Seconds(config_.look_back_period_s)) continue;
    sum += load;
    ++n;
  }
  return n ? sum / n : 0;
}

std::optional<AutoscalingDecision> AutoscalingPolicy::Decide(Time now, int current, int running, int waiting) {
  AutoscalingDecision d;
  d.from = current;
  d.average_load = AverageLoad(now);
  d.desired = d.average_load / config_.target_ongoing_requests;
  if (current == 0 && running == 0 && waiting > 0) {
    // Cold start: requests are waiting for a replica that does not exist. No delay.
    up_since_.reset();
    down_since_.reset();
    d.to = std::clamp(std::max(1, static_cast<int>(std::ceil(waiting / config_.target_ongoing_requests))),
                      std::max(1, config_.min_replicas), std::max(1, config_.max_replicas));
    d.reason = StrCat(waiting, " requests waiting with no replica (cold start)");
    return d;
  }
  double factor = d.desired > current ? config_.upscaling_factor.value_or(1) : config_.downscaling_factor.value_or(1);
  int proposal = static_cast<int>(std::ceil(current + factor * (d.desired - current) - 1e-9));
  int wanted = static_cast<int>(std::ceil(d.desired - 1e-9));
  if (proposal == current && wanted != current) proposal += wanted > current ? 1 : -1;  // Ray Serve #46148
  proposal = std::clamp(proposal, config_.min_replicas, config_.max_replicas);
  if (proposal == 0 && current > 1) proposal = 1;  // the last step to zero has its own delay
  if (proposal > current) {
    down_since_.reset();
    if (!up_since_) up_since_ = now;
    if (now - *up_since_ < Seconds(config_.upscale_delay_s)) return std::nullopt;
    up_since_.reset();
    d.to = proposal;
    d.reason = StrCat("load ", d.average_load, " over ", config_.look_back_period_s, " s wants ", d.desired,
                      " replicas at target_ongoing_requests ", config_.target_ongoing_requests,
                      ", held for upscale_delay_s ", config_.upscale_delay_s, " s");
    return d;
  }
  if (proposal < current) {
    up_since_.reset();
    if (!down_since_) down_since_ = now;
    double delay = proposal == 0 ? config_.downscale_to_zero_delay_s.value_or(config_.downscale_delay_s)
                                 : config_.downscale_delay_s;
    if (now - *down_since_ < Seconds(delay)) return std::nullopt;
    down_since_.reset();
    d.to = proposal;
    d.reason = StrCat("load ", d.average_load, " over ", config_.look_back_period_s, " s wants ", d.desired,
                      " replicas at target_ongoing_requests ", config_.target_ongoing_requests, ", held for ",
                      proposal == 0 ? "downscale_to_zero_delay_s " : "downscale_delay_s ", delay, " s");
    return d;
  }
  up_since_.reset();
  down_since_.reset();
  return std::nullopt;
}

}  // namespace ferry::controller
