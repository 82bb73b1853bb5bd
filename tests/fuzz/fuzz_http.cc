// The proxy's view of untrusted HTTP bytes: Beast's parser with ferry's limits, then what the proxy does
// with a parsed request (route matching, request frame encoding and decoding, its traceparent, and the
// JSON access line that carries its path).
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/common.h"
#include "router/routing_table.h"
#include "tracing/tracing.h"
#include "transport/frame.h"

namespace http = boost::beast::http;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ferry::router::RoutingTable table({{"/", "root", "R", nullptr}, {"/echo", "echo", "E", nullptr}});
  http::request_parser<http::string_body> parser;
  parser.header_limit(16 * 1024);
  parser.body_limit(1 << 20);
  parser.eager(true);
  boost::system::error_code ec;
  size_t used = parser.put(boost::asio::buffer(data, size), ec);
  if (ec == http::error::need_more) parser.put_eof(ec);
  (void)used;
  if (!parser.is_header_done()) return 0;
  const auto& req = parser.get();
  std::string_view target(req.target().data(), req.target().size());
  std::string_view path = target.substr(0, target.find('?'));
  const ferry::router::Route* route = table.Match(path);
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
