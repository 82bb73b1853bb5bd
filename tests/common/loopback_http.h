// Test helpers: an HTTP server on a loopback port the kernel picks, for clients under test (the blocking
// HTTP client, the OTLP exporter). Each connection is handed to `serve` on the server's one thread, in
// order; `serve` reads the request (ReadHttpRequest) and answers, and owns the descriptor.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <gtest/gtest.h>
#include <string>
#include <thread>

namespace ferry::testing {

class LoopbackHttpServer {
 public:
  // `serve(fd, i)`: the i-th connection (0, 1, ...); it must close `fd` or keep it for later.
  explicit LoopbackHttpServer(std::function<void(int fd, size_t index)> serve) : serve_(std::move(serve)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(fd_, 16);
    thread_ = std::thread([this] {
      for (size_t i = 0;; ++i) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        serve_(c, i);
      }
    });
  }
  // Stops accepting and joins the serving thread (connections `serve` kept are its owner's to close).
  ~LoopbackHttpServer() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  uint16_t port() const { return port_; }

 private:
  std::function<void(int, size_t)> serve_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

// One request from `fd`: its head and as much body as its Content-Length says (less if the peer stops).
inline std::string ReadHttpRequest(int fd) {
  std::string in;
  char buf[4096];
  size_t want = std::string::npos;
  while (in.size() < want) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
    size_t end = in.find("\r\n\r\n");
    if (end != std::string::npos && want == std::string::npos) {
      size_t cl = in.find("Content-Length: ");
      want = end + 4 + (cl == std::string::npos ? 0 : std::stoul(in.substr(cl + 16)));
    }
  }
  return in;
}

}  // namespace ferry::testing
