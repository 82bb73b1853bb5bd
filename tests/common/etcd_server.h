// Test helper: a real etcd (Debian's etcd-server) on loopback ports the kernel picked, with its data in a
// new temporary directory; stopped (SIGKILL) and removed by the destructor. Stop()/Start() take it away
// and bring it back on the same ports and data, for outage tests.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "common/http_client.h"

namespace ferry::testing {

inline int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

class EtcdServer {
 public:
  EtcdServer() {
    char dir[] = "/tmp/ferry-etcd-XXXXXX";
    dir_ = ::mkdtemp(dir);
    client_port_ = FreeLoopbackPort();
    peer_port_ = FreeLoopbackPort();
    Start();
  }
  ~EtcdServer() {
    Stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  // Starts etcd and waits (up to 30 s) until it answers; false when it did not.
  bool Start() {
    const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
    const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test or benchmark killed mid-run leaves no etcd behind
      const std::string log = dir_ + "/etcd.log";
      FILE* out = std::freopen(log.c_str(), "a", stderr);
      (void)out;
      ::execlp("etcd", "etcd", "--name", "test", "--data-dir", (dir_ + "/data").c_str(), "--listen-client-urls",
               client.c_str(), "--advertise-client-urls", client.c_str(), "--listen-peer-urls", peer.c_str(),
               "--initial-advertise-peer-urls", peer.c_str(), "--initial-cluster", ("test=" + peer).c_str(),
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < until) {
      HttpCall call;
      call.method = "POST";
      call.path = "/v3/kv/range";
      call.body = R"({"key":"AA=="})";
      call.timeout = std::chrono::milliseconds(1000);
      absl::StatusOr<HttpResponse> r = SendHttp({"127.0.0.1", std::to_string(client_port_), "/", nullptr}, call);
      if (r.ok() && r->status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::string url() const { return "etcd://127.0.0.1:" + std::to_string(client_port_); }
  HttpEndpoint endpoint() const { return {"127.0.0.1", std::to_string(client_port_), "", nullptr}; }

 private:
  std::string dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace ferry::testing
