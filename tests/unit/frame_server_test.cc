// The replica's frame socket on its own, with a handler that records what it is given: frames of a
// connection in order and whole, the handler told after each read, answers written back, a client that
// leaves cancels what it sent, a malformed frame closes its connection, Wake returns a poll, and a server
// that stops accepting removes its socket file. Every wait is bounded (a receive timeout, a deadline).
#include "replica/internal/frame_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "transport/address.h"

namespace ferry::replica {
namespace {

using transport::FrameHeader;
using transport::FrameKind;

struct Seen {
  FrameKind kind;
  uint64_t stream_id;
  std::string payload;
};

// A tracked stream that records what reaches it.
struct FlagStream : TrackedStream {
  void Cancel() override { cancelled.store(true); }
  void AddCredit(uint32_t bytes) override { credit.fetch_add(bytes); }
  std::atomic<bool> cancelled{false};
  std::atomic<uint64_t> credit{0};
};

// Records frames; answers each request frame with an empty cancel frame of the same stream (any frame
// would do) and tracks it, so that the connection's cancel flags can be observed.
class RecordingHandler : public FrameServer::Handler {
 public:
  absl::Status OnFrame(const std::shared_ptr<ClientConnection>& c, const FrameHeader& header,
                       std::string_view payload) override {
    if (header.kind == FrameKind::kHealthReply) return absl::InvalidArgumentError("not from a client");
    MutexLock lock(&mu_);
    seen_.push_back({header.kind, header.stream_id, std::string(payload)});
    if (header.kind == FrameKind::kRequest) {
      auto flag = std::make_shared<FlagStream>();
      flags_.push_back(flag);
      c->Track(header.stream_id, flag);
      std::string answer;
      transport::AppendEmpty(answer, FrameKind::kCancel, header.stream_id);
      c->Send(answer);
    }
    return absl::OkStatus();
  }
  void OnFramesHandled() override {
    MutexLock lock(&mu_);
    ++reads_;
  }
  std::vector<Seen> seen() {
    MutexLock lock(&mu_);
    return seen_;
  }
  bool all_cancelled() {
    MutexLock lock(&mu_);
    for (auto& f : flags_)
      if (!f->cancelled.load()) return false;
    return !flags_.empty();
  }
  int reads() {
    MutexLock lock(&mu_);
    return reads_;
  }

 private:
  Mutex mu_;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FlagStream>> flags_ ABSL_GUARDED_BY(mu_);
  int reads_ ABSL_GUARDED_BY(mu_) = 0;
};

// A server polled by two threads until the test ends.
class Served {
 public:
  Served() {
    dir_ = std::filesystem::path(::testing::TempDir()) / ("frames-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "f.sock").string();
    EXPECT_TRUE(server_.Listen(path_).ok());
    for (int i = 0; i < 2; ++i)
      threads_.emplace_back([this] {
        while (!stop_.load()) server_.Poll(handler_);
      });
  }
  ~Served() {
    stop_.store(true);
    server_.Wake(threads_.size());
    for (auto& t : threads_) t.join();
    server_.CloseAll();
    std::filesystem::remove_all(dir_);
  }
  FrameServer& server() { return server_; }
  RecordingHandler& handler() { return handler_; }
  const std::string& path() const { return path_; }

 private:
  std::filesystem::path dir_;
  std::string path_;
  FrameServer server_;
  RecordingHandler handler_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

int Connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

template <typename F>
bool WaitFor(F done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

std::string Request(uint64_t stream, std::string_view body) {
  transport::RequestMessage m;
  m.method = "POST";
  m.path = "/";
  m.body = body;
  std::string out;
  transport::AppendRequest(out, stream, m);
  return out;
}

TEST(FrameServerTest, FramesOfAConnectionArriveInOrderAndWholeAndAreAnswered) {
  Served s;
  UniqueFd fd(Connect(s.path()));
  ASSERT_TRUE(fd);
  std::string bytes;
  const std::string big(200 * 1024, 'x');  // more than one read
  for (uint64_t i = 1; i <= 5; ++i) bytes += Request(i, i == 3 ? std::string_view(big) : "small");
  transport::AppendEmpty(bytes, FrameKind::kCancel, 4);
  // Sent in pieces that split frame headers: the server must reassemble them.
  for (size_t at = 0; at < bytes.size(); at += 7001) {
    size_t n = std::min<size_t>(7001, bytes.size() - at);
    ASSERT_EQ(::send(fd.get(), bytes.data() + at, n, MSG_NOSIGNAL), static_cast<ssize_t>(n));
  }
  ASSERT_TRUE(WaitFor([&] { return s.handler().seen().size() == 6; }));
  std::vector<Seen> seen = s.handler().seen();
  for (uint64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(seen[i].kind, FrameKind::kRequest);
    EXPECT_EQ(seen[i].stream_id, i + 1);
    transport::RequestMessage m;
    ASSERT_TRUE(transport::DecodeRequest(seen[i].payload, &m).ok());
    EXPECT_EQ(m.body.size(), i == 2 ? big.size() : 5u);
  }
  EXPECT_EQ(seen[5].kind, FrameKind::kCancel);
  // OnFramesHandled follows a read's last OnFrame (after the re-arm): wait for it rather than race it.
  EXPECT_TRUE(WaitFor([&] { return s.handler().reads() >= 1; }));
  // Five answers come back, one per request, by stream id.
  transport::FrameReader reader;
  std::vector<uint64_t> answered;
  while (answered.size() < 5) {
    FrameHeader h;
    std::string_view p;
    absl::StatusOr<bool> got = reader.Next(&h, &p);
    ASSERT_TRUE(got.ok());
    if (*got) {
      answered.push_back(h.stream_id);
      continue;
    }
    char* at = reader.Prepare(4096);
    ssize_t n = ::recv(fd.get(), at, 4096, 0);
    ASSERT_GT(n, 0) << "the answers did not arrive";
    reader.Commit(static_cast<size_t>(n));
  }
  EXPECT_EQ(answered, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
}

TEST(FrameServerTest, ClientsOnOtherNodesConnectOverTcp) {
  Served s;
  absl::StatusOr<uint16_t> port = s.server().ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_GT(*port, 0);
  absl::StatusOr<transport::FrameAddress> address =
      transport::ParseFrameAddress(transport::TcpAddress("127.0.0.1", *port));
  ASSERT_TRUE(address.ok());
  absl::StatusOr<UniqueFd> fd = transport::ConnectFrameSocket(*address);
  ASSERT_TRUE(fd.ok()) << fd.status();
  std::string bytes = Request(9, "from another node");
  ASSERT_EQ(::send(fd->get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  ASSERT_TRUE(WaitFor([&] { return s.handler().seen().size() == 1; }));
  std::vector<Seen> seen = s.handler().seen();  // the message's views point into it
  transport::RequestMessage m;
  ASSERT_TRUE(transport::DecodeRequest(seen[0].payload, &m).ok());
  EXPECT_EQ(m.body, "from another node");
  // The answer comes back over the same TCP connection.
  transport::FrameReader reader;
  FrameHeader h;
  std::string_view p;
  for (;;) {
    absl::StatusOr<bool> got = reader.Next(&h, &p);
    ASSERT_TRUE(got.ok());
    if (*got) break;
    pollfd wait{fd->get(), POLLIN, 0};
    ASSERT_EQ(::poll(&wait, 1, 30000), 1) << "no answer";
    char* at = reader.Prepare(4096);
    ssize_t n = ::recv(fd->get(), at, 4096, 0);
    ASSERT_GT(n, 0);
    reader.Commit(static_cast<size_t>(n));
  }
  EXPECT_EQ(h.stream_id, 9u);
  EXPECT_FALSE(s.server().ListenTcp("not-an-ip", 0).ok());
}

TEST(FrameServerTest, AClientThatLeavesCancelsWhatItSent) {
  Served s;
  UniqueFd fd(Connect(s.path()));
  ASSERT_TRUE(fd);
  std::string bytes = Request(1, "a") + Request(2, "b");
  ASSERT_EQ(::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  ASSERT_TRUE(WaitFor([&] { return s.handler().seen().size() == 2; }));
  EXPECT_FALSE(s.handler().all_cancelled());
  fd.reset();
  EXPECT_TRUE(WaitFor([&] { return s.handler().all_cancelled(); }));
}

TEST(FrameServerTest, AMalformedOrRefusedFrameClosesOnlyItsConnection) {
  Served s;
  UniqueFd bad(Connect(s.path())), good(Connect(s.path()));
  ASSERT_TRUE(bad && good);
  std::string refused;
  transport::AppendEmpty(refused, FrameKind::kHealthReply, 1);
  ASSERT_GT(::send(bad.get(), refused.data(), refused.size(), MSG_NOSIGNAL), 0);
  char c;
  EXPECT_EQ(::recv(bad.get(), &c, 1, 0), 0) << "the server closed the connection";
  std::string ok = Request(7, "still here");
  ASSERT_GT(::send(good.get(), ok.data(), ok.size(), MSG_NOSIGNAL), 0);
  EXPECT_TRUE(WaitFor([&] { return !s.handler().seen().empty() && s.handler().seen().back().stream_id == 7; }));
}

TEST(FrameServerTest, StoppingAcceptingRemovesTheSocketAndKeepsOpenConnections) {
  Served s;
  UniqueFd open(Connect(s.path()));
  ASSERT_TRUE(open);
  std::string before = Request(2, "before");  // answered: the connection has been accepted
  ASSERT_GT(::send(open.get(), before.data(), before.size(), MSG_NOSIGNAL), 0);
  ASSERT_TRUE(WaitFor([&] { return s.handler().seen().size() == 1; }));
  s.server().StopAccepting();
  EXPECT_FALSE(std::filesystem::exists(s.path()));
  EXPECT_LT(Connect(s.path()), 0);
  std::string after = Request(3, "after");
  ASSERT_GT(::send(open.get(), after.data(), after.size(), MSG_NOSIGNAL), 0);
  EXPECT_TRUE(WaitFor([&] { return s.handler().seen().size() == 2; }));
}

TEST(ClientConnectionTest, CancelAndCreditReachOneStreamAndUntrackedStreamsAreLeftAlone) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd peer(fds[1]);
  ClientConnection c(fds[0], 5);
  auto a = std::make_shared<FlagStream>(), b = std::make_shared<FlagStream>();
  c.Track(1, a);
  c.Track(2, b);
  c.Cancel(1);
  c.Cancel(9);  // unknown: nothing
  c.AddCredit(2, 100);
  c.AddCredit(9, 100);  // unknown: nothing
  EXPECT_TRUE(a->cancelled.load());
  EXPECT_FALSE(b->cancelled.load());
  EXPECT_EQ(a->credit.load(), 0u);
  EXPECT_EQ(b->credit.load(), 100u);
  c.Untrack(2);
  c.Abandon();
  EXPECT_FALSE(b->cancelled.load()) << "answered streams are not cancelled by the client's leaving";
  c.Send("dropped");  // after Abandon: dropped, not written
  char buf[8];
  EXPECT_EQ(::recv(peer.get(), buf, sizeof(buf), 0), 0);
}

}  // namespace
}  // namespace ferry::replica
