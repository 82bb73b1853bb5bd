// Ray Serve's autoscaling decision rule, one deployment's worth. Every metrics_interval_s the controller
// records the deployment's total load (requests running on replicas plus requests waiting in its router);
// the policy averages it over look_back_period_s and proposes
//   desired = total / target_ongoing_requests,
//   smoothed = current + factor * (desired - current)   (upscaling_factor or downscaling_factor, default 1),
//   proposal = ceil(smoothed), clamped to [min_replicas, max_replicas],
// and applies a proposal only once it has held for upscale_delay_s (up) or downscale_delay_s (down;
// downscale_to_zero_delay_s for the last step from 1 to 0). With no replica running and requests waiting,
// it scales to one at once (cold start). Where ferry differs from Ray Serve:
//   - when smoothing rounds a wanted change away (Ray Serve issue #46148), it still moves one step;
//   - it goes from several replicas to zero through one, so the to-zero delay always applies.
// Thread-compatible: the controller's thread.
#pragma once

#include <chrono>
#include <deque>
#include <optional>
#include <string>

#include "config/config.h"

namespace ferry::controller {

struct AutoscalingDecision {
  int from = 0;
  int to = 0;
  double average_load = 0;  // ongoing + queued, averaged over the look-back window
  double desired = 0;       // average_load / target_ongoing_requests
  std::string reason;
};

class AutoscalingPolicy {
 public:
  using Time = std::chrono::steady_clock::time_point;
  explicit AutoscalingPolicy(const config::AutoscalingConfig& config) : config_(config) {}
  void set_config(const config::AutoscalingConfig& config) { config_ = config; }
  const config::AutoscalingConfig& config() const { return config_; }

  int InitialReplicas() const;
  // Records the load when metrics_interval_s has passed since the last sample; returns whether it did.
  bool MaybeRecord(Time now, double load);
  double AverageLoad(Time now) const;
  // A decision to move from `current` replicas, or nullopt to stay. `waiting` is the requests queued right
  // now and `running` the replicas serving, for the cold start.
  std::optional<AutoscalingDecision> Decide(Time now, int current, int running, int waiting);

 private:
  config::AutoscalingConfig config_;
  std::deque<std::pair<Time, double>> samples_;
  std::optional<Time> last_sample_;
  std::optional<Time> up_since_;
  std::optional<Time> down_since_;
};

}  // namespace ferry::controller
