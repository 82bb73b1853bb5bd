// A frame stream over a stream socket (a Unix socket on one node, TCP between nodes: see address.h, and
// TLS over TCP when the cluster's frames are), driven by one io_context thread. Frames appended to the
// output are written in as few syscalls as possible: while one write is in flight, later frames collect
// and go out together. Not thread-safe: every call on the thread that runs the socket's executor.
#pragma once

#include <absl/status/status.h>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "transport/frame.h"

namespace ferry::transport {

class FrameConnection : public std::enable_shared_from_this<FrameConnection> {
 public:
  using Socket = boost::asio::generic::stream_protocol::socket;

  // Receives what arrives. Called on the connection's thread; may append frames and Flush().
  class Handler {
   public:
    virtual ~Handler() = default;
    virtual void OnFrame(const FrameHeader& header, std::string_view payload) = 0;
    // The connection is gone (peer closed, I/O error, malformed frame, or Close()). Called once.
    virtual void OnClosed(const absl::Status& why) = 0;
  };

  // A connection over an already connected socket.
  FrameConnection(Socket socket, Handler* handler);
  // A connection that will connect to `path` (a frame address: a Unix socket path or tcp://IP:PORT);
  // frames appended before it connects wait and go out after.
  FrameConnection(const boost::asio::any_io_executor& executor, std::string path, Handler* handler);
  ~FrameConnection();

  // Starts reading (and connecting, for the second constructor).
  void Start();
  // The buffer to append whole frames to (see frame.h's Append* functions); then call Flush().
  std::string& output() { return pending_; }
  void Flush();
  // Closes the socket; OnClosed runs with `why` unless it already ran.
  void Close(const absl::Status& why);
  // Forgets the handler (its owner is going away) and closes without calling it.
  void Detach();
  bool closed() const { return closed_; }
  // True once the socket was connected (always, for the accepting side).
  bool ever_connected() const { return connected_; }
  size_t bytes_pending() const { return pending_.size() + writing_.size(); }

 private:
  struct TlsStream;  // connection.cc's: the socket under TLS
  void DoRead();
  void DoWrite();
  void Fail(const absl::Status& why);
  // After the connect: TLS's handshake first when frames to other nodes are TLS, then reading and writing.
  void OnConnected(bool tcp, const std::string& host);
  void Ready();
  Socket& socket();  // the socket, under TLS or not
  template <typename Action>
  void WithStream(Action&& action);  // runs action(stream) on the stream in use

  Socket socket_;
  std::unique_ptr<TlsStream> tls_;  // set: TLS over socket_ (moved into it)
  std::string path_;                // set when this side connects
  Handler* handler_;
  FrameReader reader_;
  std::string pending_;
  std::string writing_;
  bool connected_ = false;
  bool write_in_flight_ = false;
  bool closed_ = false;
};

}  // namespace ferry::transport
