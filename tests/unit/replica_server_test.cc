// The replica's frame server, driven over its real Unix socket with the frame codec, as the proxy and the
// node agent drive it: handshake, requests (pipelined, answered by stream id), cancel, health, stats,
// reconfigure, a malformed frame, and a stop that drains. Every wait is bounded (a receive timeout).
#include "replica/internal/replica_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/served_replica.h"
#include "common/unique_fd.h"
#include "transport/address.h"
#include "transport/frame.h"

namespace ferry::replica {
namespace {

using ::testing::HasSubstr;
using transport::FrameHeader;
using transport::FrameKind;

using Served = ::ferry::testing::ServedReplica;

// A client connection speaking frames, with every read bounded by 30 s.
class Client {
 public:
  explicit Client(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    EXPECT_EQ(::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
    timeval tv{30, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  void Send(const std::string& bytes) {
    ASSERT_EQ(::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // The next frame; false when the connection closed (or the read timed out).
  bool Next(FrameHeader* header, std::string* payload) {
    for (;;) {
      std::string_view view;
      absl::StatusOr<bool> got = reader_.Next(header, &view);
      if (!got.ok()) return false;
      if (*got) {
        payload->assign(view);
        return true;
      }
      char* at = reader_.Prepare(65536);
      ssize_t n = ::recv(fd_.get(), at, 65536, 0);
      if (n <= 0) return false;
      reader_.Commit(static_cast<size_t>(n));
    }
  }
  // True when nothing more arrives within `ms` (a check that can only pass wrongly, never fail wrongly).
  bool QuietFor(int ms) {
    if (reader_.buffered() > 0 || !early_.empty()) return false;
    pollfd p{fd_.get(), POLLIN, 0};
    return ::poll(&p, 1, ms) == 0;
  }
  // Waits for the frame of `kind` with `stream`; frames for other streams are kept for later.
  std::string Await(FrameKind kind, uint64_t stream) {
    for (auto it = early_.begin(); it != early_.end(); ++it) {
      if (it->first.kind == kind && it->first.stream_id == stream) {
        std::string p = it->second;
        early_.erase(it);
        return p;
      }
    }
    FrameHeader h;
    std::string p;
    while (Next(&h, &p)) {
      if (h.kind == kind && h.stream_id == stream) return p;
      early_.emplace_back(h, p);
    }
    ADD_FAILURE() << "no " << transport::FrameKindName(kind) << " frame for stream " << stream;
    return "";
  }

 private:
  UniqueFd fd_;
  transport::FrameReader reader_;
  std::vector<std::pair<FrameHeader, std::string>> early_;
};

std::string RequestFrame(uint64_t stream, std::string_view query = "", std::string_view body = "hi",
                         transport::BodyMode mode = transport::BodyMode::kWhole) {
  transport::RequestMessage m;
  m.body_mode = mode;
  m.request_id = "rid";
  m.method = "POST";
  m.path = "/app";
  m.query = query;
  m.route_prefix = "/app";
  m.body = body;
  std::string out;
  transport::AppendRequest(out, stream, m);
  return out;
}

TEST(ReplicaServerTest, HandshakeThenPipelinedRequestsAnsweredByStream) {
  Served replica("echo");
  Client c(replica.path());
  std::string out;
  transport::AppendHello(out, 0, {transport::kProtocolVersion, "test", ""});
  for (uint64_t s = 1; s <= 10; ++s) out += RequestFrame(s, "", "body-" + std::to_string(s));
  c.Send(out);  // in one write: the server reads them together and answers each
  transport::HelloAck ack;
  std::string payload = c.Await(FrameKind::kHelloAck, 0);
  ASSERT_TRUE(transport::DecodeHelloAck(payload, &ack).ok());
  EXPECT_EQ(ack.replica_id, "app#D#7");
  EXPECT_EQ(ack.deployment, "D");
  for (uint64_t s = 1; s <= 10; ++s) {
    payload = c.Await(FrameKind::kResponse, s);
    transport::ResponseMessage r;
    ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(nlohmann::json::parse(r.body)["body"], "body-" + std::to_string(s));
  }
}

TEST(ReplicaServerTest, HealthStatsAndReconfigureInPlace) {
  Served replica("echo");
  Client c(replica.path());
  std::string out;
  transport::AppendEmpty(out, FrameKind::kHealth, 1);
  out += RequestFrame(2);
  c.Send(out);
  transport::StatusReply health;
  std::string payload = c.Await(FrameKind::kHealthReply, 1);
  ASSERT_TRUE(transport::DecodeStatusReply(payload, &health).ok());
  EXPECT_TRUE(health.ok);
  c.Await(FrameKind::kResponse, 2);
  // The worker counts the request as done just after it sent the answer: ask until the count shows it
  // (a bounded number of round trips).
  transport::StatsReply stats;
  for (uint64_t ask = 0; ask < 1000; ++ask) {
    out.clear();
    transport::AppendEmpty(out, FrameKind::kStats, 1000 + ask);
    c.Send(out);
    payload = c.Await(FrameKind::kStatsReply, 1000 + ask);
    ASSERT_TRUE(transport::DecodeStatsReply(payload, &stats).ok());
    if (stats.total == 1 && stats.ongoing == 0) break;
  }
  EXPECT_EQ(stats.total, 1u);
  EXPECT_EQ(stats.ongoing, 0u);
  // echo's user_config {healthy: false} makes its check fail: applied in place, no new process.
  out.clear();
  transport::AppendReconfigure(out, 4, R"({"user_config": {"healthy": false}, "max_ongoing_requests": 8})");
  transport::AppendEmpty(out, FrameKind::kHealth, 5);
  c.Send(out);
  transport::StatusReply reconfigured, sick;
  payload = c.Await(FrameKind::kReconfigureReply, 4);
  ASSERT_TRUE(transport::DecodeStatusReply(payload, &reconfigured).ok());
  EXPECT_TRUE(reconfigured.ok) << reconfigured.message;
  payload = c.Await(FrameKind::kHealthReply, 5);
  ASSERT_TRUE(transport::DecodeStatusReply(payload, &sick).ok());
  EXPECT_FALSE(sick.ok);
  // A bad update is refused with a message, and changes nothing.
  out.clear();
  transport::AppendReconfigure(out, 6, R"({"max_ongoing_requests": 0})");
  c.Send(out);
  transport::StatusReply refused;
  payload = c.Await(FrameKind::kReconfigureReply, 6);
  ASSERT_TRUE(transport::DecodeStatusReply(payload, &refused).ok());
  EXPECT_FALSE(refused.ok);
  EXPECT_THAT(std::string(refused.message), HasSubstr("max_ongoing_requests"));
}

TEST(ReplicaServerTest, ACancelStopsTheRequestItNames) {
  Served replica("busy");
  Client c(replica.path());
  // Cancelled in the same read as the request: answered without running it.
  std::string out = RequestFrame(1, "work_us=60000000");  // a minute of work
  transport::AppendEmpty(out, FrameKind::kCancel, 1);
  c.Send(out);
  transport::ResponseMessage r;
  std::string payload = c.Await(FrameKind::kResponse, 1);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  EXPECT_THAT(std::string(r.body), HasSubstr("cancelled before it started"));
  // Cancelled later: busy, if it started, sees it and stops early; if the cancel won the race to the
  // start, the request never runs. Either way the minute of work is not done (the answer comes within the
  // client's 30 s read timeout).
  c.Send(RequestFrame(2, "work_us=60000000"));
  for (;;) {  // wait until it runs: ongoing 1 in the replica's stats (bounded by the client's read timeout)
    std::string stats_frame;
    transport::AppendEmpty(stats_frame, FrameKind::kStats, 100);
    c.Send(stats_frame);
    transport::StatsReply stats;
    ASSERT_TRUE(transport::DecodeStatsReply(c.Await(FrameKind::kStatsReply, 100), &stats).ok());
    if (stats.ongoing == 1) break;
  }
  std::string cancel;
  transport::AppendEmpty(cancel, FrameKind::kCancel, 2);
  c.Send(cancel);
  payload = c.Await(FrameKind::kResponse, 2);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  if (r.status == 499) {
    EXPECT_THAT(std::string(r.body), HasSubstr("cancelled before it started"));
  } else {
    nlohmann::json body = nlohmann::json::parse(r.body);
    EXPECT_EQ(body["cancelled"], true) << r.body;
    EXPECT_LT(body["spent_us"].get<int64_t>(), 60000000);
  }
}

TEST(ReplicaServerTest, AStreamedAnswerIsHeadChunksAndEnd) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "stream=3"));
  transport::ResponseStart start;
  ASSERT_TRUE(transport::DecodeResponseStart(c.Await(FrameKind::kResponseStart, 1), &start).ok());
  EXPECT_EQ(start.status, 200);
  for (int i = 0; i < 3; ++i) {
    std::string_view data;
    std::string payload = c.Await(FrameKind::kChunk, 1);
    ASSERT_TRUE(transport::DecodeChunk(payload, &data).ok());
    EXPECT_EQ(data, "chunk " + std::to_string(i) + "\n");
  }
  transport::StreamEnd end;
  std::string payload = c.Await(FrameKind::kEnd, 1);
  ASSERT_TRUE(transport::DecodeEnd(payload, &end).ok());
  EXPECT_TRUE(end.ok) << end.message;
}

// The producer runs at most one window ahead of the client's credit; credit lets it go on; a cancel ends
// the stream, broken.
TEST(ReplicaServerTest, AStreamWaitsForCreditAndACancelEndsIt) {
  Served replica("echo");
  Client c(replica.path());
  constexpr uint32_t kChunk = 65536;
  c.Send(RequestFrame(1, "stream=100000&chunk_bytes=65536"));
  c.Await(FrameKind::kResponseStart, 1);
  const uint32_t window_chunks = transport::kStreamWindow / kChunk;
  for (uint32_t i = 0; i < window_chunks; ++i) {
    std::string_view data;
    std::string payload = c.Await(FrameKind::kChunk, 1);
    ASSERT_TRUE(transport::DecodeChunk(payload, &data).ok());
    ASSERT_EQ(data.size(), kChunk);
  }
  EXPECT_TRUE(c.QuietFor(300)) << "the replica sent more than its window without credit";
  std::string credit;
  transport::AppendCredit(credit, 1, kChunk);
  c.Send(credit);
  c.Await(FrameKind::kChunk, 1);
  EXPECT_TRUE(c.QuietFor(300)) << "one chunk of credit let more than one chunk through";
  std::string cancel;
  transport::AppendEmpty(cancel, FrameKind::kCancel, 1);
  c.Send(cancel);
  transport::StreamEnd end;
  std::string payload = c.Await(FrameKind::kEnd, 1);
  ASSERT_TRUE(transport::DecodeEnd(payload, &end).ok());
  EXPECT_FALSE(end.ok);
  EXPECT_EQ(end.message, "cancelled");
}

std::string Frame(void (*append)(std::string&, uint64_t, std::string_view), uint64_t stream, std::string_view data) {
  std::string out;
  append(out, stream, data);
  return out;
}

uint32_t CreditOf(const std::string& payload) {
  uint32_t bytes = 0;
  EXPECT_TRUE(transport::DecodeCredit(payload, &bytes).ok());
  return bytes;
}

// A streamed body reaches handle() piece by piece, each credited back as it is read; the end completes it.
TEST(ReplicaServerTest, AStreamedBodyIsReadAsItArrivesAndCredited) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "count_body=1", "ab", transport::BodyMode::kStreamed));
  c.Send(Frame(&transport::AppendChunk, 1, "cde"));
  EXPECT_EQ(CreditOf(c.Await(FrameKind::kCredit, 1)), 3u);
  c.Send(Frame(&transport::AppendChunk, 1, "fg"));
  EXPECT_EQ(CreditOf(c.Await(FrameKind::kCredit, 1)), 2u);
  std::string end;
  transport::AppendEnd(end, 1, {true, ""});
  c.Send(end);
  transport::ResponseMessage r;
  std::string payload = c.Await(FrameKind::kResponse, 1);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  EXPECT_EQ(r.status, 200);
  auto json = nlohmann::json::parse(r.body);
  EXPECT_EQ(json["body_bytes"], 7);
  EXPECT_EQ(json["body_pieces"], 3);  // the bytes that came with the request, then each chunk
  EXPECT_EQ(json["body_streamed"], true);
}

TEST(ReplicaServerTest, ABrokenStreamedBodyFailsItsReads) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "count_body=1", "", transport::BodyMode::kStreamed));
  c.Send(Frame(&transport::AppendChunk, 1, "abc"));
  std::string end;
  transport::AppendEnd(end, 1, {false, "the client's body broke"});
  c.Send(end);
  transport::ResponseMessage r;
  std::string payload = c.Await(FrameKind::kResponse, 1);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(std::string(r.body), HasSubstr("broke"));
}

// A deployment that takes whole bodies (batched) gets a streamed one once it has all come; its pieces are
// credited as they arrive.
TEST(ReplicaServerTest, ABatchedDeploymentGetsAStreamedBodyWhole) {
  auto spec = ::ferry::testing::BuiltinSpec("busy");
  spec.batching = spec::BatchingConfig{};
  auto host = DeploymentHost::Create(spec);
  ASSERT_TRUE(host.ok()) << host.status();
  const std::string path =
      (std::filesystem::path(::testing::TempDir()) / ("batched-" + std::to_string(getpid()))).string();
  ReplicaServer server(spec, **host);
  ASSERT_TRUE(server.Listen(path).ok());
  std::thread run([&] { server.Run(); });
  {
    Client c(path);
    c.Send(RequestFrame(1, "", "12345", transport::BodyMode::kStreamed));
    c.Send(Frame(&transport::AppendChunk, 1, std::string(1000, 'x')));
    EXPECT_EQ(CreditOf(c.Await(FrameKind::kCredit, 1)), 1000u);
    std::string end;
    transport::AppendEnd(end, 1, {true, ""});
    c.Send(end);
    transport::ResponseMessage r;
    std::string payload = c.Await(FrameKind::kResponse, 1);
    ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(nlohmann::json::parse(r.body)["body_bytes"], 1005);
  }
  server.RequestStop();
  run.join();
}

transport::WsMessage MessageOf(const std::string& payload) {
  transport::WsMessage m;
  EXPECT_TRUE(transport::DecodeMessage(payload, &m).ok());
  return m;
}

std::string MessageFrame(uint64_t stream, std::string_view data, bool binary = false) {
  std::string out;
  transport::AppendMessage(out, stream, {binary, data});
  return out;
}

// A WebSocket session: accepted (101), messages both ways with credit, the client's close reaches the
// deployment and the session ends.
TEST(ReplicaServerTest, AWebSocketSessionEchoesAndEndsOnTheClientsClose) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "", "", transport::BodyMode::kWebSocket));
  transport::ResponseStart start;
  ASSERT_TRUE(transport::DecodeResponseStart(c.Await(FrameKind::kResponseStart, 1), &start).ok());
  EXPECT_EQ(start.status, 101);
  c.Send(MessageFrame(1, "hello"));
  std::string payload = c.Await(FrameKind::kMessage, 1);  // the message's views point into it
  transport::WsMessage m = MessageOf(payload);
  EXPECT_EQ(m.data, "hello");
  EXPECT_FALSE(m.binary);
  EXPECT_EQ(CreditOf(c.Await(FrameKind::kCredit, 1)), 5u);
  c.Send(MessageFrame(1, std::string_view("\0\1", 2), true));
  payload = c.Await(FrameKind::kMessage, 1);
  m = MessageOf(payload);
  EXPECT_TRUE(m.binary);
  EXPECT_EQ(m.data, std::string_view("\0\1", 2));
  std::string close;
  transport::AppendClose(close, 1, {1000, "bye"});
  c.Send(close);
  transport::StreamEnd end;
  payload = c.Await(FrameKind::kEnd, 1);
  ASSERT_TRUE(transport::DecodeEnd(payload, &end).ok());
  EXPECT_TRUE(end.ok);
}

TEST(ReplicaServerTest, TheDeploymentClosesASessionAndACancelEndsAnother) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "close_after=1", "", transport::BodyMode::kWebSocket));
  c.Send(RequestFrame(2, "", "", transport::BodyMode::kWebSocket));
  c.Await(FrameKind::kResponseStart, 1);
  c.Await(FrameKind::kResponseStart, 2);
  c.Send(MessageFrame(1, "only"));
  EXPECT_EQ(MessageOf(c.Await(FrameKind::kMessage, 1)).data, "only");
  transport::WsClose close;
  std::string payload = c.Await(FrameKind::kClose, 1);
  ASSERT_TRUE(transport::DecodeClose(payload, &close).ok());
  EXPECT_EQ(close.code, 1000);
  EXPECT_EQ(close.reason, "close_after reached");
  c.Await(FrameKind::kEnd, 1);
  std::string cancel;
  transport::AppendEmpty(cancel, FrameKind::kCancel, 2);
  c.Send(cancel);
  transport::StreamEnd end;
  payload = c.Await(FrameKind::kEnd, 2);
  ASSERT_TRUE(transport::DecodeEnd(payload, &end).ok());
  EXPECT_FALSE(end.ok);  // cancelled, not closed
}

TEST(ReplicaServerTest, ARefusedSessionIsAPlainResponse) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "refuse=451", "", transport::BodyMode::kWebSocket));
  transport::ResponseMessage r;
  std::string payload = c.Await(FrameKind::kResponse, 1);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  EXPECT_EQ(r.status, 451);
  EXPECT_THAT(std::string(r.body), HasSubstr("refused by echo"));
  Served busy("busy");
  Client b(busy.path());
  b.Send(RequestFrame(1, "", "", transport::BodyMode::kWebSocket));
  payload = b.Await(FrameKind::kResponse, 1);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  EXPECT_EQ(r.status, 403);
}

// Streams with an interval are detached: waiting for their next chunk holds no thread, so a replica with
// one thread keeps many open; a cancel ends each.
TEST(ReplicaServerTest, DetachedStreamsHoldNoThreadWhileTheyWait) {
  Served replica("echo", /*max_ongoing=*/1);
  Client c(replica.path());
  constexpr int kStreams = 8;
  for (int i = 1; i <= kStreams; ++i) c.Send(RequestFrame(i, "stream=2&interval_ms=600000"));
  for (int i = 1; i <= kStreams; ++i) {
    c.Await(FrameKind::kResponseStart, i);
    std::string_view data;
    std::string payload = c.Await(FrameKind::kChunk, i);
    ASSERT_TRUE(transport::DecodeChunk(payload, &data).ok());
    EXPECT_EQ(data, "chunk 0\n");
  }
  EXPECT_EQ(replica.server().ongoing(), static_cast<uint32_t>(kStreams));
  for (int i = 1; i <= kStreams; ++i) {
    std::string cancel;
    transport::AppendEmpty(cancel, FrameKind::kCancel, i);
    c.Send(cancel);
    transport::StreamEnd end;
    std::string payload = c.Await(FrameKind::kEnd, i);
    ASSERT_TRUE(transport::DecodeEnd(payload, &end).ok());
    EXPECT_FALSE(end.ok);
  }
  // And a short one runs to its end from the timer thread.
  c.Send(RequestFrame(100, "stream=3&interval_ms=1"));
  for (int i = 0; i < 3; ++i) c.Await(FrameKind::kChunk, 100);
  transport::StreamEnd end;
  std::string payload = c.Await(FrameKind::kEnd, 100);
  ASSERT_TRUE(transport::DecodeEnd(payload, &end).ok());
  EXPECT_TRUE(end.ok) << end.message;
}

TEST(ReplicaServerTest, AMalformedFrameClosesOnlyItsConnection) {
  Served replica("echo");
  Client bad(replica.path());
  bad.Send(std::string(16, 'x'));  // not a frame header
  FrameHeader h;
  std::string p;
  EXPECT_FALSE(bad.Next(&h, &p)) << "the connection stays open after garbage";
  Client good(replica.path());
  good.Send(RequestFrame(9));
  transport::ResponseMessage r;
  std::string payload = good.Await(FrameKind::kResponse, 9);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  EXPECT_EQ(r.status, 200);
}

// A cluster with a token: a connection is served only after a hello that carries it; anything else (no
// hello, a hello without the token or with another) closes that connection, and only that one.
TEST(ReplicaServerTest, WithAClusterTokenOnlyAHelloThatCarriesItIsServed) {
  transport::SetFrameToken("0123456789abcdef-cluster");  // set before any thread serves, as a node does
  {
    Served replica("echo");
    FrameHeader h;
    std::string p;
    Client early(replica.path());
    early.Send(RequestFrame(1));
    EXPECT_FALSE(early.Next(&h, &p)) << "a request before any hello was answered";
    for (std::string_view token : {std::string_view(), std::string_view("0123456789abcdef-clustex")}) {
      Client wrong(replica.path());
      std::string out;
      transport::AppendHello(out, 0, {transport::kProtocolVersion, "test", token});
      wrong.Send(out + RequestFrame(2));
      EXPECT_FALSE(wrong.Next(&h, &p)) << "served with the token \"" << token << "\"";
    }
    Client right(replica.path());
    std::string out;
    transport::AppendHello(out, 0, {transport::kProtocolVersion, "test", transport::FrameToken()});
    right.Send(out + RequestFrame(3));
    transport::ResponseMessage r;
    std::string payload = right.Await(FrameKind::kResponse, 3);
    ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
    EXPECT_EQ(r.status, 200);
  }  // the replica's threads are gone: the token may change
  transport::SetFrameToken("");
}

TEST(ReplicaServerTest, StopFinishesWhatIsInFlightAndStopsAccepting) {
  Served replica("echo");
  Client c(replica.path());
  c.Send(RequestFrame(1, "", "last"));
  transport::ResponseMessage r;
  std::string payload = c.Await(FrameKind::kResponse, 1);
  ASSERT_TRUE(transport::DecodeResponse(payload, &r).ok());
  replica.Stop();  // returns once drained
  EXPECT_FALSE(replica.socket_exists()) << "a stopped replica leaves its socket path for new clients";
}

}  // namespace
}  // namespace ferry::replica
