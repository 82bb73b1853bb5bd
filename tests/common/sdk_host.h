// A host for SDK tests: the sinks and FerryHostApi table the replica host provides, and FerryRequest
// construction, so that a test drives a plugin's generated ABI table exactly as ferry does.
#pragma once

#include <cstddef>
#include <ferry/abi.h>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct FerryResponseSink {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::vector<std::string> chunks;  // what write_chunk (or a deferred stream's writes) sent (kStreamingHost)
  bool deferred = false;            // defer_response took it
  bool answered = false;            // a deferred answer came: stream_respond, or stream_end
  bool end_ok = false;              // stream_end's ok
  std::string end_message;          // stream_end's message
  std::string header(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return v;
    return "";
  }
};
struct FerryErrorSink {
  std::string message;
};
struct FerryStream {
  FerryResponseSink* sink;
};

namespace ferry::testing {

inline void SetStatus(FerryResponseSink* s, int status) { s->status = status; }
inline void AddHeader(FerryResponseSink* s, FerryString k, FerryString v) {
  s->headers.emplace_back(std::string(k.data, k.size), std::string(v.data, v.size));
}
inline void SetBody(FerryResponseSink* s, FerryString b) { s->body.assign(b.data, b.size); }
inline void SetError(FerryErrorSink* s, FerryString m) { s->message.assign(m.data, m.size); }
// What plugins logged through FerryHostApi.log, as "LEVEL message".
inline std::vector<std::string>& LoggedLines() {
  static std::vector<std::string> lines;
  return lines;
}
inline void LogLine(int level, FerryString m) {
  LoggedLines().push_back(std::to_string(level) + " " + std::string(m.data, m.size));
}
inline int WriteChunk(FerryResponseSink* s, FerryString data) {
  s->chunks.emplace_back(data.data, data.size);
  return s->chunks.size() >= 100 ? 1 : 0;  // the 100th write finds the stream over (a client that left)
}
// What deployments sent through FerryHostApi.ws_send ("text:..." or "binary:...") and ws_close ("close:CODE:reason").
inline std::vector<std::string>& WebSocketLog() {
  static std::vector<std::string> sent;
  return sent;
}
inline int WsSend(FerryWebSocket*, FerryString data, int binary) {
  WebSocketLog().push_back((binary ? "binary:" : "text:") + std::string(data.data, data.size));
  return 0;
}
inline void WsClose(FerryWebSocket*, int code, FerryString reason) {
  WebSocketLog().push_back("close:" + std::to_string(code) + ":" + std::string(reason.data, reason.size));
}
// Deferred answers (defer_response) land in the sink they came from.
inline FerryStream* DeferResponse(FerryResponseSink* s) {
  if (s->deferred) return nullptr;
  s->deferred = true;
  return new FerryStream{s};
}
inline void HeadersInto(FerryResponseSink* s, int status, const FerryHeader* h, size_t n) {
  s->status = status;
  for (size_t i = 0; i < n; ++i) AddHeader(s, h[i].name, h[i].value);
}
inline void StreamHead(FerryStream* st, int status, const FerryHeader* h, size_t n) {
  HeadersInto(st->sink, status, h, n);
}
inline void StreamRespond(FerryStream* st, int status, const FerryHeader* h, size_t n, FerryString body) {
  HeadersInto(st->sink, status, h, n);
  SetBody(st->sink, body);
  st->sink->answered = true;
  delete st;
}
inline int StreamWrite(FerryStream* st, FerryString data) {
  st->sink->chunks.emplace_back(data.data, data.size);
  return 0;
}
inline void StreamEnd(FerryStream* st, int ok, FerryString message) {
  st->sink->answered = true;
  st->sink->end_ok = ok != 0;
  st->sink->end_message.assign(message.data, message.size);
  delete st;
}
// The host's table: with the HTTP entry only (struct_size ends before the tensor entry's functions), as an
// older ferry; or, `streaming`, a host whose write_chunk records each chunk in the sink.
inline FerryHostApi MakeHost(bool streaming) {
  FerryHostApi h{};
  h.struct_size = streaming ? sizeof(FerryHostApi) : offsetof(FerryHostApi, add_output);
  h.abi_version = FERRY_ABI_VERSION;
  h.set_status = &SetStatus;
  h.add_header = &AddHeader;
  h.set_body = &SetBody;
  h.set_error = &SetError;
  h.log = &LogLine;
  if (streaming) {
    h.write_chunk = &WriteChunk;
    h.ws_send = &WsSend;
    h.ws_close = &WsClose;
    h.stream_write = &StreamWrite;
    h.stream_end = &StreamEnd;
    h.defer_response = &DeferResponse;
    h.stream_head = &StreamHead;
    h.stream_respond = &StreamRespond;
  }
  return h;
}
inline const FerryHostApi kHost = MakeHost(false);
inline const FerryHostApi kStreamingHost = MakeHost(true);

inline FerryString S(std::string_view s) { return {s.data(), s.size()}; }

// A request whose views point at the arguments: they must outlive it.
inline FerryRequest MakeRequest(std::string_view method, std::string_view path, std::string_view query,
                                std::string_view body, const std::vector<FerryHeader>& headers = {}) {
  FerryRequest r{};
  r.struct_size = sizeof(r);
  r.method = S(method);
  r.path = S(path);
  r.query = S(query);
  r.body = S(body);
  r.headers = headers.data();
  r.num_headers = headers.size();
  return r;
}

}  // namespace ferry::testing
