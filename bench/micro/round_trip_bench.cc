// One proxy-to-replica round trip: a request frame over a Unix domain socket to a real replica server
// running builtin:echo (in this process, on its own threads), and its response frame back. This is the
// hop ferry adds between the HTTP proxy and user code.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <benchmark/benchmark.h>
#include <cstring>
#include <thread>

#include "replica/internal/deployment_host.h"
#include "replica/internal/replica_server.h"
#include "transport/frame.h"

namespace ferry::replica {
namespace {

void BM_ReplicaRoundTrip(benchmark::State& state) {
  ReplicaSpec spec;
  spec.replica_id = "bench#Echo#1";
  spec.deployment = "Echo";
  spec.symbol = "echo";
  spec.max_ongoing_requests = 4;
  auto host = DeploymentHost::Create(spec);
  if (!host.ok()) {
    state.SkipWithError("cannot create echo");
    return;
  }
  std::string path = "/tmp/ferry-bench-" + std::to_string(getpid()) + ".sock";
  ReplicaServer server(spec, **host);
  if (!server.Listen(path).ok()) {
    state.SkipWithError("cannot listen");
    return;
  }
  std::thread serving([&] { server.Run(); });
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    state.SkipWithError("cannot connect");
  }
  transport::RequestMessage m;
  m.request_id = "5f0c2a1e9d3b4c7a8e6f1029384756ab";
  m.method = "GET";
  m.path = "/echo";
  m.route_prefix = "/echo";
  m.headers = {{"host", "127.0.0.1"}, {"user-agent", "bench"}};
  std::string out;
  transport::FrameReader reader;
  uint64_t id = 0;
  for (auto _ : state) {
    out.clear();
    transport::AppendRequest(out, ++id, m);
    if (::write(fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) break;
    transport::FrameHeader h;
    std::string_view payload;
    for (;;) {
      auto got = reader.Next(&h, &payload);
      if (got.ok() && *got) break;
      ssize_t n = ::read(fd, reader.Prepare(65536), 65536);
      if (n <= 0) break;
      reader.Commit(static_cast<size_t>(n));
    }
    transport::ResponseMessage r;
    benchmark::DoNotOptimize(transport::DecodeResponse(payload, &r));
  }
  ::close(fd);
  server.RequestStop();
  serving.join();
}
BENCHMARK(BM_ReplicaRoundTrip)->UseRealTime();

}  // namespace
}  // namespace ferry::replica
