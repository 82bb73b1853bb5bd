#include "controller/internal/health_checker.h"

#include "common/common.h"

namespace ferry::controller {

HealthChecker::HealthChecker(boost::asio::io_context& io, std::string replica_id, std::string socket_path,
                             std::chrono::milliseconds period, std::chrono::milliseconds timeout, Callback on_unhealthy)
    : io_(io),
      replica_id_(std::move(replica_id)),
      socket_path_(std::move(socket_path)),
      period_(period),
      timeout_(timeout),
      on_unhealthy_(std::move(on_unhealthy)),
      period_timer_(io),
      timeout_timer_(io) {}

void HealthChecker::Start() {
  connection_ = std::make_shared<transport::FrameConnection>(io_.get_executor(), socket_path_, this);
  transport::AppendHello(connection_->output(), 0, {transport::kProtocolVersion, "health"});
  connection_->Start();
  ScheduleNext();
}

void HealthChecker::Stop() {
  stopped_ = true;
  period_timer_.cancel();
  timeout_timer_.cancel();
  if (connection_) connection_->Detach();
}

void HealthChecker::ScheduleNext() {
  if (stopped_) return;
  period_timer_.expires_after(period_);
  period_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (!ec) self->Probe();
  });
}

void HealthChecker::Probe() {
  if (stopped_) return;
  if (!connection_ || connection_->closed()) {
    Failed("control connection to the replica is closed");
    return;
  }
  outstanding_ = next_id_++;
  transport::AppendEmpty(connection_->output(), transport::FrameKind::kHealth, outstanding_);
  connection_->Flush();
  timeout_timer_.expires_after(timeout_);
  timeout_timer_.async_wait([self = shared_from_this(), id = outstanding_](const boost::system::error_code& ec) {
    if (ec || self->outstanding_ != id) return;
    self->outstanding_ = 0;
    self->Failed(
        StrCat("check_health did not answer within health_check_timeout_s (", self->timeout_.count() / 1000.0, " s)"));
  });
}

void HealthChecker::OnFrame(const transport::FrameHeader& header, std::string_view payload) {
  if (header.kind == transport::FrameKind::kHelloAck) return;
  if (header.kind != transport::FrameKind::kHealthReply || header.stream_id != outstanding_) return;
  transport::StatusReply reply;
  absl::Status s = transport::DecodeStatusReply(payload, &reply);
  outstanding_ = 0;
  timeout_timer_.cancel();
  if (!s.ok()) {
    Failed(std::string(Message(s)));
  } else if (!reply.ok) {
    Failed(std::string(reply.message));
  } else {
    failures_ = 0;
    ScheduleNext();
  }
}

void HealthChecker::OnClosed(const absl::Status& why) {
  // A replica that died is reported by the node agent; nothing to add here.
}

void HealthChecker::Failed(const std::string& message) {
  if (stopped_) return;
  ++failures_;
  ++total_failures_;
  FERRY_LOG(kWarning, "controller", "replica ", replica_id_, " failed a health check (", failures_, "/",
            kFailuresToReplace, "): ", message);
  if (failures_ >= kFailuresToReplace && !reported_) {
    reported_ = true;
    on_unhealthy_(replica_id_, message);
    return;
  }
  ScheduleNext();
}

}  // namespace ferry::controller
