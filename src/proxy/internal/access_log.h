// The proxy's access log: one line per request, written when it is answered (or abandoned, with 499):
// method, path, status, latency; in JSON also the route, application, deployment, replica, request id and
// trace id. A worker's lines wait in one block, written by its sweep a few times a second or once the
// block is large: one write for many requests.
// Not thread-safe: one AccessLog per worker thread; an AccessLine belongs to its session.
#pragma once

#include <string>
#include <string_view>

#include "router/routing_table.h"

namespace ferry::proxy {

class AccessLog {
 public:
  ~AccessLog() { Flush(); }
  void Flush();
  std::string& block() { return block_; }

 private:
  std::string block_;
};

// The access line of a session's current request, between its routing and its answer.
class AccessLine {
 public:
  // Remembers what the line needs that the request itself will no longer hold. `route` (null: the request
  // matched no route) must stay valid until Write: the session's call holds its routing table. No line
  // when INFO is off.
  void Begin(std::string_view method, std::string_view path, const router::Route* route);
  bool pending() const { return pending_; }
  // The answer was a stream of `chunks` chunks, `bytes` in all (in the line's JSON fields).
  void SetStream(uint64_t chunks, uint64_t bytes) {
    stream_ = true;
    chunks_ = chunks;
    bytes_ = bytes;
  }
  // The request became a WebSocket session that closed with `code`: its messages and bytes both ways
  // are the stream's chunks and bytes.
  void SetWebSocket(uint64_t messages, uint64_t bytes, unsigned close_code) {
    SetStream(messages, bytes);
    close_code_ = close_code;
  }
  // Appends the line to `log` (flushing a large block) and forgets the request.
  void Write(AccessLog& log, std::string_view request_id, unsigned status, std::string_view replica,
             std::string_view trace_id, double ms);

 private:
  bool pending_ = false;
  std::string method_, path_;
  const router::Route* route_ = nullptr;
  bool stream_ = false;
  uint64_t chunks_ = 0, bytes_ = 0;
  unsigned close_code_ = 0;  // a WebSocket session's; 0: not one
};

}  // namespace ferry::proxy
