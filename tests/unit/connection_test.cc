// FrameConnection over a real socket pair on one io_context.
#include "transport/connection.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>

#include "transport/address.h"

namespace ferry::transport {
namespace {

namespace asio = boost::asio;

// A connected pair of frame sockets (Unix).
void SocketPair(asio::io_context& io, FrameConnection::Socket& a, FrameConnection::Socket& b) {
  asio::local::stream_protocol::socket la(io), lb(io);
  asio::local::connect_pair(la, lb);
  a.assign(asio::generic::stream_protocol(AF_UNIX, 0), la.release());
  b.assign(asio::generic::stream_protocol(AF_UNIX, 0), lb.release());
}

class Recorder : public FrameConnection::Handler {
 public:
  void OnFrame(const FrameHeader& header, std::string_view payload) override {
    frames.emplace_back(header, std::string(payload));
  }
  void OnClosed(const absl::Status& why) override {
    closed = true;
    reason = std::string(why.message());
  }
  std::vector<std::pair<FrameHeader, std::string>> frames;
  bool closed = false;
  std::string reason;
};

TEST(ConnectionTest, FramesCrossInBothDirections) {
  asio::io_context io;
  FrameConnection::Socket a(io), b(io);
  SocketPair(io, a, b);
  Recorder ra, rb;
  auto ca = std::make_shared<FrameConnection>(std::move(a), &ra);
  auto cb = std::make_shared<FrameConnection>(std::move(b), &rb);
  ca->Start();
  cb->Start();
  std::string big(3 << 20, 'z');  // larger than one read
  for (uint64_t i = 0; i < 100; ++i) AppendResponse(ca->output(), i, {200, {}, i == 50 ? std::string_view(big) : "x"});
  ca->Flush();
  AppendEmpty(cb->output(), FrameKind::kCancel, 77);
  cb->Flush();
  for (int i = 0; i < 10000 && (rb.frames.size() < 100 || ra.frames.empty()); ++i) io.run_one();
  ASSERT_EQ(rb.frames.size(), 100u);
  ASSERT_EQ(ra.frames.size(), 1u);
  EXPECT_EQ(ra.frames[0].first.stream_id, 77u);
  ResponseMessage m;
  ASSERT_TRUE(DecodeResponse(rb.frames[50].second, &m).ok());
  EXPECT_EQ(m.body.size(), big.size());
  EXPECT_EQ(rb.frames[99].first.stream_id, 99u);
  ca->Close(absl::CancelledError("test done"));
  for (int i = 0; i < 100 && !rb.closed; ++i) io.run_one();
  EXPECT_TRUE(rb.closed);
  EXPECT_TRUE(ra.closed);
}

TEST(ConnectionTest, GarbageClosesTheConnectionWithAReason) {
  asio::io_context io;
  FrameConnection::Socket a(io), b(io);
  SocketPair(io, a, b);
  Recorder rb;
  auto cb = std::make_shared<FrameConnection>(std::move(b), &rb);
  cb->Start();
  std::string garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  asio::write(a, asio::buffer(garbage));
  for (int i = 0; i < 100 && !rb.closed; ++i) io.run_one();
  EXPECT_TRUE(rb.closed);
  EXPECT_NE(rb.reason.find("bad magic"), std::string::npos) << rb.reason;
  EXPECT_TRUE(rb.frames.empty());
}

TEST(ConnectionTest, ConnectFailureIsReported) {
  asio::io_context io;
  Recorder r;
  auto c = std::make_shared<FrameConnection>(io.get_executor(), "/nonexistent/ferry.sock", &r);
  AppendEmpty(c->output(), FrameKind::kHealth, 1);
  c->Start();
  for (int i = 0; i < 100 && !r.closed; ++i) io.run_one();
  EXPECT_TRUE(r.closed);
  EXPECT_NE(r.reason.find("connect"), std::string::npos);
}

TEST(ConnectionTest, FramesCrossOverTcpToo) {
  // The connecting side dials tcp://127.0.0.1:PORT; the accepting side is a plain TCP acceptor.
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const uint16_t port = acceptor.local_endpoint().port();
  Recorder client_side, server_side;
  auto client =
      std::make_shared<FrameConnection>(io.get_executor(), "tcp://127.0.0.1:" + std::to_string(port), &client_side);
  AppendEmpty(client->output(), FrameKind::kHealth, 5);  // before it connects: it waits
  client->Start();
  std::shared_ptr<FrameConnection> server;
  acceptor.async_accept([&](const boost::system::error_code& ec, asio::ip::tcp::socket s) {
    ASSERT_FALSE(ec);
    FrameConnection::Socket generic(io);
    generic.assign(asio::generic::stream_protocol(AF_INET, IPPROTO_TCP), s.release());
    server = std::make_shared<FrameConnection>(std::move(generic), &server_side);
    server->Start();
  });
  for (int i = 0; i < 1000 && server_side.frames.empty(); ++i) io.run_one();
  ASSERT_EQ(server_side.frames.size(), 1u);
  EXPECT_EQ(server_side.frames[0].first.stream_id, 5u);
  AppendResponse(server->output(), 5, {200, {}, "over tcp"});
  server->Flush();
  for (int i = 0; i < 1000 && client_side.frames.empty(); ++i) io.run_one();
  ASSERT_EQ(client_side.frames.size(), 1u);
  ResponseMessage m;
  ASSERT_TRUE(DecodeResponse(client_side.frames[0].second, &m).ok());
  EXPECT_EQ(m.body, "over tcp");
  client->Close(absl::CancelledError("done"));
  server->Close(absl::CancelledError("done"));
}

TEST(ConnectionTest, TcpConnectFailuresAndBadAddressesAreReported) {
  asio::io_context io;
  asio::ip::tcp::acceptor closed(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const uint16_t port = closed.local_endpoint().port();
  closed.close();  // nobody listens there now
  Recorder refused, bad;
  auto a = std::make_shared<FrameConnection>(io.get_executor(), "tcp://127.0.0.1:" + std::to_string(port), &refused);
  auto b = std::make_shared<FrameConnection>(io.get_executor(), "tcp://not-an-ip:80", &bad);
  a->Start();
  b->Start();
  for (int i = 0; i < 100 && !(refused.closed && bad.closed); ++i) io.run_one();
  EXPECT_TRUE(refused.closed);
  EXPECT_NE(refused.reason.find("connect tcp://127.0.0.1"), std::string::npos) << refused.reason;
  EXPECT_TRUE(bad.closed);
  EXPECT_NE(bad.reason.find("connect tcp://not-an-ip:80"), std::string::npos) << bad.reason;
}

TEST(FrameAddressTest, ParsesUnixPathsAndTcpAddresses) {
  auto unix_path = ParseFrameAddress("/run/ferry/r-1.sock");
  ASSERT_TRUE(unix_path.ok());
  EXPECT_FALSE(unix_path->tcp);
  EXPECT_EQ(unix_path->path, "/run/ferry/r-1.sock");
  auto v4 = ParseFrameAddress("tcp://10.0.0.11:40123");
  ASSERT_TRUE(v4.ok());
  EXPECT_TRUE(v4->tcp);
  EXPECT_EQ(v4->host, "10.0.0.11");
  EXPECT_EQ(v4->port, 40123);
  auto v6 = ParseFrameAddress("tcp://[fd00::2]:9");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "fd00::2");
  EXPECT_EQ(TcpAddress("fd00::2", 9), "tcp://[fd00::2]:9");
  EXPECT_EQ(TcpAddress("10.0.0.1", 80), "tcp://10.0.0.1:80");
  for (const char* bad :
       {"", "tcp://", "tcp://1.2.3.4", "tcp://1.2.3.4:0", "tcp://1.2.3.4:70000", "tcp://[::1]9", "tcp://1.2.3.4:x"})
    EXPECT_FALSE(ParseFrameAddress(bad).ok()) << bad;
  EXPECT_FALSE(ConnectFrameSocket(*ParseFrameAddress("tcp://host.example:1")).ok());
}

}  // namespace
}  // namespace ferry::transport
