// The hop ferry adds between the HTTP proxy and user code: request frames over a Unix socket to a replica
// running builtin:echo (in this process, on its own threads), and the answers back.
// BM_ReplicaRoundTrip is the replica as it is. BM_AsioReplicaRoundTrip answers a design question:
// should the replica's frame socket be transport::FrameConnection (Asio, the proxy's and the node agent's
// client side) instead of its own epoll FrameServer? Both serve builtin:echo through the same
// DeploymentHost; the client is the same blocking loop over a Unix socket:
//  - ReplicaRoundTrip: the replica as it is (ReplicaServer: FrameServer + Executor). The thread that reads a
//    request runs it and writes its answer: no thread hop.
//  - AsioReplicaRoundTrip: an Asio acceptor and FrameConnection on one I/O thread (Asio's model for this);
//    requests run on a pool of max_ongoing_requests threads (handle() may block, so not on the I/O
//    thread) and their answers are posted back to the I/O thread that owns the connection: two hops.
// Arg: requests kept in flight on the connection (1: latency of one round trip; 8: pipelined throughput).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <benchmark/benchmark.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstring>
#include <thread>

#include "replica/internal/deployment_host.h"
#include "replica/internal/replica_server.h"
#include "transport/connection.h"
#include "transport/frame.h"

namespace ferry::replica {
namespace {

namespace asio = boost::asio;

constexpr int kMaxOngoing = 4;

ReplicaSpec EchoSpec() {
  ReplicaSpec spec;
  spec.replica_id = "bench#Echo#1";
  spec.deployment = "Echo";
  spec.symbol = "echo";
  spec.max_ongoing_requests = kMaxOngoing;
  return spec;
}

std::string SocketPath(const char* what) {
  return "/tmp/ferry-bench-" + std::string(what) + "-" + std::to_string(getpid()) + ".sock";
}

// Keeps `depth` requests in flight on one connection to `path` for the benchmark's iterations (one
// iteration: one answer received).
void Drive(benchmark::State& state, const std::string& path) {
  const int depth = static_cast<int>(state.range(0));
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    state.SkipWithError("cannot connect");
    ::close(fd);
    return;
  }
  transport::RequestMessage m;
  m.request_id = "5f0c2a1e9d3b4c7a8e6f1029384756ab";
  m.method = "GET";
  m.path = "/echo";
  m.route_prefix = "/echo";
  m.headers = {{"host", "127.0.0.1"}, {"user-agent", "bench"}};
  std::string out;
  uint64_t id = 0;
  auto send = [&](int n) {
    out.clear();
    for (int i = 0; i < n; ++i) transport::AppendRequest(out, ++id, m);
    return ::write(fd, out.data(), out.size()) == static_cast<ssize_t>(out.size());
  };
  transport::FrameReader reader;
  if (!send(depth)) state.SkipWithError("write failed");
  for (auto _ : state) {
    transport::FrameHeader h;
    std::string_view payload;
    for (;;) {
      auto got = reader.Next(&h, &payload);
      if (got.ok() && *got) break;
      ssize_t n = ::read(fd, reader.Prepare(65536), 65536);
      if (n <= 0) {
        state.SkipWithError("connection closed");
        break;
      }
      reader.Commit(static_cast<size_t>(n));
    }
    transport::ResponseMessage r;
    benchmark::DoNotOptimize(transport::DecodeResponse(payload, &r));
    if (!send(1)) break;  // keep `depth` in flight
  }
  ::close(fd);  // the answers still in flight are dropped with the connection
  state.SetItemsProcessed(state.iterations());
}

void BM_ReplicaRoundTrip(benchmark::State& state) {
  ReplicaSpec spec = EchoSpec();
  auto host = DeploymentHost::Create(spec);
  if (!host.ok()) return state.SkipWithError("cannot create echo");
  const std::string path = SocketPath("frames");
  ReplicaServer server(spec, **host);
  if (!server.Listen(path).ok()) return state.SkipWithError("cannot listen");
  std::thread serving([&] { server.Run(); });
  Drive(state, path);
  server.RequestStop();
  serving.join();
}
BENCHMARK(BM_ReplicaRoundTrip)->Arg(1)->Arg(8)->UseRealTime();

// The alternative: the replica's side of the socket as a FrameConnection.
class AsioReplica : public transport::FrameConnection::Handler {
 public:
  AsioReplica(asio::io_context& io, asio::thread_pool& pool, DeploymentHost& host,
              asio::local::stream_protocol::socket socket)
      : io_(io),
        pool_(pool),
        host_(host),
        connection_(std::make_shared<transport::FrameConnection>(std::move(socket), this)) {}
  void Start() { connection_->Start(); }
  void OnFrame(const transport::FrameHeader& header, std::string_view payload) override {
    if (header.kind != transport::FrameKind::kRequest) return;
    auto bytes = std::make_shared<std::string>(payload);
    asio::post(pool_, [this, bytes, stream = header.stream_id] {
      transport::RequestMessage request;
      if (!transport::DecodeRequest(*bytes, &request).ok()) return;
      static const std::atomic<bool> kNotCancelled{false};
      FerryResponseSink response;
      host_.Handle(request, kNotCancelled, &response);
      transport::HeaderList headers;
      for (const auto& [k, v] : response.headers) headers.emplace_back(k, v);
      auto frame = std::make_shared<std::string>();
      transport::AppendResponse(*frame, stream, {static_cast<uint16_t>(response.status), headers, response.body});
      asio::post(io_, [this, frame] {
        connection_->output().append(*frame);
        connection_->Flush();
      });
    });
  }
  void OnClosed(const absl::Status&) override {}
  void Close() { connection_->Detach(); }

 private:
  asio::io_context& io_;
  asio::thread_pool& pool_;
  DeploymentHost& host_;
  std::shared_ptr<transport::FrameConnection> connection_;
};

void BM_AsioReplicaRoundTrip(benchmark::State& state) {
  ReplicaSpec spec = EchoSpec();
  auto host = DeploymentHost::Create(spec);
  if (!host.ok()) return state.SkipWithError("cannot create echo");
  const std::string path = SocketPath("asio");
  ::unlink(path.c_str());
  asio::io_context io(1);
  asio::thread_pool pool(kMaxOngoing);
  asio::local::stream_protocol::acceptor acceptor(io, asio::local::stream_protocol::endpoint(path));
  std::unique_ptr<AsioReplica> replica;
  acceptor.async_accept([&](const boost::system::error_code& ec, asio::local::stream_protocol::socket socket) {
    if (ec) return;
    replica = std::make_unique<AsioReplica>(io, pool, **host, std::move(socket));
    replica->Start();
  });
  auto work = asio::make_work_guard(io);
  std::thread serving([&] { io.run(); });
  Drive(state, path);
  pool.join();  // every request's answer is posted before the I/O thread stops
  asio::post(io, [&] {
    if (replica) replica->Close();
    acceptor.close();
    work.reset();
  });
  serving.join();
  ::unlink(path.c_str());
}
BENCHMARK(BM_AsioReplicaRoundTrip)->Arg(1)->Arg(8)->UseRealTime();

}  // namespace
}  // namespace ferry::replica
