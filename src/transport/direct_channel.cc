#include "transport/direct_channel.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <cstring>

#include "common/common.h"
#include "transport/address.h"

namespace ferry::transport {

namespace asio = boost::asio;

namespace {
constexpr size_t kReadBytes = 64 * 1024;
constexpr auto kSpinFor = std::chrono::microseconds(100);

int PollTimeoutMs(std::optional<SteadyClock::time_point> deadline) {
  if (!deadline) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - SteadyClock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1'000'000));
}
}  // namespace

// The I/O thread's side of a watched channel: a duplicate of the socket registered with its reactor, used
// only to learn that bytes arrived (they are read by whoever takes the reader role).
class DirectChannel::Watcher {
 public:
  Watcher(const asio::any_io_executor& executor, int fd) : executor(executor), descriptor(executor, fd) {}
  asio::any_io_executor executor;
  asio::posix::stream_descriptor descriptor;
  bool armed = false;  // under the channel's mu_
};

absl::StatusOr<std::shared_ptr<DirectChannel>> DirectChannel::Connect(const std::string& socket_path,
                                                                      std::string_view client) {
  absl::StatusOr<FrameAddress> address = ParseFrameAddress(socket_path);
  if (!address.ok()) return address.status();
  // Frames between nodes under TLS go the I/O thread's way (FrameConnection), which speaks it.
  if (address->tcp && FrameTlsClient())
    return absl::FailedPreconditionError("a direct channel speaks no TLS: frames to other nodes go the I/O way");
  // Non-blocking: a replica whose backlog is full (or that is gone) fails the connect at once, and the
  // call goes the I/O thread's way instead of holding its caller.
  absl::StatusOr<UniqueFd> connected = ConnectFrameSocket(*address);
  if (!connected.ok()) return connected.status();
  UniqueFd fd = std::move(*connected);
  UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) return absl::InternalError(StrCat("eventfd: ", std::strerror(errno)));
  std::shared_ptr<DirectChannel> channel(new DirectChannel(std::move(fd), std::move(wake)));
  std::string hello;
  AppendHello(hello, 0, {kProtocolVersion, std::string(client), FrameToken()});
  if (!channel->WriteFrame(hello)) return absl::UnavailableError(StrCat("hello to ", socket_path, " failed"));
  return channel;
}

DirectChannel::DirectChannel(UniqueFd fd, UniqueFd wake_fd) : fd_(std::move(fd)), wake_fd_(std::move(wake_fd)) {}

DirectChannel::~DirectChannel() = default;

bool DirectChannel::WriteFrame(std::string_view frame) {
  write_mu_.Lock();
  if (broken_) {
    write_mu_.Unlock();
    return false;
  }
  pending_.append(frame);
  if (flushing_) {  // the thread writing takes this frame along
    write_mu_.Unlock();
    return true;
  }
  flushing_ = true;
  bool ok = true;
  while (ok && !pending_.empty()) {
    writing_.swap(pending_);
    write_mu_.Unlock();
    size_t done = 0;
    while (done < writing_.size()) {
      ssize_t n = ::send(fd_.get(), writing_.data() + done, writing_.size() - done, MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // The replica reads slower than we write (a large body): wait for room, or for the connection to
        // go (Fail shuts the socket down, which ends this poll).
        pollfd p{fd_.get(), POLLOUT, 0};
        if (::poll(&p, 1, -1) < 0 && errno != EINTR) break;
        if (p.revents & (POLLERR | POLLHUP)) break;
        continue;
      }
      break;
    }
    ok = done == writing_.size();
    writing_.clear();
    write_mu_.Lock();
  }
  flushing_ = false;
  if (!ok) {
    broken_ = true;
    pending_.clear();
  }
  write_mu_.Unlock();
  // Part of a frame may have gone: the stream is unusable. Shutting it down wakes a reader, which fails
  // the requests waiting.
  if (!ok) ::shutdown(fd_.get(), SHUT_RDWR);
  return ok;
}

absl::StatusOr<uint64_t> DirectChannel::Send(std::shared_ptr<StreamListener> listener, const RequestMessage& request) {
  if (closed()) return absl::UnavailableError("the channel is closed");
  const uint64_t id = streams_.Add(std::move(listener));
  std::string frame;
  AppendRequest(frame, id, request);
  if (WriteFrame(frame)) return id;
  // Not sent (a replica cannot act on part of a frame). The others waiting on this connection fail; this
  // one, unless that already told it, may go elsewhere.
  const bool mine = streams_.Remove(id);
  Fail(absl::UnavailableError("writing to the replica failed"));
  if (mine) return absl::UnavailableError("the replica's connection failed");
  return id;
}

void DirectChannel::Cancel(uint64_t stream_id) {
  if (closed()) return;
  std::string frame;
  AppendEmpty(frame, FrameKind::kCancel, stream_id);
  WriteFrame(frame);
}

void DirectChannel::Credit(uint64_t stream_id, uint32_t bytes) {
  if (closed() || bytes == 0) return;
  std::string frame;
  AppendCredit(frame, stream_id, bytes);
  WriteFrame(frame);
}

bool DirectChannel::closed() const {
  MutexLock lock(&mu_);
  return closed_;
}

void DirectChannel::SignalDoneLocked() {
  for (Waiter* w : waiters_)
    if ((*w->done)()) w->cv.Signal();
}

void DirectChannel::HandOffLocked(bool by_watcher) {
  if (reading_) return;
  for (Waiter* w : waiters_)
    if (!(*w->done)()) {
      w->cv.Signal();  // it finds the role free and reads
      return;
    }
  if (!by_watcher && watcher_wants_ && watcher_) {
    watcher_wants_ = false;
    asio::post(watcher_->executor, [self = shared_from_this()] { self->OnWatchReady(false); });
  }
}

bool DirectChannel::Pump(const std::function<bool()>& done, std::optional<SteadyClock::time_point> deadline) {
  Waiter me{&done, {}};
  bool listed = false;
  mu_.Lock();
  for (;;) {
    if (done() || closed_ || (deadline && SteadyClock::now() >= *deadline)) break;
    if (!reading_) {
      reading_ = true;
      mu_.Unlock();
      ReadOnce(true, deadline);
      mu_.Lock();
      reading_ = false;
      SignalDoneLocked();
      continue;  // still waiting: go on reading (a waiter that was handed the role may have taken it)
    }
    if (!listed) {
      waiters_.push_back(&me);
      listed = true;
    }
    if (deadline)
      me.cv.WaitUntil(&mu_, *deadline);
    else
      me.cv.Wait(&mu_);
  }
  if (listed) waiters_.remove(&me);
  HandOffLocked(false);
  const bool result = done();
  mu_.Unlock();
  return result;
}

void DirectChannel::PumpReady() {
  {
    MutexLock lock(&mu_);
    if (closed_ || reading_) return;
    reading_ = true;
  }
  ReadOnce(false, std::nullopt);
  MutexLock lock(&mu_);
  reading_ = false;
  SignalDoneLocked();
  HandOffLocked(false);
}

void DirectChannel::Wake() {
  {
    MutexLock lock(&mu_);
    for (Waiter* w : waiters_) w->cv.Signal();
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void DirectChannel::ReadOnce(bool wait, std::optional<SteadyClock::time_point> deadline) {
  if (wait && SpinForBytes(deadline)) wait = false;
  if (wait) {
    pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, PollTimeoutMs(deadline));
    if (n <= 0) return;  // the deadline (or a signal): the caller looks again
    if (fds[1].revents & POLLIN) {
      uint64_t count;
      [[maybe_unused]] ssize_t r = ::read(wake_fd_.get(), &count, sizeof(count));
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) return;
  }
  for (;;) {
    char* room = reader_.Prepare(kReadBytes);
    ssize_t n = ::recv(fd_.get(), room, kReadBytes, 0);
    if (n > 0) {
      reader_.Commit(static_cast<size_t>(n));
      if (static_cast<size_t>(n) < kReadBytes) break;  // most likely all there was
      continue;
    }
    reader_.Commit(0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    Fail(n == 0 ? absl::UnavailableError("the replica closed the connection")
                : absl::UnavailableError(StrCat("read: ", std::strerror(errno))));
    return;
  }
  FrameHeader header;
  std::string_view payload;
  for (;;) {
    absl::StatusOr<bool> next = reader_.Next(&header, &payload);
    if (!next.ok()) {
      Fail(next.status());
      return;
    }
    if (!*next) return;
    if (absl::Status s = streams_.Deliver(header, payload); !s.ok()) {
      Fail(s);
      return;
    }
  }
}

bool DirectChannel::SpinForBytes(std::optional<SteadyClock::time_point> deadline) {
  // A lone call's answer usually comes within a few tens of microseconds, less than a sleeping thread
  // takes to wake on this machine: look for it a while first, yielding the core to whoever has work (the
  // callee, when it shares this core). Only the direct way spins, and it is taken only while few calls
  // are in flight, so the cores it keeps busy are otherwise idle.
  auto until = SteadyClock::now() + kSpinFor;
  if (deadline && *deadline < until) until = *deadline;
  pollfd p{fd_.get(), POLLIN, 0};
  do {
    if (::poll(&p, 1, 0) > 0) return true;
    ::sched_yield();
  } while (SteadyClock::now() < until);
  return false;
}

void DirectChannel::Fail(const absl::Status& why) {
  {
    MutexLock lock(&mu_);
    closed_ = true;
  }
  ::shutdown(fd_.get(), SHUT_RDWR);  // also ends a watcher's wait and a writer's
  const std::string message(Message(why));
  for (auto& listener : streams_.TakeAll()) listener->OnChannelFailed(true, message);
  MutexLock lock(&mu_);
  for (Waiter* w : waiters_) w->cv.Signal();
}

void DirectChannel::Close(std::string_view why) {
  if (closed()) return;
  Fail(absl::UnavailableError(std::string(why)));
  Wake();
}

void DirectChannel::StopWatching() {
  std::shared_ptr<Watcher> watcher;
  MutexLock lock(&mu_);
  watcher = std::move(watcher_);
  watched_.clear();
}

void DirectChannel::Watch(uint64_t stream_id, const asio::any_io_executor& executor) {
  bool readable = false;
  {
    MutexLock lock(&mu_);
    if (closed_) return;
    watched_.insert(stream_id);
    if (!watcher_) {
      int copy = ::dup(fd_.get());
      if (copy < 0) {
        FERRY_LOG(kError, "handle", "dup: ", std::strerror(errno));
        return;
      }
      watcher_ = std::make_shared<Watcher>(executor, copy);
    }
    // Armed from this thread (every use of the descriptor is under mu_): the I/O thread wakes only when
    // the answer comes, not to be told to wait for it.
    readable = ArmLocked();
  }
  if (readable) asio::post(executor, [self = shared_from_this()] { self->OnWatchReady(false); });
}

bool DirectChannel::ArmLocked() {
  if (!watcher_->armed) {
    watcher_->armed = true;
    watcher_->descriptor.async_wait(
        asio::posix::descriptor_base::wait_read,
        [self = shared_from_this()](const boost::system::error_code&) { self->OnWatchReady(true); });
  }
  // Bytes that came before the wait was queued raised no edge the reactor saw: look once.
  pollfd p{fd_.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

bool DirectChannel::WatchedPendingLocked() {
  for (auto it = watched_.begin(); it != watched_.end();) it = streams_.Has(*it) ? std::next(it) : watched_.erase(it);
  return !closed_ && !watched_.empty();
}

void DirectChannel::OnWatchReady(bool from_wait) {
  std::shared_ptr<Watcher> watcher;
  {
    MutexLock lock(&mu_);
    watcher = watcher_;
    if (!watcher) return;
    if (from_wait) watcher->armed = false;
    if (!WatchedPendingLocked()) return;
    if (reading_) {
      watcher_wants_ = true;  // the reader hands the role back to us when it lets go
      return;
    }
    reading_ = true;
  }
  ReadOnce(false, std::nullopt);
  bool readable = false;
  {
    MutexLock lock(&mu_);
    reading_ = false;
    SignalDoneLocked();
    HandOffLocked(true);
    if (!WatchedPendingLocked() || !watcher_) return;
    readable = ArmLocked();
  }
  if (readable) asio::post(watcher->executor, [self = shared_from_this()] { self->OnWatchReady(false); });
}

}  // namespace ferry::transport
