#include "proxy/internal/request_head.h"

#include "common/common.h"

namespace ferry::proxy {

void ConfigureParser(http::request_parser<http::string_body>& parser, const ProxyOptions& options) {
  parser.header_limit(static_cast<uint32_t>(options.max_header_bytes));
  parser.body_limit(static_cast<uint64_t>(options.max_body_bytes));
}

std::optional<ErrorAnswer> AnswerToReadError(const boost::system::error_code& ec, const ProxyOptions& options) {
  namespace asio = boost::asio;
  if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
      ec == asio::error::connection_reset)
    return std::nullopt;
  if (ec == http::error::header_limit)
    return ErrorAnswer{http::status::request_header_fields_too_large,
                       StrCat("request header block exceeds ", options.max_header_bytes, " bytes"), true};
  if (ec == http::error::body_limit)
    return ErrorAnswer{
        http::status::payload_too_large,
        StrCat("request body exceeds http_options.max_body_bytes (", options.max_body_bytes, " bytes)"), true};
  return ErrorAnswer{http::status::bad_request, StrCat("malformed HTTP request: ", ec.message()), true};
}

std::optional<ErrorAnswer> CheckHeader(const http::request<http::string_body>& req) {
  if (req.method() != http::verb::unknown) return std::nullopt;
  return ErrorAnswer{http::status::not_implemented,
                     StrCat("method ", std::string_view(req.method_string().data(), req.method_string().size()),
                            " is not supported"),
                     true};
}

RequestHead Classify(const http::request<http::string_body>& req) {
  RequestHead head;
  std::string_view target(req.target().data(), req.target().size());
  head.path = target.substr(0, target.find('?'));
  if (head.path.rfind("/-/", 0) == 0) {
    head.kind = RequestHead::Kind::kOwnEndpoint;
  } else if (head.path == "/v2" || head.path.rfind("/v2/", 0) == 0) {
    head.kind = RequestHead::Kind::kInferenceProtocol;
  } else if (target.empty() || target[0] != '/') {
    head.kind = RequestHead::Kind::kReject;
    head.error = {http::status::bad_request, "request target must be an absolute path", true};
  } else {
    head.kind = RequestHead::Kind::kRoute;
  }
  return head;
}

std::string RequestIdFrom(const http::request<http::string_body>& req) {
  auto it = req.find("x-request-id");
  if (it != req.end()) {
    std::string_view v(it->value().data(), it->value().size());
    bool ok = !v.empty() && v.size() <= 128;
    for (char c : v) ok = ok && c > 0x20 && c < 0x7f;
    if (ok) return std::string(v);
  }
  return NewRequestId();
}

}  // namespace ferry::proxy
