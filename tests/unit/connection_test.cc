// FrameConnection over a real socket pair on one io_context.
#include "transport/connection.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>

namespace ferry::transport {
namespace {

namespace asio = boost::asio;

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
  asio::local::connect_pair(a, b);
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
  asio::local::connect_pair(a, b);
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

}  // namespace
}  // namespace ferry::transport
