// A client's frame connection to one replica with many requests in flight: the part of the request path
// that the proxy and handles share. Sends request frames, routes what comes back (a whole response, or a
// stream's head, chunks and end) to the request's listener by stream id, and carries cancels and credit.
// Not thread-safe: every call, and every listener callback, on the thread that runs the executor it was
// made with.
#pragma once

#include <absl/status/status.h>
#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/mutex.h"
#include "transport/connection.h"
#include "transport/frame.h"

namespace ferry::transport {

// One request's side of a channel. Exactly one of these ends it: OnResponse, OnStreamEnd, or
// OnChannelFailed; a stream's OnStreamStart and OnStreamChunk come before its end.
class StreamListener {
 public:
  virtual ~StreamListener() = default;
  virtual void OnResponse(const ResponseMessage& response) = 0;
  virtual void OnStreamStart(const ResponseStart& head) = 0;
  virtual void OnStreamChunk(std::string_view data) = 0;
  virtual void OnStreamEnd(const StreamEnd& end) = 0;
  // The connection is gone. `delivered` is false when it never connected: the request never reached the
  // replica, so sending it elsewhere is safe.
  virtual void OnChannelFailed(bool delivered, std::string_view why) = 0;
  // What the client sends after the request (a streamed body, a WebSocket session's messages): the replica
  // took `bytes` of it, so that many more may go.
  virtual void OnCredit(uint32_t bytes) { (void)bytes; }
  // A WebSocket session (after its 101 head): a message from the deployment, and its close.
  virtual void OnMessage(const WsMessage& message) { (void)message; }
  virtual void OnClose(const WsClose& close) { (void)close; }
};

// The requests in flight on one connection to a replica, by stream id, and the delivery of what the replica
// sends them: the part of a client connection that does not depend on who reads it (ReplicaChannel's I/O
// thread, or DirectChannel's waiting callers). Thread-safe; listeners are called with no lock held.
class StreamTable {
 public:
  uint64_t Add(std::shared_ptr<StreamListener> listener);
  // Forgets a request that was never sent; false when it is not there (TakeAll took it: it heard why).
  bool Remove(uint64_t stream_id);
  // Delivers one frame from the replica to its request's listener. An error (a malformed frame, one out
  // of order, an unexpected kind, another protocol version) means the connection must close.
  absl::Status Deliver(const FrameHeader& header, std::string_view payload);
  // Empties the table (the connection is gone): the listeners that were waiting.
  std::vector<std::shared_ptr<StreamListener>> TakeAll();
  bool Has(uint64_t stream_id) const;
  size_t size() const;

 private:
  std::shared_ptr<StreamListener> Find(uint64_t stream_id, bool* streaming) const;
  std::shared_ptr<StreamListener> Take(uint64_t stream_id);

  mutable Mutex mu_;
  uint64_t next_stream_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::unordered_map<uint64_t, std::shared_ptr<StreamListener>> listeners_ ABSL_GUARDED_BY(mu_);
  std::unordered_set<uint64_t> streaming_ ABSL_GUARDED_BY(mu_);  // streams whose head arrived
};

class ReplicaChannel : public FrameConnection::Handler, public std::enable_shared_from_this<ReplicaChannel> {
 public:
  // `client` names this side in the hello ("proxy", "handle"); `on_closed` runs once the connection is
  // gone, after every listener heard.
  ReplicaChannel(const boost::asio::any_io_executor& executor, std::string socket_path, std::string client,
                 std::function<void(ReplicaChannel*)> on_closed);
  void Start();
  // Sends a request frame; `listener` hears back. Returns the request's stream id.
  uint64_t Send(std::shared_ptr<StreamListener> listener, const RequestMessage& request);
  void Cancel(uint64_t stream_id);
  void Credit(uint64_t stream_id, uint32_t bytes);
  // After a request sent with a streamed body: its pieces and its end; with a WebSocket session: the
  // client's messages and close.
  void SendChunk(uint64_t stream_id, std::string_view data);
  void SendEnd(uint64_t stream_id, bool ok);
  void SendMessage(uint64_t stream_id, const WsMessage& message);
  void SendClose(uint64_t stream_id, const WsClose& close);
  bool closed() const { return connection_->closed(); }
  // Closes without telling anyone and forgets every listener (their owner is going away; this also breaks
  // the reference cycle between a channel and the calls waiting on it).
  void Drop();
  void OnFrame(const FrameHeader& header, std::string_view payload) override;
  void OnClosed(const absl::Status& why) override;

 private:
  std::string client_;
  std::function<void(ReplicaChannel*)> on_closed_;
  std::shared_ptr<FrameConnection> connection_;
  StreamTable streams_;
};

}  // namespace ferry::transport
