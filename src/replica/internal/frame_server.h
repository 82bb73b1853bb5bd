// The replica's frame socket: a Unix socket whose clients (the proxy's channels, the node agent's control
// channel) speak the frame protocol (transport/frame.h). Built for the shortest path from a request frame
// to its answer: the threads that poll share one epoll set; the thread that gets a connection's read event
// reads what is there, hands the frames to its handler in order, and re-arms the connection for the next
// reader (so one connection's frames are never handled by two threads at once). Answers are written by
// group commit: a writer appends its frame; whoever finds no flush in progress writes everything pending in
// one syscall.
// Thread-safe: Poll runs on many threads at once; Wake and StopAccepting from any thread.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/mutex.h"
#include "common/tls.h"
#include "common/unique_fd.h"
#include "transport/frame.h"

namespace ferry::replica {

// A request in flight on a connection, as the connection's frames reach it: a cancel frame (or the
// client's going away) cancels it, a credit frame lets its stream send more.
class TrackedStream {
 public:
  virtual ~TrackedStream() = default;
  virtual void Cancel() = 0;
  virtual void AddCredit(uint32_t bytes) = 0;
};

// One client connection. Reading is done by one thread at a time (the epoll registration is one-shot);
// writing is group commit under write_mu_.
class ClientConnection {
 public:
  // `tls`: the connection is TLS (a TCP client under the cluster's TLS); its handshake happens as it reads.
  ClientConnection(int fd, uint64_t id, std::unique_ptr<TlsSession> tls = nullptr)
      : fd_(fd), id_(id), tls_(std::move(tls)) {}
  int fd() const { return fd_.get(); }
  uint64_t id() const { return id_; }
  transport::FrameReader& reader() { return reader_; }  // only the thread holding the read event
  // Reads what has arrived into reader() (only the thread holding the read event). False when the client
  // is gone (closed, an error, a TLS handshake that failed: *why says which).
  bool ReadAvailable(std::string* why);
  // Its hello carried the cluster's token (the thread holding the read event only).
  bool admitted() const { return admitted_; }
  void Admit() { admitted_ = true; }

  // Appends a whole frame and makes sure it is written, by this thread or the one already writing. Frames
  // to a client that is gone are dropped.
  void Send(std::string_view frame);

  // The requests in flight on this connection, by stream id: a cancel frame cancels one, the client's
  // going away cancels them all; a credit frame reaches one's stream.
  void Track(uint64_t stream_id, std::shared_ptr<TrackedStream> stream);
  void Untrack(uint64_t stream_id);
  void Cancel(uint64_t stream_id);
  void AddCredit(uint64_t stream_id, uint32_t bytes);
  // The request in flight on `stream_id`, or null (it ended meanwhile).
  std::shared_ptr<TrackedStream> Find(uint64_t stream_id);
  // The client is gone: every request it sent is cancelled, and answers to it are dropped.
  void Abandon();

 private:
  bool WriteAll(std::string_view data);

  // One TLS record's read or write; without TLS, recv/send. -1 with errno EAGAIN when it must wait for
  // *wait_for (POLLIN or POLLOUT).
  ssize_t TlsRead(char* at, size_t size, short* wait_for);
  ssize_t TlsWrite(std::string_view data, short* wait_for);

  const UniqueFd fd_;
  const uint64_t id_;
  // The reading thread and a writing thread may use it at once: each call under tls_mu_ (none blocks).
  const std::unique_ptr<TlsSession> tls_;
  Mutex tls_mu_;
  transport::FrameReader reader_;  // the thread holding the read event only
  bool admitted_ = false;          // likewise
  Mutex write_mu_;
  std::string pending_ ABSL_GUARDED_BY(write_mu_);
  bool flushing_ ABSL_GUARDED_BY(write_mu_) = false;  // a thread is writing; others only append
  std::string writing_;                               // the flushing thread's, outside the lock (see Send)
  bool broken_ ABSL_GUARDED_BY(write_mu_) = false;
  Mutex streams_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<TrackedStream>> streams_ ABSL_GUARDED_BY(streams_mu_);
};

class FrameServer {
 public:
  // What a polling thread does with what it reads. One per thread: it may keep state across a read's frames.
  class Handler {
   public:
    virtual ~Handler() = default;
    // One frame of `connection`, in its order, on the thread that read it. An error closes the connection.
    // `payload` is valid during the call only.
    virtual absl::Status OnFrame(const std::shared_ptr<ClientConnection>& connection,
                                 const transport::FrameHeader& header, std::string_view payload) = 0;
    // After a read's frames were handled and the connection re-armed (another thread may read it now).
    virtual void OnFramesHandled() = 0;
  };

  FrameServer();
  ~FrameServer();

  // Binds and listens on `path` (replacing a stale socket file).
  absl::Status Listen(const std::string& path);
  // Also listens on TCP at `host` (a numeric IP) and `port` (0: any free port), after Listen: for clients
  // on other nodes (cluster mode). Returns the port bound.
  absl::StatusOr<uint16_t> ListenTcp(const std::string& host, uint16_t port);
  // Waits for one event and handles it: accepts new clients, or reads one connection's frames into
  // `handler`; returns after that, or after a Wake.
  void Poll(Handler& handler);
  // Makes `n` threads waiting in Poll return (each wake-up returns one thread).
  void Wake(uint64_t n);
  // No new clients: the socket file is removed; open connections stay.
  void StopAccepting();
  // Drops every connection. Only once no thread polls.
  void CloseAll();

 private:
  void Register(int fd, uint64_t id, uint32_t events, int op);
  void AcceptAll(int listen_fd, uint64_t listen_id);
  std::shared_ptr<ClientConnection> Find(uint64_t id);
  void Drop(const std::shared_ptr<ClientConnection>& c, std::string_view why);
  void OnReadable(const std::shared_ptr<ClientConnection>& c, Handler& handler);

  // Set in Listen, before any thread polls; read-only after.
  UniqueFd epoll_fd_;
  UniqueFd listen_fd_;
  UniqueFd tcp_listen_fd_;  // cluster mode only
  UniqueFd wake_fd_;
  std::string socket_path_;
  std::atomic<bool> accepting_{true};
  std::atomic<uint64_t> next_id_;
  Mutex connections_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<ClientConnection>> connections_ ABSL_GUARDED_BY(connections_mu_);
};

}  // namespace ferry::replica
