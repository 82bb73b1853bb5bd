// builtin:echo answers every request with what it received, as JSON: method, path, query, route_prefix,
// headers, body and request id. For smoke tests, routing checks and measuring ferry's own overhead.
#include <ferry/deployment.h>

namespace ferry::runtimes {

class Echo : public Deployment {
 public:
  explicit Echo(const Args& args) { (void)args; }

  Response handle(const Request& req) override {
    Json headers = Json::object();
    for (size_t i = 0; i < req.num_headers(); ++i) headers[std::string(req.header_name(i))] = req.header_value(i);
    Json body = {{"method", req.method()},
                 {"path", req.path()},
                 {"query", req.query()},
                 {"route_prefix", req.route_prefix()},
                 {"headers", std::move(headers)},
                 {"body", req.body()},
                 {"request_id", req.request_id()}};
    Response r;
    r.headers.emplace_back("content-type", "application/json");
    r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
    return r;
  }
};

}  // namespace ferry::runtimes

using FerryBuiltinEcho = ferry::runtimes::Echo;
FERRY_DEPLOYMENT(FerryBuiltinEcho)
