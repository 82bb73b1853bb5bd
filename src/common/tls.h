// TLS for ferry's connections between machines (cluster mode): a node's frames to replicas on other nodes,
// and every call to etcd. Certificates and keys come from PEM files; a context verifies its peer against
// the CA file given (a server context also asks for, and requires, the client's certificate: mutual TLS).
// OpenSSL stays in tls.cc: this header is cheap to include.
#pragma once

#include <sys/types.h>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

struct ssl_ctx_st;
struct ssl_st;

namespace ferry {

// PEM files. `ca`: the certificates a peer's must chain to. `cert`/`key`: this side's (a client may go
// without: etcd without client-certificate auth).
struct TlsFiles {
  std::string ca;
  std::string cert;
  std::string key;
};

class TlsContext {
 public:
  enum class Role { kClient, kServer };
  // Loads the files; an error names the file and what is wrong with it.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(const TlsFiles& files, Role role);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  ssl_ctx_st* native() const { return ctx_; }
  Role role() const { return role_; }

 private:
  TlsContext(ssl_ctx_st* ctx, Role role) : ctx_(ctx), role_(role) {}
  ssl_ctx_st* const ctx_;
  const Role role_;
};

// One TLS session over a connected non-blocking socket (the caller owns the descriptor). Not thread-safe:
// a caller that reads and writes from different threads serializes the calls (none of them blocks).
class TlsSession {
 public:
  // A client's session that checks the server's certificate names `expect_host` (an IP address or a DNS
  // name; empty: the chain to the CA is checked only).
  static absl::StatusOr<std::unique_ptr<TlsSession>> Client(const TlsContext& context, int fd,
                                                            std::string_view expect_host);
  static absl::StatusOr<std::unique_ptr<TlsSession>> Server(const TlsContext& context, int fd);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // What a call that could not finish waits for before it is tried again.
  enum class Want { kNothing, kReadable, kWritable };

  // Advances the handshake: true once it is done; false with *want set when the socket must become ready
  // first; an error (the peer's certificate was refused, the peer is not TLS, ...) ends the session.
  absl::StatusOr<bool> Handshake(Want* want);
  // The whole handshake, waiting for the socket (poll) until `deadline`.
  absl::Status HandshakeUntil(std::chrono::steady_clock::time_point deadline);
  bool handshake_done() const { return handshake_done_; }

  // Like recv(2)/send(2): bytes moved (> 0); 0 when the peer closed; -1 when it must wait (*want says for
  // what) or on an error (*want kNothing; error() says what).
  ssize_t Read(char* buffer, size_t size, Want* want);
  ssize_t Write(const char* data, size_t size, Want* want);
  // Decrypted bytes already buffered (to read before waiting on the socket).
  bool HasBuffered() const;
  const std::string& error() const { return error_; }

 private:
  explicit TlsSession(ssl_st* ssl) : ssl_(ssl) {}
  // Sorts out a call's failure: -1 with *want set, or -1 with error_ set.
  ssize_t Failed(int rc, Want* want);
  ssl_st* const ssl_;
  bool handshake_done_ = false;
  std::string error_;
};

// Waits until `fd` is ready for what `want` says (kNothing: returns at once), or `deadline`: false then.
bool WaitForTls(int fd, TlsSession::Want want, std::chrono::steady_clock::time_point deadline);

}  // namespace ferry
