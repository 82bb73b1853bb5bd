// The Open Inference Protocol's endpoints the proxy answers itself (server metadata, liveness, readiness,
// a model's readiness) and where a model's metadata and infer calls go: a pure decision over the routing
// table, so the session only carries it out. Thread-compatible.
#pragma once

#include <boost/beast/http.hpp>
#include <string>
#include <string_view>

#include "router/routing_table.h"

namespace ferry::proxy {

struct InferenceAnswer {
  // Set: send this model's route the request (its metadata or an infer call). Null: answer directly.
  const router::Route* route = nullptr;
  boost::beast::http::status status = boost::beast::http::status::ok;
  std::string body;  // JSON; for an error status the message of {"error": ...}
  bool error = false;
};

// `path` is under /v2. `draining`: this node is being drained (not live, not ready).
InferenceAnswer AnswerInferenceProtocol(boost::beast::http::verb method, std::string_view path,
                                        const router::RoutingTable& table, bool draining);

}  // namespace ferry::proxy
