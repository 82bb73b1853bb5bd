// A client's frame connection to one replica that is read by the threads waiting for its answers, not by
// an I/O thread (leader/follower). A caller that blocks on a call writes the request itself (group commit:
// whoever finds no write in progress writes every pending frame in one syscall) and, when no other thread
// is reading, reads the answer itself: a lone call costs two thread wake-ups (the callee's, then the
// caller's) instead of four (caller, I/O thread, callee, I/O thread, caller); on a machine where a wake-up
// costs 10-15 µs that is most of a hop. Under load one waiting thread reads (the leader); it hands each
// other waiter its answer and wakes only that waiter, and when its own answer came it hands the reading to
// one that still waits. The replica sees one connection, so it reads its requests in batches.
//
// Requests whose callers will not wait (a callback wants the answer) are Watch()ed: an I/O thread then
// reads the channel whenever no waiting thread does.
// Thread-safe.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>

#include "common/common.h"
#include "common/mutex.h"
#include "common/unique_fd.h"
#include "transport/frame.h"
#include "transport/replica_channel.h"

namespace ferry::transport {

class DirectChannel : public std::enable_shared_from_this<DirectChannel> {
 public:
  // Connects to `socket_path` (a replica's frame socket) and says hello as `client` (the answer is read
  // with the first answers).
  static absl::StatusOr<std::shared_ptr<DirectChannel>> Connect(const std::string& socket_path,
                                                                std::string_view client);
  ~DirectChannel();

  // Sends a request; `listener` hears back on whichever thread reads the channel. An error means the
  // request was not sent (the channel is closed or the replica is gone): it is safe to send it elsewhere.
  absl::StatusOr<uint64_t> Send(std::shared_ptr<StreamListener> listener, const RequestMessage& request);
  void Cancel(uint64_t stream_id);
  void Credit(uint64_t stream_id, uint32_t bytes);

  // Waits until `done()` holds or `deadline` passes, reading and delivering frames while no other thread
  // does; returns done(). `done` is called with the channel's lock held (also by other threads): it must
  // only read atomics.
  bool Pump(const std::function<bool()>& done, std::optional<SteadyClock::time_point> deadline);
  // Delivers what has arrived without waiting for more (nothing when another thread is reading).
  void PumpReady();
  // Makes threads in Pump check their done() again (a request ended from elsewhere: a cancel).
  void Wake();
  // From now on `stream_id`'s frames are also read on `executor`'s thread whenever no thread is pumping,
  // until the request ends.
  void Watch(uint64_t stream_id, const boost::asio::any_io_executor& executor);

  // Closes the connection: every request still waiting hears OnChannelFailed, later sends fail.
  void Close(std::string_view why);
  // Lets go of the watcher's descriptor: before the io_context it was watched on goes away.
  void StopWatching();
  bool closed() const;
  // Requests sent and not yet answered.
  size_t in_flight() const { return streams_.size(); }

 private:
  class Watcher;
  // A thread in Pump that another thread's reading keeps waiting.
  struct Waiter {
    const std::function<bool()>* done;
    CondVar cv;
  };
  DirectChannel(UniqueFd fd, UniqueFd wake_fd);
  // After a read: wakes the waiters whose requests have news.
  void SignalDoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The reader let go: the first waiter still waiting reads next; with none, the watcher (if it asked).
  void HandOffLocked(bool by_watcher) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With the role: waits for bytes (until `deadline`, or not at all when `wait` is false, or until a
  // Wake), then reads and delivers every whole frame.
  void ReadOnce(bool wait, std::optional<SteadyClock::time_point> deadline);
  // Before sleeping: polls for bytes a short while, yielding the core; true when some came.
  bool SpinForBytes(std::optional<SteadyClock::time_point> deadline);
  // Fails every request still waiting (the connection is gone); from any thread, holding no call's lock.
  void Fail(const absl::Status& why);
  // Writes a frame by group commit. False when the connection broke (it is shut down; a reader fails the
  // requests).
  bool WriteFrame(std::string_view frame);
  void OnWatchReady(bool from_wait);  // the watcher's thread
  // Makes sure the watcher waits for bytes; true when some are there already (read them now).
  bool ArmLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a watched request is still waiting (forgets those that ended).
  bool WatchedPendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  UniqueFd fd_;
  UniqueFd wake_fd_;  // an eventfd that breaks a reader's poll
  StreamTable streams_;
  FrameReader reader_;  // the reader role's
  mutable Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a thread holds the reader role
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool watcher_wants_ ABSL_GUARDED_BY(mu_) = false;  // the watcher found the role taken: give it back after
  std::list<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  std::unordered_set<uint64_t> watched_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Watcher> watcher_ ABSL_GUARDED_BY(mu_);
  Mutex write_mu_;
  std::string pending_ ABSL_GUARDED_BY(write_mu_);
  bool flushing_ ABSL_GUARDED_BY(write_mu_) = false;
  bool broken_ ABSL_GUARDED_BY(write_mu_) = false;
  std::string writing_;  // the flushing thread's, outside the lock
};

}  // namespace ferry::transport
