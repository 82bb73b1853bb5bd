#include "transport/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "common/common.h"

namespace ferry::transport {

absl::StatusOr<FrameAddress> ParseFrameAddress(std::string_view address) {
  FrameAddress a;
  if (!address.starts_with("tcp://")) {
    if (address.empty()) return absl::InvalidArgumentError("an empty frame address");
    a.path = std::string(address);
    return a;
  }
  std::string_view rest = address.substr(6);
  a.tcp = true;
  size_t colon;
  if (rest.starts_with("[")) {
    size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      return absl::InvalidArgumentError(StrCat("bad frame address '", address, "' (tcp://[IPv6]:PORT)"));
    a.host = std::string(rest.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = rest.rfind(':');
    if (colon == std::string_view::npos)
      return absl::InvalidArgumentError(StrCat("bad frame address '", address, "' (tcp://IP:PORT)"));
    a.host = std::string(rest.substr(0, colon));
  }
  std::string_view port = rest.substr(colon + 1);
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9' || value > 65535) return absl::InvalidArgumentError(StrCat("bad port in '", address, "'"));
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (port.empty() || value == 0 || value > 65535)
    return absl::InvalidArgumentError(StrCat("bad port in '", address, "'"));
  a.port = static_cast<uint16_t>(value);
  return a;
}

std::string TcpAddress(std::string_view host, uint16_t port) {
  return host.find(':') != std::string_view::npos ? StrCat("tcp://[", host, "]:", port)
                                                  : StrCat("tcp://", host, ":", port);
}

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // fails harmlessly on a Unix socket
}

absl::StatusOr<UniqueFd> ConnectFrameSocket(const FrameAddress& address, int timeout_ms) {
  if (!address.tcp) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (address.path.size() >= sizeof(addr.sun_path))
      return absl::InvalidArgumentError(StrCat("socket path too long: ", address.path));
    std::memcpy(addr.sun_path, address.path.data(), address.path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return absl::InternalError(StrCat("socket: ", std::strerror(errno)));
    // Non-blocking: a replica whose backlog is full (or that is gone) fails at once.
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
      return absl::UnavailableError(StrCat("connect ", address.path, ": ", std::strerror(errno)));
    return fd;
  }
  sockaddr_storage storage{};
  socklen_t len = 0;
  int family;
  if (auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
      inet_pton(AF_INET, address.host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = family = AF_INET;
    v4->sin_port = htons(address.port);
    len = sizeof(sockaddr_in);
  } else if (auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
             inet_pton(AF_INET6, address.host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = family = AF_INET6;
    v6->sin6_port = htons(address.port);
    len = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(StrCat("'", address.host, "' is not a numeric IP address"));
  }
  const std::string where = TcpAddress(address.host, address.port);
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::InternalError(StrCat("socket: ", std::strerror(errno)));
  SetNoDelay(fd.get());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&storage), len) != 0) {
    if (errno != EINPROGRESS) return absl::UnavailableError(StrCat("connect ", where, ": ", std::strerror(errno)));
    pollfd p{fd.get(), POLLOUT, 0};
    int n;
    do {
      n = ::poll(&p, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    if (n == 0) return absl::UnavailableError(StrCat("connect ", where, ": timed out"));
    int err = 0;
    socklen_t err_len = sizeof(err);
    if (n < 0 || ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len) != 0 || err != 0)
      return absl::UnavailableError(StrCat("connect ", where, ": ", std::strerror(err ? err : errno)));
  }
  return fd;
}

}  // namespace ferry::transport
