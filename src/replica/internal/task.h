// One request inside the replica, from its frame's arrival to its answer.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/mutex.h"
#include "replica/internal/deployment_host.h"
#include "replica/internal/frame_server.h"
#include "tracing/tracing.h"
#include "transport/frame.h"

namespace ferry::replica {

// A traced request's spans here: "ferry.replica" from its frame's arrival to its answer, and the user
// code's inside it. The user code sees a `traceparent` naming its own span, so that what it calls joins
// the trace.
struct TaskTrace {
  tracing::SpanContext parent;  // the caller's span
  uint64_t replica_span = 0;
  uint64_t user_span = 0;
  int64_t arrived_ns = 0;
  int64_t user_start_ns = 0;
  int64_t user_end_ns = 0;
  int64_t prepare_start_ns = 0;  // the deployment's prepare(), when it ran (batched deployments)
  int64_t prepare_end_ns = 0;
  std::string traceparent;  // the value the user code sees
};

struct Task : public TrackedStream {
  std::string payload;  // owns the bytes `request` points into
  transport::RequestMessage request;
  uint64_t stream_id = 0;
  std::atomic<bool> cancelled{false};  // set by a cancel frame, or when the client goes away
  // A streamed answer's flow control: bytes the client still takes, and its producer waiting for more.
  Mutex flow_mu;
  CondVar flow_cv;
  int64_t credit ABSL_GUARDED_BY(flow_mu) = transport::kStreamWindow;
  bool waiting_for_credit ABSL_GUARDED_BY(flow_mu) = false;
  std::vector<std::function<void()>> cancel_hooks ABSL_GUARDED_BY(flow_mu);
  // What the client sends on the stream after the request: a streamed body's pieces, or a WebSocket
  // session's messages; its end (an end frame, or the client's close), in arrival order.
  struct Piece {
    std::string data;
    bool binary = false;
  };
  std::deque<Piece> inbound ABSL_GUARDED_BY(flow_mu);
  bool inbound_ended ABSL_GUARDED_BY(flow_mu) = false;
  bool inbound_ok ABSL_GUARDED_BY(flow_mu) = true;  // an end frame's ok flag
  bool waiting_for_inbound ABSL_GUARDED_BY(flow_mu) = false;
  // A streamed body of a deployment that takes whole bodies (batched, or a model): gathered here until its
  // end, then the request runs with it.
  bool gathering ABSL_GUARDED_BY(flow_mu) = false;
  std::string gathered_body;
  // A WebSocket session: its close (the client's code, or the deployment's), whether a thread runs it or
  // it waits in the executor's queue, and the deployment's session object.
  uint16_t close_code ABSL_GUARDED_BY(flow_mu) = 1006;
  std::string close_reason ABSL_GUARDED_BY(flow_mu);
  bool closing ABSL_GUARDED_BY(flow_mu) = false;  // the deployment closed it (close frame sent)
  bool scheduled ABSL_GUARDED_BY(flow_mu) = false;
  bool ws_opened = false;  // the running thread's only
  void* ws_session = nullptr;
  std::unique_ptr<WebSocketPeer> peer;  // the session's sending side, what `ws` points to
  FerryWebSocket ws{nullptr};
  // What a streamed answer sent (its span's and the stats' figures).
  // Atomic: a detached stream's or a session's writes come from user threads while a cancel ends it.
  std::atomic<uint64_t> chunks_sent{0};
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<bool> stream_started{false};
  std::atomic<bool> ended{false};  // its end (or answer) went out: later writes of a detached stream drop
  std::shared_ptr<ClientConnection> connection;
  std::unique_ptr<TaskTrace> trace;  // null: not traced
  // What the deployment's prepare() made of the request as it arrived (batched deployments); released
  // with the task, after its answer.
  void* prepared = nullptr;
  DeploymentHost* host = nullptr;

  Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() override {
    if (prepared) host->Release(prepared);
  }

  void Cancel() override {
    cancelled.store(true);
    std::vector<std::function<void()>> hooks;
    {
      MutexLock lock(&flow_mu);
      hooks.swap(cancel_hooks);
      if (waiting_for_credit || waiting_for_inbound) flow_cv.SignalAll();
    }
    for (auto& hook : hooks) hook();
  }
  // Runs `hook` when the request is cancelled (now, if it is): how calls it made are cancelled with it.
  void OnCancel(std::function<void()> hook) {
    {
      MutexLock lock(&flow_mu);
      if (!cancelled.load()) {
        cancel_hooks.push_back(std::move(hook));
        return;
      }
    }
    hook();
  }
  void AddCredit(uint32_t bytes) override {
    MutexLock lock(&flow_mu);
    credit += bytes;
    if (waiting_for_credit) flow_cv.SignalAll();
  }
  // Waits until the client takes more bytes; false once cancelled.
  bool AwaitCredit() {
    MutexLock lock(&flow_mu);
    while (credit <= 0 && !cancelled.load()) {
      waiting_for_credit = true;
      flow_cv.Wait(&flow_mu);
    }
    waiting_for_credit = false;
    return !cancelled.load();
  }
  void Spend(size_t bytes) {
    MutexLock lock(&flow_mu);
    credit -= static_cast<int64_t>(bytes);
  }
  // A piece from the client; the end of them (ok: complete; not: broken).
  void Push(std::string_view data, bool binary) {
    MutexLock lock(&flow_mu);
    inbound.push_back(Piece{std::string(data), binary});
    if (waiting_for_inbound) flow_cv.SignalAll();
  }
  void EndInbound(bool ok) {
    MutexLock lock(&flow_mu);
    inbound_ended = true;
    inbound_ok = ok;
    if (waiting_for_inbound) flow_cv.SignalAll();
  }
  // Waits for the next piece: 1 with `out` set, 0 at a complete end, -1 broken or cancelled.
  int AwaitPiece(std::string* out) {
    MutexLock lock(&flow_mu);
    while (inbound.empty() && !inbound_ended && !cancelled.load()) {
      waiting_for_inbound = true;
      flow_cv.Wait(&flow_mu);
    }
    waiting_for_inbound = false;
    if (!inbound.empty()) {
      *out = std::move(inbound.front().data);
      inbound.pop_front();
      return 1;
    }
    return inbound_ended && inbound_ok && !cancelled.load() ? 0 : -1;
  }
};

using TaskPtr = std::shared_ptr<Task>;

}  // namespace ferry::replica
