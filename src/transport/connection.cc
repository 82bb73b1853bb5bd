#include "transport/connection.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>

#include "common/common.h"
#include "transport/address.h"

namespace ferry::transport {

namespace asio = boost::asio;

namespace {
// The frame TLS client context, for asio (which frees its own reference).
asio::ssl::context& AsioTlsClient() {
  static asio::ssl::context context = [] {
    SSL_CTX* native = FrameTlsClient()->native();
    SSL_CTX_up_ref(native);
    return asio::ssl::context(native);
  }();
  return context;
}
}  // namespace

struct FrameConnection::TlsStream {
  TlsStream(Socket socket, asio::ssl::context& context) : stream(std::move(socket), context) {}
  asio::ssl::stream<Socket> stream;
};

FrameConnection::Socket& FrameConnection::socket() { return tls_ ? tls_->stream.next_layer() : socket_; }

template <typename Action>
void FrameConnection::WithStream(Action&& action) {
  if (tls_)
    action(tls_->stream);
  else
    action(socket_);
}

FrameConnection::FrameConnection(Socket socket, Handler* handler)
    : socket_(std::move(socket)), handler_(handler), connected_(true) {}

FrameConnection::FrameConnection(const asio::any_io_executor& executor, std::string path, Handler* handler)
    : socket_(executor), path_(std::move(path)), handler_(handler) {}

FrameConnection::~FrameConnection() = default;

void FrameConnection::Start() {
  if (connected_) {
    DoRead();
    return;
  }
  absl::StatusOr<FrameAddress> address = ParseFrameAddress(path_);
  asio::generic::stream_protocol::endpoint endpoint;
  boost::system::error_code bad;
  if (address.ok() && address->tcp) {
    asio::ip::address ip = asio::ip::make_address(address->host, bad);
    endpoint = asio::ip::tcp::endpoint(ip, address->port);
  } else if (address.ok()) {
    endpoint = asio::local::stream_protocol::endpoint(address->path);
  }
  if (!address.ok() || bad) {
    asio::post(socket_.get_executor(), [self = shared_from_this(),
                                        why = address.ok() ? bad.message() : std::string(Message(address.status()))] {
      self->Fail(absl::UnavailableError(ferry::StrCat("connect ", self->path_, ": ", why)));
    });
    return;
  }
  socket_.async_connect(endpoint, [self = shared_from_this(), tcp = address->tcp,
                                   host = address->host](const boost::system::error_code& ec) {
    if (self->closed_) return;
    if (ec) {
      self->Fail(absl::UnavailableError(ferry::StrCat("connect ", self->path_, ": ", ec.message())));
      return;
    }
    self->OnConnected(tcp, host);
  });
}

void FrameConnection::OnConnected(bool tcp, const std::string& host) {
  if (tcp) SetNoDelay(socket_.native_handle());
  if (!tcp || !FrameTlsClient()) {
    Ready();
    return;
  }
  tls_ = std::make_unique<TlsStream>(std::move(socket_), AsioTlsClient());
  // The replica's certificate must name the address connected to.
  if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tls_->stream.native_handle()), host.c_str()) != 1) {
    Fail(absl::UnavailableError(ferry::StrCat("connect ", path_, ": TLS cannot check the address ", host)));
    return;
  }
  tls_->stream.async_handshake(
      asio::ssl::stream_base::client, [self = shared_from_this()](const boost::system::error_code& ec) {
        if (self->closed_) return;
        if (ec) {
          long verified = SSL_get_verify_result(self->tls_->stream.native_handle());
          self->Fail(absl::UnavailableError(ferry::StrCat(
              "TLS handshake with ", self->path_, ": ",
              verified != X509_V_OK
                  ? ferry::StrCat("its certificate was refused (", X509_verify_cert_error_string(verified), ")")
                  : ec.message())));
          return;
        }
        self->Ready();
      });
}

void FrameConnection::Ready() {
  connected_ = true;
  DoRead();
  Flush();
}

void FrameConnection::Flush() {
  if (!connected_ || closed_ || write_in_flight_ || pending_.empty()) return;
  DoWrite();
}

void FrameConnection::DoWrite() {
  writing_.swap(pending_);
  pending_.clear();
  write_in_flight_ = true;
  WithStream([&](auto& stream) {
    asio::async_write(stream, asio::buffer(writing_),
                      [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                        self->write_in_flight_ = false;
                        self->writing_.clear();
                        if (self->closed_) return;
                        if (ec) {
                          self->Fail(absl::UnavailableError(ferry::StrCat("write: ", ec.message())));
                          return;
                        }
                        if (!self->pending_.empty()) self->DoWrite();
                      });
  });
}

void FrameConnection::DoRead() {
  static constexpr size_t kReadChunk = 64 * 1024;
  char* at = reader_.Prepare(kReadChunk);
  WithStream([&](auto& stream) {
    stream.async_read_some(asio::buffer(at, kReadChunk),
                           [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
                             if (self->closed_) return;
                             if (ec) {
                               self->Fail(ec == asio::error::eof || ec == asio::ssl::error::stream_truncated
                                              ? absl::UnavailableError("peer closed the connection")
                                              : absl::UnavailableError(ferry::StrCat("read: ", ec.message())));
                               return;
                             }
                             self->reader_.Commit(n);
                             FrameHeader header;
                             std::string_view payload;
                             while (!self->closed_) {
                               absl::StatusOr<bool> got = self->reader_.Next(&header, &payload);
                               if (!got.ok()) {
                                 self->Fail(got.status());
                                 return;
                               }
                               if (!*got) break;
                               if (self->handler_) self->handler_->OnFrame(header, payload);
                             }
                             if (!self->closed_) {
                               self->Flush();
                               self->DoRead();
                             }
                           });
  });
}

void FrameConnection::Fail(const absl::Status& why) { Close(why); }

void FrameConnection::Close(const absl::Status& why) {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  socket().shutdown(Socket::shutdown_both, ignored);
  socket().close(ignored);
  Handler* handler = handler_;
  handler_ = nullptr;
  if (handler) handler->OnClosed(why);
}

void FrameConnection::Detach() {
  handler_ = nullptr;
  Close(absl::CancelledError("detached"));
}

}  // namespace ferry::transport
