// Runs a replica's check_health every health_check_period_s over a control connection to its socket,
// with health_check_timeout_s for each answer. After kFailuresToReplace consecutive failures (an error,
// no answer in time, or a lost connection) it reports the replica unhealthy, once.
// Not thread-safe: every call and callback on the controller's io_context.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "transport/connection.h"

namespace ferry::controller {

class HealthChecker : public transport::FrameConnection::Handler, public std::enable_shared_from_this<HealthChecker> {
 public:
  static constexpr int kFailuresToReplace = 3;  // Ray Serve's
  using Callback = std::function<void(const std::string& replica_id, const std::string& message)>;

  HealthChecker(boost::asio::io_context& io, std::string replica_id, std::string socket_path,
                std::chrono::milliseconds period, std::chrono::milliseconds timeout, Callback on_unhealthy);
  void Start();
  void Stop();
  int consecutive_failures() const { return failures_; }
  int total_failures() const { return total_failures_; }

  void OnFrame(const transport::FrameHeader& header, std::string_view payload) override;
  void OnClosed(const absl::Status& why) override;

 private:
  void ScheduleNext();
  void Probe();
  void Failed(const std::string& message);

  boost::asio::io_context& io_;
  std::string replica_id_;
  std::string socket_path_;
  std::chrono::milliseconds period_;
  std::chrono::milliseconds timeout_;
  Callback on_unhealthy_;
  std::shared_ptr<transport::FrameConnection> connection_;
  boost::asio::steady_timer period_timer_;
  boost::asio::steady_timer timeout_timer_;
  uint64_t outstanding_ = 0;  // stream id of the probe awaiting an answer, 0 when none
  uint64_t next_id_ = 1;
  int failures_ = 0;
  int total_failures_ = 0;
  bool stopped_ = false;
  bool reported_ = false;
};

}  // namespace ferry::controller
