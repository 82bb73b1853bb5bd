// The ferry command: `ferry run CONFIG` (the node in the foreground), and `ferry replica` (internal: the
// mode the node agent starts replica processes in).
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/common.h"
#include "config/config.h"
#include "controller/controller.h"
#include "proxy/proxy.h"
#include "replica/replica.h"
#include "router/routing_table.h"
#include "runtimes/runtimes.h"

namespace ferry {
namespace {

constexpr char kVersion[] = "0.1.0";

constexpr char kUsage[] = R"(ferry — serve models from a YAML config, with Ray Serve's model and native speed.

Usage:
  ferry run CONFIG [options]   start a node in the foreground and serve CONFIG until Ctrl-C
  ferry --help | -h            this text
  ferry --version              the version
  ferry run --help             the options of `ferry run`

See docs/config.md for the config format and README.md for a quickstart.
)";

constexpr char kRunUsage[] = R"(Usage: ferry run CONFIG [options]

Loads CONFIG (YAML; see docs/config.md), starts one replica process per replica, shows progress
while they start, and serves HTTP once every replica is ready. It prints one URL per application.
On SIGINT or SIGTERM it stops accepting, lets requests in flight finish within the largest
graceful_shutdown_timeout_s of the config, stops the replicas, and exits 0. A config error, a
port that cannot be bound or a deployment that fails to start exits non-zero with the reason.

Options:
  --http-host HOST     listen on HOST instead of http_options.host
  --http-port PORT     listen on PORT instead of http_options.port (0: any free port)
  --threads N          proxy I/O threads instead of http_options.num_threads (0: one per core)
  --log-level LEVEL    debug, info (default), warning or error
  --run-dir DIR        where replica sockets live (default: a new directory under $TMPDIR or /tmp)
  -h, --help           this text
)";

std::string SelfExecutable() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "ferry";
  buf[n] = 0;
  return buf;
}

struct RunFlags {
  std::string config_path;
  std::optional<std::string> http_host;
  std::optional<int> http_port;
  std::optional<int> threads;
  std::string run_dir;
};

bool ParseInt(const std::string& s, int* out) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end || errno) return false;
  *out = static_cast<int>(v);
  return true;
}

int Fail(const std::string& message, int code = 2) {
  std::cerr << "ferry: " << message << "\n";
  return code;
}

int Run(const RunFlags& flags) {
  config::ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view name) { return runtimes::FindBuiltin(name) != nullptr; };
  hooks.check_plugin = &config::CheckPluginInChildProcess;
  absl::StatusOr<config::Config> loaded = config::LoadConfigFile(flags.config_path, hooks);
  if (!loaded.ok()) {
    std::cerr << loaded.status().message() << "\n";
    std::cerr << "ferry: the config has errors; nothing was started\n";
    return 1;
  }
  config::Config config = std::move(*loaded);
  if (flags.http_host) config.http_options.host = *flags.http_host;
  if (flags.http_port) config.http_options.port = *flags.http_port;
  if (flags.threads) config.http_options.num_threads = *flags.threads;

  const auto& h = config.http_options;
  proxy::ProxyOptions options;
  options.host = h.host;
  options.port = h.port;
  options.num_threads = h.num_threads > 0 ? h.num_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (h.request_timeout_s) options.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(*h.request_timeout_s * 1000));
  options.keep_alive_timeout = std::chrono::milliseconds(static_cast<int64_t>(h.keep_alive_timeout_s * 1000));
  options.header_timeout = std::chrono::milliseconds(static_cast<int64_t>(h.header_timeout_s * 1000));
  options.max_body_bytes = h.max_body_bytes;

  router::RoutingTableCell routing;
  absl::StatusOr<std::unique_ptr<proxy::Proxy>> proxy = proxy::Proxy::Create(options, &routing);
  if (!proxy.ok()) return Fail(std::string(proxy.status().message()), 1);

  std::string run_dir = flags.run_dir;
  bool own_run_dir = run_dir.empty();
  if (own_run_dir) {
    const char* tmp = getenv("TMPDIR");
    std::string pattern = ferry::StrCat(tmp && *tmp ? tmp : "/tmp", "/ferry-XXXXXX");
    if (!mkdtemp(pattern.data())) return Fail(ferry::StrCat("cannot create a run directory: ", strerror(errno)), 1);
    run_dir = pattern;
  }

  boost::asio::io_context io(1);
  int exit_code = 0;
  bool serving = false;
  std::unique_ptr<controller::Controller> control;
  controller::ControllerCallbacks callbacks;
  callbacks.on_progress = [](const std::string& line) { std::cout << "ferry: starting " << line << std::endl; };
  callbacks.on_all_ready = [&] {
    (*proxy)->Start();
    serving = true;
    std::string base = ferry::StrCat("http://", options.host, ":", (*proxy)->port());
    std::cout << "ferry: listening on " << base << std::endl;
    for (const auto& app : config.applications)
      std::cout << "ferry: application \"" << app.name << "\" at " << base << (app.route_prefix == "/" ? "/" : app.route_prefix)
                << std::endl;
    std::cout << "ferry: ready (Ctrl-C to stop)" << std::endl;
  };
  callbacks.on_deploy_failed = [&](const std::string& deployment, const std::string& message) {
    std::cerr << "ferry: deployment " << deployment << " failed to start: " << message << std::endl;
    exit_code = 1;
    control->Shutdown([&io] { io.stop(); });
  };
  absl::StatusOr<std::unique_ptr<controller::Controller>> created =
      controller::Controller::Create(io, config, SelfExecutable(), run_dir, &routing, callbacks);
  if (!created.ok()) return Fail(std::string(created.status().message()), 1);
  control = std::move(*created);

  double drain_s = 0;
  for (const auto& app : config.applications)
    for (const auto& d : app.deployments) drain_s = std::max(drain_s, d.graceful_shutdown_timeout_s);

  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  std::thread drainer;
  bool stopping = false;
  std::function<void(const boost::system::error_code&, int)> on_signal = [&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    if (stopping) {
      std::cerr << "ferry: second signal; stopping now" << std::endl;
      control.reset();  // kills every replica
      io.stop();
      exit_code = 1;
      return;
    }
    stopping = true;
    std::cout << "ferry: " << strsignal(signo) << ": draining " << (*proxy)->in_flight() << " requests in flight (up to "
              << drain_s << " s)" << std::endl;
    signals.async_wait(on_signal);
    drainer = std::thread([&] {
      int left = serving ? (*proxy)->Drain(std::chrono::milliseconds(static_cast<int64_t>(drain_s * 1000))) : 0;
      boost::asio::post(io, [&, left] {
        if (left > 0) std::cerr << "ferry: graceful_shutdown_timeout_s passed with " << left << " requests in flight" << std::endl;
        (*proxy)->Stop();
        if (control)
          control->Shutdown([&io] {
            std::cout << "ferry: stopped" << std::endl;
            io.stop();
          });
      });
    });
  };
  signals.async_wait(on_signal);

  control->Deploy();
  io.run();
  if (drainer.joinable()) drainer.join();
  (*proxy)->Stop();
  control.reset();
  if (own_run_dir) {
    std::error_code ignored;
    std::filesystem::remove_all(run_dir, ignored);
  }
  return exit_code;
}

int RunCommand(const std::vector<std::string>& args) {
  RunFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    std::string v;
    int n;
    if (a == "-h" || a == "--help") {
      std::cout << kRunUsage;
      return 0;
    } else if (a == "--http-host") {
      if (!value(&v)) return Fail("--http-host needs a value");
      flags.http_host = v;
    } else if (a == "--http-port") {
      if (!value(&v) || !ParseInt(v, &n) || n < 0 || n > 65535) return Fail("--http-port needs a port number (0-65535)");
      flags.http_port = n;
    } else if (a == "--threads") {
      if (!value(&v) || !ParseInt(v, &n) || n < 0 || n > 256) return Fail("--threads needs a number from 0 to 256");
      flags.threads = n;
    } else if (a == "--log-level") {
      LogLevel level;
      if (!value(&v) || !ParseLogLevel(v, &level)) return Fail("--log-level needs debug, info, warning or error");
      Log::SetLevel(level);
    } else if (a == "--run-dir") {
      if (!value(&v)) return Fail("--run-dir needs a directory");
      flags.run_dir = v;
    } else if (!a.empty() && a[0] == '-') {
      return Fail(ferry::StrCat("unknown option ", a, " (see ferry run --help)"));
    } else if (flags.config_path.empty()) {
      flags.config_path = a;
    } else {
      return Fail(ferry::StrCat("unexpected argument ", a, " (see ferry run --help)"));
    }
  }
  if (flags.config_path.empty()) return Fail("ferry run needs a CONFIG file (see ferry run --help)");
  return Run(flags);
}

int ReplicaCommand(const std::vector<std::string>& args) {
  replica::ReplicaOptions options;
  for (size_t i = 0; i + 1 < args.size(); i += 2) {
    if (args[i] == "--spec") options.spec_path = args[i + 1];
    else if (args[i] == "--socket") options.socket_path = args[i + 1];
    else if (args[i] == "--status-fd") ParseInt(args[i + 1], &options.status_fd);
    else if (args[i] == "--log-level") {
      LogLevel level;
      if (ParseLogLevel(args[i + 1], &level)) Log::SetLevel(level);
    }
  }
  if (options.spec_path.empty() || options.socket_path.empty())
    return Fail("replica mode is started by the node agent: ferry replica --spec FILE --socket PATH --status-fd N");
  return replica::RunReplica(options);
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::cout << ferry::kUsage;
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version" || args[0] == "version") {
    std::cout << "ferry " << ferry::kVersion << "\n";
    return 0;
  }
  std::string command = args[0];
  args.erase(args.begin());
  if (command == "run") return ferry::RunCommand(args);
  if (command == "replica") return ferry::ReplicaCommand(args);
  return ferry::Fail(ferry::StrCat("unknown command \"", command, "\" (see ferry --help)"));
}
