#include "proxy/internal/access_log.h"

#include <cstdio>

#include "common/common.h"

namespace ferry::proxy {

namespace {
constexpr size_t kBlock = 64 * 1024;
}  // namespace

void AccessLog::Flush() {
  if (block_.empty()) return;
  Log::WriteLines(block_);
  block_.clear();
}

void AccessLine::Begin(std::string_view method, std::string_view path, const router::Route* route) {
  if (!Log::Enabled(LogLevel::kInfo)) return;
  pending_ = true;
  method_.assign(method);
  path_.assign(path);
  route_ = route;
}

void AccessLine::Write(AccessLog& log, std::string_view request_id, unsigned status, std::string_view replica,
                       std::string_view trace_id, double ms) {
  pending_ = false;
  char latency[32];
  snprintf(latency, sizeof(latency), "%.3fms", ms);
  const router::Route* r = route_;
  thread_local std::string message;
  message.clear();
  ferry::StrAppend(&message, method_, " ", path_, " ", status, " ", latency);
  if (close_code_)
    ferry::StrAppend(&message, " websocket ", chunks_, " messages ", bytes_, " bytes close ", close_code_);
  else if (stream_)
    ferry::StrAppend(&message, " stream ", chunks_, " chunks ", bytes_, " bytes");
  const LogField fields[] = {
      {"request_id", request_id},
      JsonOnly({"method", method_}),
      JsonOnly({"path", path_}),
      {"route", r ? std::string_view(r->route_prefix) : std::string_view()},
      {"application", r ? std::string_view(r->application) : std::string_view()},
      {"deployment", r ? std::string_view(r->ingress_deployment) : std::string_view()},
      {"replica", replica},
      JsonOnly({"status_code", status}),
      JsonOnly({"latency_ms", ms}),
      {"trace_id", trace_id},
      JsonOnly({"stream_chunks", static_cast<double>(chunks_)}),  // these two for streams only
      JsonOnly({"stream_bytes", static_cast<double>(bytes_)}),
      JsonOnly({"websocket_close_code", close_code_}),  // for WebSocket sessions only
  };
  const size_t n = std::size(fields) - (close_code_ ? 0 : stream_ ? 1 : 3);
  Log::Format(LogLevel::kInfo, "access", message, std::span<const LogField>(fields, n), &log.block());
  route_ = nullptr;
  stream_ = false;
  close_code_ = 0;
  if (log.block().size() >= kBlock) log.Flush();
}

}  // namespace ferry::proxy
