// What the proxy makes of untrusted request bytes before anything is routed: the Beast parser with the
// proxy's limits, the answer a read error gets, and the classification of a parsed request (which handler
// takes it, its path and id, or the error answer). Pure functions, so that fuzz_http drives exactly the
// code the sessions run. Thread-compatible.
#pragma once

#include <boost/beast/http.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/proxy.h"

namespace ferry::proxy {

namespace http = boost::beast::http;

// A parser for one request, with the limits of `options` (header block, body).
void ConfigureParser(http::request_parser<http::string_body>& parser, const ProxyOptions& options);

// An error answer: its status, the message of its JSON body, and whether the connection closes after it.
struct ErrorAnswer {
  http::status status = http::status::bad_request;
  std::string message;
  bool close = true;
};

// The answer to a read error; none when the client simply went away (end of stream, reset).
std::optional<ErrorAnswer> AnswerToReadError(const boost::system::error_code& ec, const ProxyOptions& options);

// Which part of the proxy answers a parsed request.
struct RequestHead {
  enum class Kind { kOwnEndpoint, kInferenceProtocol, kRoute, kReject };
  Kind kind = Kind::kReject;
  std::string_view path;  // the target without its query; a view into the request
  ErrorAnswer error;      // for kReject
};
RequestHead Classify(const http::request<http::string_body>& req);
// The header's first parsed view: rejects an unknown method before the body is read.
std::optional<ErrorAnswer> CheckHeader(const http::request<http::string_body>& req);

// The request's id: its x-request-id when that is 1-128 visible ASCII characters, else a new one.
std::string RequestIdFrom(const http::request<http::string_body>& req);

}  // namespace ferry::proxy
