// A small blocking HTTP/1.1 client for ferry's own outbound calls: the tracer's OTLP exports and the CLI's
// calls to a node's admin API. One request per connection (Connection: close), every step bounded by one
// deadline. Not for the request path. Thread-safe: no shared state.
#pragma once

#include <absl/status/statusor.h>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry {

class TlsContext;

// An http:// address split into its parts. https is for etcd only (its endpoints get `tls`); elsewhere use
// a local collector or agent, or a tunnel to a remote node.
struct HttpEndpoint {
  std::string host;
  std::string port = "80";
  std::string path = "/";
  std::shared_ptr<const TlsContext> tls;  // set: HTTPS, the server's certificate checked against `host`
};
// Parses http://HOST[:PORT][/PATH] (HOST may be [IPv6]). With `scheme_optional`, HOST:PORT[/PATH] too.
absl::StatusOr<HttpEndpoint> ParseHttpEndpoint(std::string_view url, bool scheme_optional = false);

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpResponse {
  int status = 0;
  std::string body;
};

struct HttpCall {
  std::string method = "GET";
  std::string path = "/";  // the request target
  std::string body;
  std::string content_type;  // sent when the body is not empty
  HttpHeaders headers;       // besides Host, User-Agent, Content-Type, Content-Length and Connection
  std::chrono::milliseconds timeout{5000};
  // Read only the status line (the body is not needed): the connection closes as soon as it arrives.
  bool status_only = false;
  // A body read as it arrives (a long-lived stream such as etcd's watch): each decoded piece goes here, and
  // HttpResponse::body stays empty. `timeout` then bounds the head only; the stream lasts until the peer
  // ends it, on_body returns false, or *stop is set (checked at least every 200 ms).
  std::function<bool(std::string_view piece)> on_body;
  const std::atomic<bool>* stop = nullptr;
};

// Decodes a chunked HTTP body as it arrives: Feed takes the next bytes read (it keeps what is not a whole
// piece yet) and hands each chunk's data to `out` as soon as it is there. kDone after the last chunk
// (trailers are not read); kBad on a malformed chunk; kStopped when `out` returned false.
class ChunkedDecoder {
 public:
  enum class State { kMore, kDone, kBad, kStopped };
  State Feed(std::string_view bytes, const std::function<bool(std::string_view)>& out);

 private:
  std::string pending_;
  size_t left_ = 0;    // data bytes left in the current chunk
  bool crlf_ = false;  // the CRLF after a chunk's data comes next
};

// Sends `call` to `endpoint` and reads the answer (a body by Content-Length, chunked, or up to the close).
// Unavailable when the peer cannot be reached or answers with something that is not HTTP; DeadlineExceeded
// when `call.timeout` passes first. The error names the endpoint.
absl::StatusOr<HttpResponse> SendHttp(const HttpEndpoint& endpoint, const HttpCall& call);

}  // namespace ferry
