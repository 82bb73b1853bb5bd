// The shared blocking HTTP client (OTLP exports, the CLI's admin calls) against a loopback server that
// answers each connection with canned bytes.
#include "common/http_client.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/loopback_http.h"

namespace ferry {
namespace {

using ::testing::HasSubstr;

// Answers the i-th connection with answers[i] (after reading its request), then closes it unless
// `keep_open`: a client that needs the close to find the end of a framed answer would hang there.
class CannedServer {
 public:
  explicit CannedServer(std::vector<std::string> answers, bool keep_open = false)
      : answers_(std::move(answers)), keep_open_(keep_open), server_([this](int c, size_t i) { Serve(c, i); }) {}
  ~CannedServer() {
    server_.reset();  // joins the serving thread first
    for (int c : open_) ::close(c);
  }
  HttpEndpoint endpoint() const { return {"127.0.0.1", std::to_string(server_->port()), "/", nullptr}; }
  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  void Serve(int c, size_t i) {
    std::string in = testing::ReadHttpRequest(c);
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(in);
    }
    const std::string& answer = answers_[std::min(i, answers_.size() - 1)];
    ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
    if (keep_open_)
      open_.push_back(c);
    else
      ::close(c);
  }
  std::vector<std::string> answers_;
  bool keep_open_;
  std::mutex mu_;
  std::vector<std::string> requests_;
  std::vector<int> open_;                              // serving thread only, until it is joined
  std::optional<testing::LoopbackHttpServer> server_;  // last: its thread uses the members above
};

TEST(HttpClientTest, ParsesEndpoints) {
  auto e = ParseHttpEndpoint("http://collector:4318/v1/traces");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->host, "collector");
  EXPECT_EQ(e->port, "4318");
  EXPECT_EQ(e->path, "/v1/traces");
  e = ParseHttpEndpoint("http://[::1]:8265");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->path, "/");
  EXPECT_EQ(ParseHttpEndpoint("http://h")->port, "80");
  EXPECT_FALSE(ParseHttpEndpoint("127.0.0.1:8265").ok());
  e = ParseHttpEndpoint("127.0.0.1:8265", /*scheme_optional=*/true);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->port, "8265");
  EXPECT_THAT(ParseHttpEndpoint("https://h/").status().message(), HasSubstr("https is not supported"));
  EXPECT_FALSE(ParseHttpEndpoint("ftp://h:1", true).ok());
  EXPECT_THAT(ParseHttpEndpoint("http://h:99999/").status().message(), HasSubstr("bad port '99999'"));
  EXPECT_THAT(ParseHttpEndpoint("http://h:0/").status().message(), HasSubstr("bad port"));
  EXPECT_THAT(ParseHttpEndpoint("http://:80/").status().message(), HasSubstr("no host"));
  EXPECT_FALSE(ParseHttpEndpoint("http://[::1/").ok());
}

TEST(HttpClientTest, ReadsBodiesByLengthChunkedOrToTheClose) {
  CannedServer by_length({"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello"}, /*keep_open=*/true);
  HttpCall call;
  call.method = "PUT";
  call.path = "/api/x";
  call.body = "a: 1\n";
  call.content_type = "application/yaml";
  call.headers = {{"Authorization", "Bearer t"}};
  absl::StatusOr<HttpResponse> r = SendHttp(by_length.endpoint(), call);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, "hello");  // read by its length: the open connection is not waited on
  std::string request = by_length.requests().at(0);
  EXPECT_THAT(request, HasSubstr("PUT /api/x HTTP/1.1\r\n"));
  EXPECT_THAT(request, HasSubstr("Content-Type: application/yaml\r\nContent-Length: 5\r\n"));
  EXPECT_THAT(request, HasSubstr("Authorization: Bearer t\r\n"));
  EXPECT_THAT(request, HasSubstr("\r\n\r\na: 1\n"));

  CannedServer chunked(
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\n"},
      /*keep_open=*/true);
  r = SendHttp(chunked.endpoint(), {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "abc0123456789");
  // With a trailer, the connection kept open: done at the last chunk, not at the close or the timeout.
  CannedServer trailer({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Sum: 1\r\n\r\n"},
                       /*keep_open=*/true);
  HttpCall patient;
  patient.timeout = std::chrono::seconds(30);
  r = SendHttp(trailer.endpoint(), patient);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "hi");
  // Closed inside a chunk, or a chunk size that is not hex: errors that say so.
  CannedServer cut({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"});
  r = SendHttp(cut.endpoint(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("the answer was cut off"));
  CannedServer bad({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"});
  r = SendHttp(bad.endpoint(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("a malformed chunk"));

  CannedServer to_close({"HTTP/1.0 404 Not Found\r\n\r\n{\"error\": \"nope\"}"});
  r = SendHttp(to_close.endpoint(), {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, "{\"error\": \"nope\"}");
}

TEST(HttpClientTest, AStreamedBodyArrivesPieceByPieceUntilItEndsOrIsStopped) {
  // A chunked stream that ends: every piece, in order.
  CannedServer ended({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n"},
                     /*keep_open=*/true);
  std::string got;
  HttpCall call;
  call.on_body = [&](std::string_view piece) {
    got.append(piece);
    return true;
  };
  absl::StatusOr<HttpResponse> r = SendHttp(ended.endpoint(), call);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(got, "one\ntwo\n");
  EXPECT_TRUE(r->body.empty());
  // One that never ends: the reader's stop flag ends it (the head's timeout does not).
  CannedServer endless({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"}, /*keep_open=*/true);
  std::atomic<bool> stop{false};
  got.clear();
  call.stop = &stop;
  call.timeout = std::chrono::milliseconds(100);
  call.on_body = [&](std::string_view piece) {
    got.append(piece);
    stop = true;
    return true;
  };
  r = SendHttp(endless.endpoint(), call);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(got, "abc");
  // Cut off mid-stream: an error.
  CannedServer cut({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc"});
  call.stop = nullptr;
  call.on_body = [](std::string_view) { return true; };
  r = SendHttp(cut.endpoint(), call);
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
}

TEST(HttpClientTest, ChunkedDecoderTakesBytesInAnyPieces) {
  const std::string body = "3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\n\r\n";
  for (size_t step = 1; step <= body.size(); ++step) {
    ChunkedDecoder d;
    std::string out;
    ChunkedDecoder::State state = ChunkedDecoder::State::kMore;
    for (size_t at = 0; at < body.size() && state == ChunkedDecoder::State::kMore; at += step)
      state = d.Feed(std::string_view(body).substr(at, step), [&](std::string_view p) {
        out.append(p);
        return true;
      });
    EXPECT_EQ(state, ChunkedDecoder::State::kDone) << step;
    EXPECT_EQ(out, "abc0123456789abcdef") << step;
  }
  for (const char* bad : {"x\r\n", "3\r\nabcXY", "ffffffffffffffff\r\n"}) {
    ChunkedDecoder d;
    EXPECT_EQ(d.Feed(bad, [](std::string_view) { return true; }), ChunkedDecoder::State::kBad) << bad;
  }
}

TEST(HttpClientTest, StatusOnlyDoesNotWaitForTheBody) {
  CannedServer server({"HTTP/1.1 500 Boom\r\nContent-Length: 1000\r\n\r\npartial"}, /*keep_open=*/true);
  HttpCall call;
  call.status_only = true;
  absl::StatusOr<HttpResponse> r = SendHttp(server.endpoint(), call);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 500);
}

TEST(HttpClientTest, FailuresNameTheEndpoint) {
  CannedServer garbage({"SSH-2.0-OpenSSH\r\n"});
  absl::StatusOr<HttpResponse> r = SendHttp(garbage.endpoint(), {});
  EXPECT_TRUE(absl::IsUnavailable(r.status()));
  EXPECT_THAT(r.status().message(), HasSubstr("not an HTTP answer"));
  CannedServer cut({"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"});
  r = SendHttp(cut.endpoint(), {});
  EXPECT_THAT(r.status().message(), HasSubstr("cut off"));
  CannedServer silent({""}, /*keep_open=*/true);
  HttpCall call;
  call.timeout = std::chrono::milliseconds(200);
  r = SendHttp(silent.endpoint(), call);
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
  // A port bound by no listener refuses the connection.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  r = SendHttp({"127.0.0.1", std::to_string(ntohs(addr.sin_port)), "/", nullptr}, {});
  ::close(fd);
  EXPECT_TRUE(absl::IsUnavailable(r.status()));
  EXPECT_THAT(r.status().message(), HasSubstr("127.0.0.1:"));
}

}  // namespace
}  // namespace ferry
