// The admin API: Ray Serve's REST endpoints for applications (PUT/GET/DELETE /api/serve/applications/)
// plus ferry's history, rollback, applied config and shutdown. It parses and validates configs itself
// and hands only valid ones to the controller, on the controller's thread. With a token configured, every
// request must carry `Authorization: Bearer <token>`.
// Thread-safe: Create/Start/Stop from one thread; it serves on its own thread.
#pragma once

#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "config/config.h"
#include "controller/controller.h"
#include "handle/handle_client.h"

namespace ferry::metrics {
class Registry;
}

namespace ferry::admin {

struct AdminServerOptions {
  std::string host = "127.0.0.1";
  int port = 8265;
  std::string token;                     // empty: no authentication (allowed only on loopback; the caller checks)
  config::HttpOptions node_http;         // what the node's proxy runs with (a config that differs gets a warning)
  config::AdminOptions node_admin;       // what this admin API runs with (likewise)
  config::ValidationHooks hooks;         // for validating deployed configs
  std::function<void()> on_shutdown;     // POST /api/ferry/shutdown
  metrics::Registry* metrics = nullptr;  // GET /metrics renders it, then the controller's state
  // POST /api/ferry/call/{app}/{deployment}: calls from driver scripts (serve.run's handles); null: 404.
  handle::HandleClient* handles = nullptr;
  // Cluster mode. leader_admin: nullopt while this node leads (its controller answers); otherwise the
  // leading node's admin URL, where the controller's endpoints (applications, history, config, rollback)
  // are forwarded, or "" when nobody leads (503). nodes: GET /api/ferry/nodes. Null on one node.
  // reports: GET /api/ferry/reports, this node's data plane in the leader's numbering (run on the
  // controller's thread; the leader polls it). drain: POST /api/ferry/nodes/{node}/drain (on the leader).
  std::function<absl::StatusOr<nlohmann::json>()> nodes;
  std::function<std::optional<std::string>()> leader_admin;
  std::function<nlohmann::json()> reports;
  std::function<absl::Status(const std::string& node)> drain;
};

class AdminServer {
 public:
  // Binds the port. `controller` lives on `control_io`; every call to it is posted there.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Create(AdminServerOptions options,
                                                             boost::asio::io_context& control_io,
                                                             controller::Controller* controller);
  ~AdminServer();
  uint16_t port() const;
  void Start();
  void Stop();

 private:
  class Impl;
  explicit AdminServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::admin
