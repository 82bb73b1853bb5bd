// Deployment handles: how code inside a replica calls other deployments. A HandleClient is the replica's
// one consumer of endpoint snapshots (the node agent forwards them once the replica asks), with routers of
// its own (power of two choices, max_ongoing_requests, max_queued_requests: the same Router the proxy
// uses) and channels to the callees' replicas (the same ReplicaChannel). Each call routes, queues, carries
// the caller's remaining deadline, request id and trace, may stream, and is cancelled with its caller.
// Its load goes back to the controller in reports, so autoscaling counts handle traffic as proxy traffic.
//
// Two ways a call's answer comes back. By default, on the client's I/O thread (it reads every callee's
// connection and calls the observers). A call made `on_demand` whose caller will wait for it goes the
// direct way when a replica has room at once: the calling thread writes the request on a connection of
// its own (transport::DirectChannel) and reads the answer itself in CallRef::Wait, so a hop costs the
// callee's wake-up and the caller's and no I/O thread in between. Such a call's observer hears on the
// thread that waits; a caller that will not wait calls CallRef::Watch (then the I/O thread reads it).
// Thread-safe: every method from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/common.h"
#include "endpoints/endpoints.h"
#include "transport/frame.h"

namespace ferry::tracing {
class Tracer;
}

namespace ferry::handle {

// One call, as its caller describes it. Header names lower-case.
struct CallRequest {
  std::string deployment_key;  // "app/name" of the callee
  std::string method_name;     // the callee's method; empty: its default (__call__)
  std::string http_method = "POST";
  std::string path;  // under the callee's route; empty: "/"
  std::string query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string parent_request_id;  // the request being handled; the call's own id is made from it
  std::string traceparent;        // the caller's span; when sampled, the call gets a span under it
  std::optional<SteadyClock::time_point> deadline;
  // The caller asks for events: CallRef::Wait (on its thread) or CallRef::Watch (then on the I/O thread).
  // Until it does, a call that went the direct way hears nothing (its answer waits in the socket).
  bool on_demand = false;
};

// What a caller hears, on the client's I/O thread (or, for an on-demand call, the thread in Wait), in this
// order: OnHead once when the callee answers (a
// whole body or a stream's head), OnChunk for the body (once, for a whole answer; per chunk, for a stream),
// and OnEnd once. A call that ends without an answer gets OnEnd only, with the status that says why (503
// overloaded, 504 timed out, 502 replica failed, 404 no such deployment, 499 cancelled) and a message that
// names the callee.
class CallObserver {
 public:
  virtual ~CallObserver() = default;
  virtual void OnHead(int status, const transport::HeaderList& headers, bool stream) = 0;
  virtual void OnChunk(std::string_view data) = 0;
  virtual void OnEnd(bool ok, int status, std::string_view error) = 0;
};

class HandleCall;

// A call in flight, as its caller holds it.
class CallRef {
 public:
  CallRef() = default;
  explicit CallRef(std::shared_ptr<HandleCall> call) : call_(std::move(call)) {}
  // Stops the call: it ends with 499 (unless it ended already), and the callee is told.
  void Cancel() const;
  // A stream's caller took `bytes` of its chunks: the callee may send that many more.
  void Consumed(size_t bytes) const;
  // On-demand calls. Wait: delivers the call's next events on this thread, blocking (when `block`) until
  // one came or the call ended (its deadline passing ends it); false when this call's events come from the
  // I/O thread (it was queued, or watched): wait for the observer instead. Watch: from now on the events
  // come on the I/O thread.
  bool Wait(bool block) const;
  void Watch() const;
  const std::string& request_id() const;

 private:
  std::shared_ptr<HandleCall> call_;
};

// Calls per callee since the replica started, for `ferry status` and /metrics.
struct CalleeStats {
  std::string callee;  // "app/name"
  uint64_t ok = 0;     // answered 2xx-4xx
  uint64_t errors = 0;
  std::vector<uint64_t> latency_counts;  // per metrics::LatencyBucketsSeconds() bucket, the last +Inf
  double latency_sum = 0;
};

class HandleClient : public endpoints::Consumer {
 public:
  // `caller` is "app/name" of this replica's deployment; `tracer` (may be null) records call spans.
  HandleClient(std::string caller, tracing::Tracer* tracer);
  ~HandleClient() override;

  // Called once, on the first Want(): asks the node for snapshots. Set before user code runs.
  void SetSubscribe(std::function<void()> subscribe);
  // Called (on a calling thread) when a call waits for a deployment with no replica, or a draining
  // replica's last call ended: the controller should look now. Set before user code runs.
  void SetWake(std::function<void()> wake);
  // How many on-demand calls may go the direct way at once (2 unless set; see HandleClient::Impl).
  void SetMaxDirectCalls(int n);
  // User code holds a handle: start the I/O thread and subscribe (once).
  void Want();
  bool wanted() const { return wanted_.load(); }
  const std::string& caller() const { return caller_; }

  CallRef Start(CallRequest request, std::shared_ptr<CallObserver> observer);

  void OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) override;
  endpoints::ConsumerReport Report() const override;
  std::vector<CalleeStats> Stats() const;

  class Impl;

 private:
  const std::string caller_;
  std::function<void()> subscribe_;
  std::function<void()> wake_;
  std::atomic<bool> wanted_{false};
  std::unique_ptr<Impl> impl_;
};

// The load_reply JSON: the report and the call stats.
std::string LoadReplyJson(const HandleClient& client);

}  // namespace ferry::handle
