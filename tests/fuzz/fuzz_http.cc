// The proxy's view of untrusted HTTP bytes, through the functions its sessions run: the parser configured
// with the proxy's limits (ProxyOptions' defaults), the answer to a read error, the header check and the
// classification of a parsed request, its request id, the /v2 model path; then what the proxy does with
// it (route matching, request frame encoding and decoding, its traceparent, and the JSON access line that
// carries its path). A body that would stream (chunked, or longer than body_stream_threshold_bytes) is also
// read the way a session streams it: the header's parser converted to a buffer_body one, the body taken
// piece by piece into a small buffer, never more in all than max_body_bytes.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/common.h"
#include "inference/oip.h"
#include "proxy/internal/request_head.h"
#include "router/routing_table.h"
#include "tracing/tracing.h"
#include "transport/frame.h"

namespace http = boost::beast::http;

namespace {

// Reads the input as a session reads a streamed body: header first, then pieces of at most 61 bytes.
void ReadStreamed(const uint8_t* data, size_t size, const ferry::proxy::ProxyOptions& options) {
  http::request_parser<http::string_body> head;
  ferry::proxy::ConfigureParser(head, options);
  boost::asio::const_buffer in(data, size);
  boost::system::error_code ec;
  while (!head.is_header_done() && in.size() > 0) {
    size_t used = head.put(in, ec);
    if (ec && ec != http::error::need_more) return;
    if (used == 0) return;
    in += used;
  }
  if (!head.is_header_done() || head.is_done()) return;
  if (head.content_length() && *head.content_length() <= options.body_stream_threshold_bytes) return;
  http::request_parser<http::buffer_body> body(std::move(head));
  body.body_limit(static_cast<uint64_t>(options.max_body_bytes));
  char piece[61];
  uint64_t total = 0;
  for (int i = 0; i < 100000 && !body.is_done(); ++i) {
    body.get().body().data = piece;
    body.get().body().size = sizeof(piece);
    size_t used = in.size() > 0 ? body.put(in, ec) : 0;
    if (ec == http::error::need_buffer) ec = {};
    if (ec && ec != http::error::need_more) return;
    total += sizeof(piece) - body.get().body().size;
    if (total > static_cast<uint64_t>(options.max_body_bytes)) __builtin_trap();
    if (used == 0 && body.get().body().size == sizeof(piece)) {
      if (in.size() == 0) body.put_eof(ec);
      return;  // needs more input than there is
    }
    in += used;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ferry::router::RoutingTable table({{"/", "root", "R", nullptr}, {"/echo", "echo", "E", nullptr}});
  static const ferry::proxy::ProxyOptions options;  // the limits a node runs with by default
  ReadStreamed(data, size, options);
  http::request_parser<http::string_body> parser;
  ferry::proxy::ConfigureParser(parser, options);
  parser.eager(true);
  boost::system::error_code ec;
  size_t used = parser.put(boost::asio::buffer(data, size), ec);
  if (ec == http::error::need_more) parser.put_eof(ec);
  (void)used;
  if (ec && ec != http::error::need_more) {
    std::optional<ferry::proxy::ErrorAnswer> answer = ferry::proxy::AnswerToReadError(ec, options);
    if (answer && (static_cast<int>(answer->status) < 400 || answer->message.empty())) __builtin_trap();
  }
  if (!parser.is_header_done()) return 0;
  const auto& req = parser.get();
  if (std::optional<ferry::proxy::ErrorAnswer> refused = ferry::proxy::CheckHeader(req)) {
    if (refused->status != http::status::not_implemented) __builtin_trap();
    return 0;
  }
  const ferry::proxy::RequestHead head = ferry::proxy::Classify(req);
  std::string_view path = head.path;
  std::string request_id = ferry::proxy::RequestIdFrom(req);
  if (request_id.empty() || request_id.size() > 128) __builtin_trap();
  if (head.kind == ferry::proxy::RequestHead::Kind::kInferenceProtocol) {
    if (auto model = ferry::oip::ParseModelPath(path); model && model->name.find('/') != std::string::npos)
      __builtin_trap();
  }
  const ferry::router::Route* route =
      head.kind == ferry::proxy::RequestHead::Kind::kRoute ? table.Match(path) : nullptr;
  ferry::transport::HeaderList headers;
  for (const auto& f : req)
    headers.emplace_back(std::string_view(f.name_string().data(), f.name_string().size()),
                         std::string_view(f.value().data(), f.value().size()));
  ferry::transport::RequestMessage m;
  m.method = std::string_view(req.method_string().data(), req.method_string().size());
  m.path = path;
  m.route_prefix = route ? std::string_view(route->route_prefix) : std::string_view();
  m.headers = headers;
  if (parser.is_done()) m.body = req.body();
  std::string frame;
  ferry::transport::AppendRequest(frame, 1, m);
  ferry::transport::RequestMessage back;
  if (!ferry::transport::DecodeRequest(std::string_view(frame).substr(ferry::transport::kFrameHeaderSize), &back).ok())
    __builtin_trap();
  // A version-00 traceparent that parses gives back its ids when formatted (the flags: only "sampled",
  // since ferry forwards its own sampling decision, not flags it does not know).
  if (auto it = req.find("traceparent"); it != req.end()) {
    std::string_view value(it->value().data(), it->value().size());
    ferry::tracing::SpanContext context;
    if (ferry::tracing::ParseTraceparent(value, &context)) {
      if (!context.valid()) __builtin_trap();
      if (value.substr(0, 3) == "00-" &&
          ferry::tracing::FormatTraceparent(context).substr(0, 53) != value.substr(0, 53))
        __builtin_trap();
    }
  }
  // The access line's JSON string of any path: quoted, no raw control bytes, so one line stays one line.
  std::string quoted;
  ferry::AppendJsonString(quoted, path);
  if (quoted.size() < 2 || quoted.front() != '"' || quoted.back() != '"') __builtin_trap();
  for (char c : quoted)
    if (static_cast<unsigned char>(c) < 0x20) __builtin_trap();
  return 0;
}
