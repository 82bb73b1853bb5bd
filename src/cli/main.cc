// The ferry command: `ferry run CONFIG` (the node in the foreground), and `ferry replica` (internal: the
// mode the node agent starts replica processes in).
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/foreground_node.h"
#include "common/common.h"
#include "config/config.h"
#include "replica/replica.h"
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
    std::cerr << Message(loaded.status()) << "\n";
    std::cerr << "ferry: the config has errors; nothing was started\n";
    return 1;
  }
  config::Config config = std::move(*loaded);
  if (flags.http_host) config.http_options.host = *flags.http_host;
  if (flags.http_port) config.http_options.port = *flags.http_port;
  if (flags.threads) config.http_options.num_threads = *flags.threads;
  return cli::RunForeground(config, {SelfExecutable(), flags.run_dir});
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
      if (!value(&v) || !ParseInt(v, &n) || n < 0 || n > 65535)
        return Fail("--http-port needs a port number (0-65535)");
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
    if (args[i] == "--spec")
      options.spec_path = args[i + 1];
    else if (args[i] == "--socket")
      options.socket_path = args[i + 1];
    else if (args[i] == "--status-fd")
      ParseInt(args[i + 1], &options.status_fd);
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
