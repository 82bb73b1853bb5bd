// Where a replica serves frames: a Unix socket path on its own node, or "tcp://IP:PORT" for other nodes
// (cluster mode). Every frame client (the proxy's channels, handles, the node agent's and the controller's
// control channels) connects through here, so both kinds work everywhere; TCP connections get TCP_NODELAY
// (frames are written whole, and a small answer must not wait for Nagle).
#pragma once

#include <sys/socket.h>

#include <absl/status/statusor.h>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/tls.h"
#include "common/unique_fd.h"

namespace ferry::transport {

struct FrameAddress {
  bool tcp = false;
  std::string path;  // a Unix socket
  std::string host;  // tcp: a numeric IPv4 or IPv6 address
  uint16_t port = 0;
};

// "tcp://IP:PORT" ("tcp://[IPv6]:PORT"), else a Unix socket path.
absl::StatusOr<FrameAddress> ParseFrameAddress(std::string_view address);
std::string TcpAddress(std::string_view host, uint16_t port);  // "tcp://HOST:PORT", IPv6 in brackets

// A numeric IPv4 or IPv6 address and port as the socket calls take it (no name lookup).
struct NumericAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = 0;
  const sockaddr* sockaddr_ptr() const { return reinterpret_cast<const sockaddr*>(&storage); }
};
absl::StatusOr<NumericAddress> ToNumericAddress(const std::string& host, uint16_t port);

// A connected, non-blocking stream socket to `address` (Unavailable when nobody listens there). A TCP
// connect waits up to `timeout_ms` for the handshake.
absl::StatusOr<UniqueFd> ConnectFrameSocket(const FrameAddress& address, int timeout_ms = 2000);

// A TCP frame socket's options (nothing for a Unix one): no Nagle (frames are written whole, and a small
// answer must not wait), keepalive probes after 2 s idle, every second, 3 of them, and at most 5 s for
// bytes sent to be acknowledged: a peer whose node vanished (cut off, powered off: no reset comes) is found
// gone in about 5 s, so a request waiting on it fails instead of waiting for its client's timeout.
void SetNoDelay(int fd);

// The cluster's token (ferry start --cluster-token-file): every frame client of this process sends it in its
// hello, and a replica that has one accepts only connections that present it. Set once at start, before
// any thread that connects or serves (a replica reads it from its environment, FERRY_CLUSTER_TOKEN).
void SetFrameToken(std::string token);
const std::string& FrameToken();
// Whether `given` is the token, in time that does not depend on where they differ.
bool IsFrameToken(std::string_view given);

// TLS between nodes (ferry start --tls-ca/--tls-cert/--tls-key): every TCP frame connection of this
// process is TLS (mutual: each side's certificate must chain to the CA; a client also checks that the
// replica's certificate names the IP it connects to). Unix sockets stay in the clear. Set once at start,
// like the token (a replica reads the files' paths from FERRY_TLS_CA/_CERT/_KEY).
absl::Status SetFrameTls(const TlsFiles& files);
// Null when frames between nodes are in the clear.
const std::shared_ptr<const TlsContext>& FrameTlsClient();
const std::shared_ptr<const TlsContext>& FrameTlsServer();

}  // namespace ferry::transport
