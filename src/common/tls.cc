#include "common/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/common.h"

namespace ferry {

namespace {

// OpenSSL's queued errors as one line (and the queue emptied).
std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "unknown TLS error" : out;
}

bool IsIpAddress(std::string_view host) {
  std::string h(host);
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(const TlsFiles& files, Role role) {
  SSL_CTX* ctx = SSL_CTX_new(role == Role::kClient ? TLS_client_method() : TLS_server_method());
  if (!ctx) return absl::InternalError(StrCat("TLS: ", OpenSslErrors()));
  std::shared_ptr<const TlsContext> context(new TlsContext(ctx, role));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // A peer that closes without close_notify ends the stream like a close (frames and HTTP bodies carry
  // their own lengths, so a cut-off is seen there).
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  // Writes may be retried with the same bytes at another address (a growing buffer), in pieces.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (files.ca.empty()) return absl::InvalidArgumentError("TLS needs a CA file (the certificates peers must chain to)");
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1)
    return absl::InvalidArgumentError(StrCat("TLS CA file ", files.ca, ": ", OpenSslErrors()));
  if (files.cert.empty() != files.key.empty())
    return absl::InvalidArgumentError("TLS needs both a certificate file and its key file, or neither");
  if (role == Role::kServer && files.cert.empty())
    return absl::InvalidArgumentError("a TLS server needs a certificate and a key");
  if (!files.cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1)
      return absl::InvalidArgumentError(StrCat("TLS certificate file ", files.cert, ": ", OpenSslErrors()));
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
      const std::string why = OpenSslErrors();
      if (why.find("key values mismatch") == std::string::npos)
        return absl::InvalidArgumentError(StrCat("TLS key file ", files.key, ": ", why));
    }
    if (SSL_CTX_check_private_key(ctx) != 1)
      return absl::InvalidArgumentError(
          StrCat("TLS key file ", files.key, " does not belong to the certificate in ", files.cert));
  }
  // OpenSSL decodes a certificate's extensions (key ids, constraints) the first time a handshake looks at
  // them and caches them in the certificate; sessions on several threads share these certificates, so
  // they are decoded here, before any thread uses the context.
  STACK_OF(X509_OBJECT)* trusted = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
  for (int i = 0; i < sk_X509_OBJECT_num(trusted); ++i)
    if (X509* x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(trusted, i))) X509_check_purpose(x, -1, 0);
  if (X509* own = SSL_CTX_get0_certificate(ctx)) X509_check_purpose(own, -1, 0);
  STACK_OF(X509)* chain = nullptr;
  if (SSL_CTX_get0_chain_certs(ctx, &chain) == 1 && chain)
    for (int i = 0; i < sk_X509_num(chain); ++i) X509_check_purpose(sk_X509_value(chain, i), -1, 0);
  // Both sides check the other's certificate; a server refuses a client without one.
  SSL_CTX_set_verify(ctx, role == Role::kServer ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
                     nullptr);
  return context;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::Client(const TlsContext& context, int fd,
                                                               std::string_view expect_host) {
  SSL* ssl = SSL_new(context.native());
  if (!ssl) return absl::InternalError(StrCat("TLS: ", OpenSslErrors()));
  std::unique_ptr<TlsSession> session(new TlsSession(ssl));
  SSL_set_fd(ssl, fd);
  SSL_set_connect_state(ssl);
  if (!expect_host.empty()) {
    const std::string host(expect_host);
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (IsIpAddress(host)) {
      if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1)
        return absl::InvalidArgumentError(StrCat("TLS: bad address ", host));
    } else {
      SSL_set_tlsext_host_name(ssl, host.c_str());
      if (SSL_set1_host(ssl, host.c_str()) != 1) return absl::InvalidArgumentError(StrCat("TLS: bad host name ", host));
    }
  }
  return session;
}

absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::Server(const TlsContext& context, int fd) {
  SSL* ssl = SSL_new(context.native());
  if (!ssl) return absl::InternalError(StrCat("TLS: ", OpenSslErrors()));
  std::unique_ptr<TlsSession> session(new TlsSession(ssl));
  SSL_set_fd(ssl, fd);
  SSL_set_accept_state(ssl);
  return session;
}

TlsSession::~TlsSession() { SSL_free(ssl_); }

ssize_t TlsSession::Failed(int rc, Want* want) {
  *want = Want::kNothing;
  const int e = SSL_get_error(ssl_, rc);
  if (e == SSL_ERROR_WANT_READ) {
    *want = Want::kReadable;
  } else if (e == SSL_ERROR_WANT_WRITE) {
    *want = Want::kWritable;
  } else if (e == SSL_ERROR_ZERO_RETURN) {
    return 0;
  } else if (e == SSL_ERROR_SYSCALL) {
    error_ = errno ? std::strerror(errno) : "the peer closed the connection";
    ERR_clear_error();
  } else {
    error_ = StrCat("TLS: ", OpenSslErrors());
    if (long v = SSL_get_verify_result(ssl_); v != X509_V_OK)
      error_ = StrCat("TLS: the peer's certificate was refused: ", X509_verify_cert_error_string(v));
    else if (error_.find("bad certificate") != std::string::npos ||
             error_.find("certificate required") != std::string::npos)
      error_ += " (the peer refused this side's certificate, or needs one: check the cert and key flags)";
  }
  return -1;
}

absl::StatusOr<bool> TlsSession::Handshake(Want* want) {
  if (handshake_done_) return true;
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    *want = Want::kNothing;
    return true;
  }
  if (Failed(rc, want) < 0 && *want != Want::kNothing) return false;
  return absl::UnavailableError(
      StrCat("TLS handshake: ", error_.empty() ? "the peer closed the connection (is it TLS?)" : error_));
}

absl::Status TlsSession::HandshakeUntil(std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    Want want = Want::kNothing;
    absl::StatusOr<bool> done = Handshake(&want);
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    if (!WaitForTls(SSL_get_fd(ssl_), want, deadline))
      return absl::DeadlineExceededError("TLS handshake: no answer in time");
  }
}

ssize_t TlsSession::Read(char* buffer, size_t size, Want* want) {
  ERR_clear_error();
  size_t got = 0;
  int rc = SSL_read_ex(ssl_, buffer, size, &got);
  if (rc == 1) return static_cast<ssize_t>(got);
  return Failed(rc, want);
}

ssize_t TlsSession::Write(const char* data, size_t size, Want* want) {
  if (size == 0) return 0;
  ERR_clear_error();
  size_t put = 0;
  int rc = SSL_write_ex(ssl_, data, size, &put);
  if (rc == 1) return static_cast<ssize_t>(put);
  ssize_t r = Failed(rc, want);
  return r == 0 ? -1 : r;  // a close seen while writing is an error for the writer
}

bool TlsSession::HasBuffered() const { return SSL_pending(ssl_) > 0; }

bool WaitForTls(int fd, TlsSession::Want want, std::chrono::steady_clock::time_point deadline) {
  if (want == TlsSession::Want::kNothing) return true;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, static_cast<short>(want == TlsSession::Want::kReadable ? POLLIN : POLLOUT), 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1'000'000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

}  // namespace ferry
