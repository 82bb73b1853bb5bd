#include "transport/connection.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include "common/common.h"
#include "transport/address.h"

namespace ferry::transport {

namespace asio = boost::asio;

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
  const bool tcp = address->tcp;
  socket_.async_connect(endpoint, [self = shared_from_this(), tcp](const boost::system::error_code& ec) {
    if (self->closed_) return;
    if (ec) {
      self->Fail(absl::UnavailableError(ferry::StrCat("connect ", self->path_, ": ", ec.message())));
      return;
    }
    if (tcp) SetNoDelay(self->socket_.native_handle());
    self->connected_ = true;
    self->DoRead();
    self->Flush();
  });
}

void FrameConnection::Flush() {
  if (!connected_ || closed_ || write_in_flight_ || pending_.empty()) return;
  DoWrite();
}

void FrameConnection::DoWrite() {
  writing_.swap(pending_);
  pending_.clear();
  write_in_flight_ = true;
  asio::async_write(socket_, asio::buffer(writing_),
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
}

void FrameConnection::DoRead() {
  static constexpr size_t kReadChunk = 64 * 1024;
  char* at = reader_.Prepare(kReadChunk);
  socket_.async_read_some(
      asio::buffer(at, kReadChunk), [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
        if (self->closed_) return;
        if (ec) {
          self->Fail(ec == asio::error::eof ? absl::UnavailableError("peer closed the connection")
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
}

void FrameConnection::Fail(const absl::Status& why) { Close(why); }

void FrameConnection::Close(const absl::Status& why) {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
  Handler* handler = handler_;
  handler_ = nullptr;
  if (handler) handler->OnClosed(why);
}

void FrameConnection::Detach() {
  handler_ = nullptr;
  Close(absl::CancelledError("detached"));
}

}  // namespace ferry::transport
