#include "cli/foreground_node.h"

#include <signal.h>
#include <stdlib.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "common/common.h"
#include "controller/controller.h"
#include "proxy/proxy.h"
#include "router/routing_table.h"

namespace ferry::cli {
namespace {

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

proxy::ProxyOptions ProxyOptionsFrom(const config::HttpOptions& h) {
  proxy::ProxyOptions options;
  options.host = h.host;
  options.port = h.port;
  options.num_threads =
      h.num_threads > 0 ? h.num_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (h.request_timeout_s) options.request_timeout = Millis(*h.request_timeout_s);
  options.keep_alive_timeout = Millis(h.keep_alive_timeout_s);
  options.header_timeout = Millis(h.header_timeout_s);
  options.max_body_bytes = h.max_body_bytes;
  return options;
}

// The largest graceful_shutdown_timeout_s: how long the proxy lets requests in flight finish.
double DrainSeconds(const config::Config& config) {
  double drain_s = 0;
  for (const auto& app : config.applications)
    for (const auto& d : app.deployments) drain_s = std::max(drain_s, d.graceful_shutdown_timeout_s);
  return drain_s;
}

class ForegroundNode {
 public:
  ForegroundNode(const config::Config& config, std::unique_ptr<proxy::Proxy> proxy)
      : config_(config), proxy_(std::move(proxy)), signals_(io_, SIGINT, SIGTERM) {}

  ~ForegroundNode() {
    if (drainer_.joinable()) drainer_.join();
    proxy_->Stop();
    control_.reset();  // kills whatever replica is left
  }

  absl::Status Create(const ForegroundOptions& options, router::RoutingTableCell* routing) {
    controller::ControllerCallbacks callbacks;
    callbacks.on_progress = [](const std::string& line) { std::cout << "ferry: starting " << line << std::endl; };
    callbacks.on_all_ready = [this] {
      if (!serving_) OnAllReady();
    };
    callbacks.on_start_failure = [this](const std::string& deployment, const std::string& message) {
      // At start-up a deployment that cannot start fails the run; once serving, the controller retries.
      if (serving_ || failed_) return;
      failed_ = true;
      std::cerr << "ferry: deployment " << deployment << " failed to start: " << message << std::endl;
      exit_code_ = 1;
      control_->Shutdown([this] { io_.stop(); });
    };
    absl::StatusOr<std::unique_ptr<controller::Controller>> created =
        controller::Controller::Create(io_, options.ferry_binary, options.run_dir, routing, nullptr, callbacks);
    if (!created.ok()) return created.status();
    control_ = std::move(*created);
    return absl::OkStatus();
  }

  int Run() {
    WaitForSignal();
    control_->Start();
    absl::Status applied = control_->Apply(config_);
    if (!applied.ok()) {
      std::cerr << "ferry: " << Message(applied) << std::endl;
      return 1;
    }
    io_.run();
    return exit_code_;
  }

 private:
  void OnAllReady() {
    proxy_->Start();
    serving_ = true;
    std::string base = StrCat("http://", config_.http_options.host, ":", proxy_->port());
    std::cout << "ferry: listening on " << base << std::endl;
    for (const auto& app : config_.applications)
      std::cout << "ferry: application \"" << app.name << "\" at " << base
                << (app.route_prefix == "/" ? "/" : app.route_prefix) << std::endl;
    std::cout << "ferry: ready (Ctrl-C to stop)" << std::endl;
  }

  void WaitForSignal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
      if (!ec) OnSignal(signo);
    });
  }

  void OnSignal(int signo) {
    if (stopping_) {
      std::cerr << "ferry: second signal; stopping now" << std::endl;
      exit_code_ = 1;
      proxy_->Stop();  // drops requests in flight, which also ends the drain
      io_.stop();
      return;
    }
    stopping_ = true;
    double drain_s = DrainSeconds(config_);
    std::cout << "ferry: " << strsignal(signo) << ": draining " << proxy_->in_flight() << " requests in flight (up to "
              << drain_s << " s)" << std::endl;
    WaitForSignal();
    // Draining blocks; do it off the control thread so that replicas keep being watched meanwhile.
    drainer_ = std::thread([this, drain_s] {
      int left = serving_ ? proxy_->Drain(Millis(drain_s)) : 0;
      boost::asio::post(io_, [this, left] { StopReplicas(left); });
    });
  }

  void StopReplicas(int requests_left) {
    if (requests_left > 0)
      std::cerr << "ferry: graceful_shutdown_timeout_s passed with " << requests_left << " requests in flight"
                << std::endl;
    proxy_->Stop();
    control_->Shutdown([this] {
      std::cout << "ferry: stopped" << std::endl;
      io_.stop();
    });
  }

  const config::Config& config_;
  boost::asio::io_context io_{1};
  std::unique_ptr<proxy::Proxy> proxy_;
  std::unique_ptr<controller::Controller> control_;
  boost::asio::signal_set signals_;
  std::thread drainer_;
  std::atomic<bool> serving_{false};
  bool stopping_ = false;
  bool failed_ = false;
  int exit_code_ = 0;
};

}  // namespace

int RunForeground(const config::Config& config, const ForegroundOptions& options) {
  router::RoutingTableCell routing;
  absl::StatusOr<std::unique_ptr<proxy::Proxy>> proxy =
      proxy::Proxy::Create(ProxyOptionsFrom(config.http_options), &routing);
  if (!proxy.ok()) {
    std::cerr << "ferry: " << Message(proxy.status()) << std::endl;
    return 1;
  }
  ForegroundOptions resolved = options;
  bool own_run_dir = resolved.run_dir.empty();
  if (own_run_dir) {
    const char* tmp = getenv("TMPDIR");
    std::string pattern = StrCat(tmp && *tmp ? tmp : "/tmp", "/ferry-XXXXXX");
    if (!mkdtemp(pattern.data())) {
      std::cerr << "ferry: cannot create a run directory: " << strerror(errno) << std::endl;
      return 1;
    }
    resolved.run_dir = pattern;
  }
  int code;
  {
    ForegroundNode node(config, std::move(*proxy));
    absl::Status created = node.Create(resolved, &routing);
    if (!created.ok()) {
      std::cerr << "ferry: " << Message(created) << std::endl;
      code = 1;
    } else {
      code = node.Run();
    }
  }
  if (own_run_dir) {
    std::error_code ignored;
    std::filesystem::remove_all(resolved.run_dir, ignored);
  }
  return code;
}

}  // namespace ferry::cli
