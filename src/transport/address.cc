#include "transport/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/common.h"
#include "common/http_client.h"

namespace ferry::transport {

absl::StatusOr<FrameAddress> ParseFrameAddress(std::string_view address) {
  FrameAddress a;
  if (!address.starts_with("tcp://")) {
    if (address.empty()) return absl::InvalidArgumentError("an empty frame address");
    a.path = std::string(address);
    return a;
  }
  // HOST:PORT as an HTTP URL's authority (the same rules: [IPv6], a port from 1 to 65535), the port required.
  std::string_view authority = address.substr(6);
  const size_t colon = authority.rfind(':'), bracket = authority.rfind(']');
  absl::StatusOr<HttpEndpoint> e = ParseHttpEndpoint(authority, /*scheme_optional=*/true);
  if (!e.ok() || colon == std::string_view::npos || (bracket != std::string_view::npos && colon < bracket) ||
      e->path != "/")
    return absl::InvalidArgumentError(StrCat("bad frame address '", address, "' (tcp://IP:PORT or tcp://[IPv6]:PORT)",
                                             e.ok() ? "" : StrCat(": ", Message(e.status()))));
  a.tcp = true;
  a.host = e->host;
  a.port = static_cast<uint16_t>(std::stoi(e->port));
  return a;
}

absl::StatusOr<NumericAddress> ToNumericAddress(const std::string& host, uint16_t port) {
  NumericAddress n;
  if (auto* v4 = reinterpret_cast<sockaddr_in*>(&n.storage); inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = n.family = AF_INET;
    v4->sin_port = htons(port);
    n.length = sizeof(sockaddr_in);
  } else if (auto* v6 = reinterpret_cast<sockaddr_in6*>(&n.storage);
             inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = n.family = AF_INET6;
    v6->sin6_port = htons(port);
    n.length = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(StrCat("'", host, "' is not a numeric IP address"));
  }
  return n;
}

std::string TcpAddress(std::string_view host, uint16_t port) {
  return host.find(':') != std::string_view::npos ? StrCat("tcp://[", host, "]:", port)
                                                  : StrCat("tcp://", host, ":", port);
}

namespace {
std::string& TokenStorage() {
  static std::string token;
  return token;
}
}  // namespace

void SetFrameToken(std::string token) { TokenStorage() = std::move(token); }
const std::string& FrameToken() { return TokenStorage(); }

bool IsFrameToken(std::string_view given) {
  const std::string& token = TokenStorage();
  unsigned char diff = given.size() == token.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) diff |= given[i] ^ token[i % std::max<size_t>(1, token.size())];
  return diff == 0 && !token.empty();
}

namespace {
struct FrameTlsContexts {
  std::shared_ptr<const TlsContext> client;
  std::shared_ptr<const TlsContext> server;
};
FrameTlsContexts& TlsStorage() {
  static FrameTlsContexts contexts;
  return contexts;
}
}  // namespace

absl::Status SetFrameTls(const TlsFiles& files) {
  absl::StatusOr<std::shared_ptr<const TlsContext>> client = TlsContext::Create(files, TlsContext::Role::kClient);
  if (!client.ok()) return client.status();
  absl::StatusOr<std::shared_ptr<const TlsContext>> server = TlsContext::Create(files, TlsContext::Role::kServer);
  if (!server.ok()) return server.status();
  TlsStorage() = {std::move(*client), std::move(*server)};
  return absl::OkStatus();
}
const std::shared_ptr<const TlsContext>& FrameTlsClient() { return TlsStorage().client; }
const std::shared_ptr<const TlsContext>& FrameTlsServer() { return TlsStorage().server; }

void SetNoDelay(int fd) {
  int one = 1;
  // Each fails harmlessly on a Unix socket.
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int idle_s = 2, interval_s = 1, probes = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
  // And bytes sent but not acknowledged for 5 s (a request written to a peer that vanished) end it too.
  unsigned int user_timeout_ms = 5000;
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
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
  absl::StatusOr<NumericAddress> numeric = ToNumericAddress(address.host, address.port);
  if (!numeric.ok()) return numeric.status();
  const std::string where = TcpAddress(address.host, address.port);
  UniqueFd fd(::socket(numeric->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::InternalError(StrCat("socket: ", std::strerror(errno)));
  SetNoDelay(fd.get());
  if (::connect(fd.get(), numeric->sockaddr_ptr(), numeric->length) != 0) {
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
