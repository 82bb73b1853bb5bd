#include "replica/internal/frame_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "common/common.h"
#include "common/handoff.h"
#include "transport/address.h"

namespace ferry::replica {

namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
constexpr uint64_t kTcpListenId = 2;
constexpr uint64_t kFirstConnectionId = 3;
constexpr auto kStuckWriteLimit = std::chrono::seconds(30);

}  // namespace

void ClientConnection::Send(std::string_view frame) {
  write_mu_.Lock();
  if (broken_ || (pending_.append(frame), flushing_)) {
    write_mu_.Unlock();
    return;
  }
  flushing_ = true;
  // writing_ belongs to the flushing thread (flushing_, set and cleared under the lock, hands it on); it
  // and pending_ swap buffers, so their capacity is reused and a flush allocates nothing.
  while (!pending_.empty() && !broken_) {
    writing_.swap(pending_);
    write_mu_.Unlock();
    bool ok = WriteAll(writing_);
    writing_.clear();
    write_mu_.Lock();
    if (!ok) broken_ = true;
  }
  flushing_ = false;
  write_mu_.Unlock();
}

void ClientConnection::Track(uint64_t stream_id, std::shared_ptr<TrackedStream> stream) {
  MutexLock lock(&streams_mu_);
  streams_[stream_id] = std::move(stream);
}

void ClientConnection::Untrack(uint64_t stream_id) {
  MutexLock lock(&streams_mu_);
  streams_.erase(stream_id);
}

void ClientConnection::Cancel(uint64_t stream_id) {
  if (std::shared_ptr<TrackedStream> stream = Find(stream_id)) stream->Cancel();
}

void ClientConnection::AddCredit(uint64_t stream_id, uint32_t bytes) {
  if (std::shared_ptr<TrackedStream> stream = Find(stream_id)) stream->AddCredit(bytes);  // else: it ended meanwhile
}

std::shared_ptr<TrackedStream> ClientConnection::Find(uint64_t stream_id) {
  MutexLock lock(&streams_mu_);
  auto it = streams_.find(stream_id);
  return it == streams_.end() ? nullptr : it->second;
}

void ClientConnection::Abandon() {
  {
    MutexLock lock(&write_mu_);
    broken_ = true;
  }
  std::unordered_map<uint64_t, std::shared_ptr<TrackedStream>> streams;
  {
    MutexLock lock(&streams_mu_);
    streams.swap(streams_);
  }
  for (auto& [id, stream] : streams) stream->Cancel();
  ::shutdown(fd_.get(), SHUT_RDWR);
}

ssize_t ClientConnection::TlsRead(char* at, size_t size, short* wait_for) {
  MutexLock lock(&tls_mu_);
  TlsSession::Want want = TlsSession::Want::kNothing;
  if (!tls_->handshake_done()) {
    absl::StatusOr<bool> done = tls_->Handshake(&want);
    if (!done.ok()) {
      FERRY_LOG(kWarning, "replica", "a client's TLS handshake failed: ", Message(done.status()));
      errno = EPROTO;
      return -1;
    }
    if (!*done) {
      *wait_for = want == TlsSession::Want::kWritable ? POLLOUT : POLLIN;
      errno = EAGAIN;
      return -1;
    }
  }
  ssize_t n = tls_->Read(at, size, &want);
  if (n < 0) {
    *wait_for = want == TlsSession::Want::kWritable ? POLLOUT : POLLIN;
    errno = want == TlsSession::Want::kNothing ? EPROTO : EAGAIN;
  }
  return n;
}

ssize_t ClientConnection::TlsWrite(std::string_view data, short* wait_for) {
  MutexLock lock(&tls_mu_);
  TlsSession::Want want = TlsSession::Want::kNothing;
  ssize_t n = tls_->Write(data.data(), data.size(), &want);
  if (n < 0) {
    *wait_for = want == TlsSession::Want::kReadable ? POLLIN : POLLOUT;
    errno = want == TlsSession::Want::kNothing ? EPIPE : EAGAIN;
  }
  return n;
}

bool ClientConnection::ReadAvailable(std::string* why) {
  static constexpr size_t kChunk = 64 * 1024;
  for (;;) {
    char* at = reader_.Prepare(kChunk);
    short wait_for = POLLIN;
    ssize_t n = tls_ ? TlsRead(at, kChunk, &wait_for) : ::read(fd_.get(), at, kChunk);
    if (n > 0) {
      reader_.Commit(static_cast<size_t>(n));
      // In the clear, a short read emptied the socket; TLS hands over a record at a time: read on.
      if (!tls_ && static_cast<size_t>(n) < kChunk) return true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (wait_for == POLLIN) return true;  // all read: the next read event brings more
      // TLS must write first (its handshake's answer) and the socket is full: wait for room a little.
      pollfd p{fd_.get(), POLLOUT, 0};
      if (::poll(&p, 1, 1000) <= 0) {
        *why = "the client does not read its TLS handshake";
        return false;
      }
      continue;
    }
    *why = n == 0 ? "peer closed the connection" : std::string("read: ") + std::strerror(errno);
    return false;
  }
}

bool ClientConnection::WriteAll(std::string_view data) {
  auto stuck_since = SteadyClock::now();
  while (!data.empty()) {
    short wait_for = POLLOUT;
    ssize_t n = tls_ ? TlsWrite(data, &wait_for) : ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      stuck_since = SteadyClock::now();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (SteadyClock::now() - stuck_since > kStuckWriteLimit) return false;  // the client stopped reading
      pollfd p{fd_.get(), wait_for, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    return false;
  }
  return true;
}

FrameServer::FrameServer() : next_id_(kFirstConnectionId) {}

// The descriptors close with the UniqueFds; the owner stopped every polling thread first.
FrameServer::~FrameServer() = default;

absl::Status FrameServer::Listen(const std::string& path) {
  epoll_fd_.reset(epoll_create1(EPOLL_CLOEXEC));
  wake_fd_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE));
  listen_fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!epoll_fd_ || !wake_fd_ || !listen_fd_)
    return absl::InternalError(StrCat("replica set-up: ", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return absl::InvalidArgumentError(StrCat("socket path too long: ", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ::unlink(path.c_str());
  if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_.get(), 128) != 0)
    return absl::UnavailableError(StrCat("listen on ", path, ": ", std::strerror(errno)));
  socket_path_ = path;
  Register(listen_fd_.get(), kListenId, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_ADD);
  Register(wake_fd_.get(), kWakeId, EPOLLIN, EPOLL_CTL_ADD);
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> FrameServer::ListenTcp(const std::string& host, uint16_t port) {
  if (!epoll_fd_) return absl::FailedPreconditionError("ListenTcp comes after Listen");
  absl::StatusOr<transport::NumericAddress> address = transport::ToNumericAddress(host, port);
  if (!address.ok()) return address.status();
  tcp_listen_fd_.reset(::socket(address->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!tcp_listen_fd_) return absl::InternalError(StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  ::setsockopt(tcp_listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(tcp_listen_fd_.get(), address->sockaddr_ptr(), address->length) != 0 ||
      ::listen(tcp_listen_fd_.get(), 128) != 0)
    return absl::UnavailableError(StrCat("listen on ", host, ":", port, ": ", std::strerror(errno)));
  sockaddr_storage bound_at{};
  socklen_t len = sizeof(bound_at);
  ::getsockname(tcp_listen_fd_.get(), reinterpret_cast<sockaddr*>(&bound_at), &len);
  const uint16_t bound = ntohs(address->family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound_at)->sin_port
                                                          : reinterpret_cast<sockaddr_in6*>(&bound_at)->sin6_port);
  Register(tcp_listen_fd_.get(), kTcpListenId, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_ADD);
  return bound;
}

void FrameServer::Poll(Handler& handler) {
  epoll_event ev;
  int n = epoll_wait(epoll_fd_.get(), &ev, 1, -1);
  if (n <= 0) return;
  if (ev.data.u64 == kWakeId) {
    uint64_t value;
    ssize_t r = ::read(wake_fd_.get(), &value, sizeof(value));  // semaphore: takes one token
    (void)r;
  } else if (ev.data.u64 == kListenId) {
    AcceptAll(listen_fd_.get(), kListenId);
  } else if (ev.data.u64 == kTcpListenId) {
    AcceptAll(tcp_listen_fd_.get(), kTcpListenId);
  } else if (std::shared_ptr<ClientConnection> c = Find(ev.data.u64)) {
    HandOff::Acquire(c.get());  // the reader is this thread's now (see OnReadable's re-arm)
    OnReadable(c, handler);
  }
}

void FrameServer::Wake(uint64_t n) {
  ssize_t r = ::write(wake_fd_.get(), &n, sizeof(n));
  (void)r;
}

void FrameServer::StopAccepting() {
  // The listener stays open (a thread may be in accept4 on it right now) until the server is destroyed;
  // unlinked, it gets no new client, and a thread that re-arms it finds it gone.
  accepting_.store(false);
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, listen_fd_.get(), nullptr);
  if (tcp_listen_fd_) epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, tcp_listen_fd_.get(), nullptr);
  ::unlink(socket_path_.c_str());
}

void FrameServer::CloseAll() {
  MutexLock lock(&connections_mu_);
  connections_.clear();
}

void FrameServer::Register(int fd, uint64_t id, uint32_t events, int op) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  epoll_ctl(epoll_fd_.get(), op, fd, &ev);
}

void FrameServer::AcceptAll(int listen_fd, uint64_t listen_id) {
  for (;;) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break;
    std::unique_ptr<TlsSession> tls;
    if (listen_id == kTcpListenId) {
      transport::SetNoDelay(fd);
      if (const auto& context = transport::FrameTlsServer()) {
        absl::StatusOr<std::unique_ptr<TlsSession>> session = TlsSession::Server(*context, fd);
        if (!session.ok()) {
          FERRY_LOG(kWarning, "replica", "cannot serve a TLS client: ", Message(session.status()));
          ::close(fd);
          continue;
        }
        tls = std::move(*session);
      }
    }
    auto c = std::make_shared<ClientConnection>(fd, next_id_.fetch_add(1), std::move(tls));
    {
      MutexLock lock(&connections_mu_);
      connections_[c->id()] = c;
    }
    Register(fd, c->id(), EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, EPOLL_CTL_ADD);
  }
  if (accepting_.load()) Register(listen_fd, listen_id, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_MOD);
}

std::shared_ptr<ClientConnection> FrameServer::Find(uint64_t id) {
  MutexLock lock(&connections_mu_);
  auto it = connections_.find(id);
  return it == connections_.end() ? nullptr : it->second;
}

void FrameServer::Drop(const std::shared_ptr<ClientConnection>& c, std::string_view why) {
  FERRY_LOG(kDebug, "replica", "client connection closed: ", why);
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, c->fd(), nullptr);
  c->Abandon();
  MutexLock lock(&connections_mu_);
  connections_.erase(c->id());
}

// This thread holds the connection's one-shot read event: read what is there, hand over its frames,
// re-arm, then let the handler act on them.
void FrameServer::OnReadable(const std::shared_ptr<ClientConnection>& c, Handler& handler) {
  std::string gone;
  const bool eof = !c->ReadAvailable(&gone);
  transport::FrameHeader header;
  std::string_view payload;
  absl::Status failed;
  for (;;) {
    absl::StatusOr<bool> got = c->reader().Next(&header, &payload);
    if (!got.ok()) {
      failed = got.status();
      break;
    }
    if (!*got) break;
    failed = handler.OnFrame(c, header, payload);
    if (!failed.ok()) break;
  }
  if (!failed.ok() || eof) {
    Drop(c, failed.ok() ? gone : std::string(Message(failed)));
  } else {
    // Re-armed, the connection's next read event may go to another thread: this one is done with the reader.
    HandOff::Release(c.get());
    Register(c->fd(), c->id(), EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, EPOLL_CTL_MOD);
  }
  // Frames handled before an error or the end still run (a request whose client left is cancelled).
  handler.OnFramesHandled();
}

}  // namespace ferry::replica
