// The control connection from whoever manages a replica (its node's agent; in cluster mode also the
// leading controller, over TCP) to the replica: health checks, reconfigures and stats, each answered by
// its reply frame with the same stream id; and, for the replica's own node, its endpoint feed. Used by
// launchers (NodeAgent, cluster mode's ClusterLauncher); the controller speaks ReplicaLauncher.
// Not thread-safe: on the io_context it was made with.
#pragma once

#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/common.h"
#include "endpoints/endpoints.h"
#include "endpoints/wire.h"
#include "node/launcher.h"
#include "transport/address.h"
#include "transport/connection.h"

namespace ferry::node {

class ControlChannel;

// A replica that holds handles, as a consumer of endpoint snapshots: each snapshot goes to it as an
// `endpoints` frame; its report is the latest `load_reply` it sent (one is asked for at each collection,
// and the replica sends one after applying each snapshot). On the node's I/O thread.
class ReplicaFeed : public endpoints::Consumer {
 public:
  explicit ReplicaFeed(ControlChannel* channel) : channel_(channel) {}
  void OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) override;
  endpoints::ConsumerReport Report() const override;
  void SetReport(endpoints::ConsumerReport report, nlohmann::json calls) {
    report_ = std::move(report);
    calls_ = std::move(calls);
  }
  const nlohmann::json& calls() const { return calls_; }

 private:
  ControlChannel* channel_;
  endpoints::ConsumerReport report_;
  nlohmann::json calls_ = nlohmann::json::array();
};

// The agent's control connection to one ready replica: health checks and reconfigures, each answered by
// its reply frame with the same stream id; and, once the replica subscribes, its endpoint feed.
class ControlChannel : public transport::FrameConnection::Handler, public std::enable_shared_from_this<ControlChannel> {
 public:
  // `address`: the replica's frame address. `client` names this side in the hello: the replica takes the
  // "node-agent" connection as its node's (its endpoint feed, its wake-ups); a leader's is "controller".
  ControlChannel(boost::asio::io_context& io, const std::string& address, endpoints::Publisher* publisher,
                 std::string client = "node-agent")
      : connection_(std::make_shared<transport::FrameConnection>(io.get_executor(), address, this)),
        publisher_(publisher),
        client_(std::move(client)) {}
  ~ControlChannel() override { Close(); }

  void SendText(transport::FrameKind kind, std::string_view text) {
    if (connection_->closed()) return;
    transport::AppendText(connection_->output(), kind, 0, text);
    connection_->Flush();
  }
  void AskLoad() {
    if (connection_->closed()) return;
    transport::AppendEmpty(connection_->output(), transport::FrameKind::kLoad, 0);
    connection_->Flush();
  }
  const ReplicaFeed* feed() const { return feed_.get(); }

  void Start() {
    transport::AppendHello(connection_->output(), 0, {transport::kProtocolVersion, client_, transport::FrameToken()});
    connection_->Start();
  }
  void Close() {
    connection_->Detach();
    Unsubscribe();
    FailAll(absl::UnavailableError("control connection closed"));
  }
  // The reply's payload reaches `reply` (status and stats replies); errors reach it with an empty payload.
  using Reply = std::function<void(const absl::Status&, std::string_view payload)>;

  void Call(transport::FrameKind kind, std::string_view json, ReplicaLauncher::Done done) {
    CallForReply(kind, json, [done = std::move(done)](const absl::Status& s, std::string_view payload) {
      if (!s.ok()) return done(s);
      transport::StatusReply reply;
      absl::Status decoded = transport::DecodeStatusReply(payload, &reply);
      if (decoded.ok() && !reply.ok) decoded = absl::UnavailableError(std::string(reply.message));
      done(decoded);
    });
  }

  void CallForReply(transport::FrameKind kind, std::string_view json, Reply done) {
    if (connection_->closed()) {
      done(absl::UnavailableError("control connection to the replica is closed"), {});
      return;
    }
    uint64_t id = next_id_++;
    pending_[id] = std::move(done);
    if (kind == transport::FrameKind::kReconfigure) {
      transport::AppendReconfigure(connection_->output(), id, json);
    } else {
      transport::AppendEmpty(connection_->output(), kind, id);
    }
    connection_->Flush();
  }

  void OnFrame(const transport::FrameHeader& header, std::string_view payload) override {
    if (header.kind == transport::FrameKind::kSubscribe) {
      if (publisher_ && !feed_) {
        feed_ = std::make_unique<ReplicaFeed>(this);
        publisher_->Subscribe(feed_.get());
      }
      return;
    }
    if (header.kind == transport::FrameKind::kWake) {
      // A handle call waits for a deployment scaled to zero: the replica's fresh load report came just
      // before this, so the controller sees the queued call now, not at its next tick.
      if (publisher_) publisher_->Wake();
      return;
    }
    if (header.kind == transport::FrameKind::kLoadReply) {
      std::string_view text;
      if (!feed_ || !transport::DecodeText(payload, &text).ok()) return;
      nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
      absl::StatusOr<endpoints::ConsumerReport> report = endpoints::ReportFromJson(json);
      if (!report.ok()) {
        FERRY_LOG(kWarning, "node", "a replica's load report is malformed: ", report.status().message());
        return;
      }
      feed_->SetReport(std::move(*report),
                       json.is_object() && json.contains("calls") ? json["calls"] : nlohmann::json::array());
      return;
    }
    if (header.kind != transport::FrameKind::kHealthReply && header.kind != transport::FrameKind::kReconfigureReply &&
        header.kind != transport::FrameKind::kStatsReply)
      return;
    auto it = pending_.find(header.stream_id);
    if (it == pending_.end()) return;
    Reply done = std::move(it->second);
    pending_.erase(it);
    done(absl::OkStatus(), payload);
  }
  void OnClosed(const absl::Status& why) override {
    Unsubscribe();
    FailAll(absl::UnavailableError(StrCat("control connection lost: ", Message(why))));
  }

 private:
  void Unsubscribe() {
    if (feed_ && publisher_) publisher_->Unsubscribe(feed_.get());
    feed_.reset();
  }
  void FailAll(const absl::Status& why) {
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [id, done] : pending) done(why, {});
  }
  std::shared_ptr<transport::FrameConnection> connection_;
  std::map<uint64_t, Reply> pending_;
  uint64_t next_id_ = 1;
  endpoints::Publisher* publisher_;  // null: no feeds (a node without handles' consumers)
  std::unique_ptr<ReplicaFeed> feed_;
  std::string client_;
};

// The `calls` of a load_reply (see handle::LoadReplyJson); entries of another shape are left out.
inline std::vector<CallStats> CallStatsFrom(const nlohmann::json& calls) {
  std::vector<CallStats> out;
  if (!calls.is_array()) return out;
  for (const nlohmann::json& c : calls) {
    try {
      CallStats s;
      s.callee = c.at("callee").get<std::string>();
      s.ok = c.at("ok").get<uint64_t>();
      s.errors = c.at("errors").get<uint64_t>();
      s.latency_seconds.counts = c.at("latency_counts").get<std::vector<uint64_t>>();
      s.latency_seconds.sum = c.at("latency_sum").get<double>();
      out.push_back(std::move(s));
    } catch (const std::exception&) {
    }
  }
  return out;
}

inline void ReplicaFeed::OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) {
  channel_->SendText(transport::FrameKind::kEndpoints, endpoints::SnapshotToJson(*snapshot).dump());
}

inline endpoints::ConsumerReport ReplicaFeed::Report() const {
  channel_->AskLoad();  // for the next collection: this one reads the latest the replica sent
  return report_;
}

// Asks `channel` for the replica's stats; `done` gets them, with the handle calls its feed reported.
inline void GetStatsOver(const std::shared_ptr<ControlChannel>& channel, ReplicaLauncher::StatsDone done) {
  std::weak_ptr<ControlChannel> weak = channel;
  channel->CallForReply(
      transport::FrameKind::kStats, {},
      [done = std::move(done), weak](const absl::Status& s, std::string_view payload) {
        if (!s.ok()) return done(s);
        transport::StatsReply reply;
        absl::Status decoded = transport::DecodeStatsReply(payload, &reply);
        if (!decoded.ok()) return done(decoded);
        ReplicaStats stats;
        stats.requests_total = reply.total;
        stats.processing_seconds = {std::move(reply.processing_seconds.counts), reply.processing_seconds.sum};
        stats.batch_size = {std::move(reply.batch_size.counts), reply.batch_size.sum};
        stats.spans_exported = reply.spans_exported;
        stats.spans_dropped = reply.spans_dropped;
        stats.user_metrics = std::move(reply.user_metrics);
        stats.model_ids = std::move(reply.model_ids);
        if (auto channel = weak.lock(); channel && channel->feed())
          stats.calls = CallStatsFrom(channel->feed()->calls());
        done(std::move(stats));
      });
}

}  // namespace ferry::node
