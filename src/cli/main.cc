// The ferry command. `ferry run` and `ferry start` run a node; deploy, status, config, rollback and
// shutdown talk to a node's admin API; `replica` and `check-plugin` are internal modes.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/admin_client.h"
#include "cli/node.h"
#include "cli/python_build.h"
#include "cli/status.h"
#include "cluster/cluster.h"
#include "common/common.h"
#include "common/tls.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "replica/replica.h"
#include "runtimes/runtimes.h"
#include "transport/address.h"

namespace ferry {
namespace {

using cli::AdminRequest;
using cli::AdminResponse;
using cli::JsonToYaml;

constexpr char kDefaultAddress[] = "http://127.0.0.1:8265";

constexpr char kUsage[] = R"(ferry — serve models from a YAML config, with Ray Serve's model and native speed.

Usage:
  ferry run CONFIG [options]        a node in the foreground serving CONFIG, until Ctrl-C
  ferry start [CONFIG] [options]    a node as a daemon; it restores its applications after a restart
  ferry deploy CONFIG               apply CONFIG to a running node (applications left out are deleted)
  ferry status [--json] [--watch]   applications, deployments, replicas and live traffic of a node
  ferry config                      the config a node runs, as YAML
  ferry rollback APPLICATION        return an application to the config it had before its last change
  ferry shutdown                    drain and stop a node
  ferry nodes [--json]              a cluster's nodes: state, leader, address, replicas, resources, labels
  ferry drain NODE [--no-wait]      move a cluster node's replicas to other nodes (replacements first)
  ferry --help | ferry COMMAND --help | ferry --version

Commands that talk to a node take --address URL (default http://127.0.0.1:8265, or $FERRY_ADDRESS) and
--token TOKEN (or $FERRY_ADMIN_TOKEN) for a node whose admin API requires one.
See docs/config.md for the config format and docs/operations.md for running nodes.
)";

constexpr char kRunUsage[] = R"(Usage: ferry run CONFIG [options]
       ferry run MODULE:ATTR [KEY=VALUE ...] [options]

Loads CONFIG (YAML; see docs/config.md), or the Python application MODULE:ATTR (a bound application,
or an application builder that gets the KEY=VALUE arguments as its args, as Ray's `serve run`),
starts one replica process per replica, shows progress while they start, and serves HTTP once every
replica is ready. It prints one URL per application.
The admin API (ferry deploy/status/...) listens too. On SIGINT or SIGTERM it stops accepting, lets
requests in flight finish within the largest graceful_shutdown_timeout_s of the config, stops the
replicas, and exits 0. A config error, a port that cannot be bound or a deployment that fails to start
exits non-zero with the reason. Nothing is kept after exit (see ferry start for that).

Options:
  --http-host HOST     listen on HOST instead of http_options.host
  --http-port PORT     listen on PORT instead of http_options.port (0: any free port)
  --threads N          proxy I/O threads instead of http_options.num_threads (0: one per core)
  --admin-host HOST    admin API address instead of admin.host (default 127.0.0.1)
  --admin-port PORT    admin API port instead of admin.port (default 8265; 0: any free port)
  --admin-token-file F bearer token for the admin API, required when it listens off loopback
  --log-level LEVEL    debug, info (default), warning or error (the config's logging_config.log_level wins)
  --no-metrics         record no metrics (GET /metrics answers 404); for benchmarks and the frugal
  --run-dir DIR        where replica sockets live (default: a new directory under $TMPDIR or /tmp)
With MODULE:ATTR:
  --working-dir DIR    where the module is found (default: the current directory)
  --name NAME          the application's name (default: default)
  --route-prefix P     its route prefix (default: /)
  -a, --address URL    deploy to the node whose admin API is at URL instead of starting one here, and
                       return once it is deployed (as --non-blocking)
  --non-blocking       the same, with the node at $FERRY_ADDRESS or http://127.0.0.1:8265
  -h, --help           this text
)";

constexpr char kStartUsage[] = R"(Usage: ferry start [CONFIG] [options]

Starts a node as a daemon and returns once its admin API answers. The node keeps its state in
--state-dir: the applied config and each application's history (controller-state.json), its log
(ferry.log), its pid (ferry.pid) and replica sockets (run/). Started again after a crash or a reboot,
it brings back the applications it ran. CONFIG, when given, sets http_options and admin for the node
and is deployed once it is up. Stop it with ferry shutdown.

Options:
  --state-dir DIR      default $FERRY_STATE_DIR, else ~/.ferry
  --foreground         do not daemonize; log to standard error
  --http-host HOST, --http-port PORT, --threads N, --admin-host HOST, --admin-port PORT,
  --admin-token-file F, --log-level LEVEL, --no-metrics   as for ferry run
  -h, --help           this text
Cluster mode (docs/operations.md, "Running a cluster"):
  --cluster etcd://HOST:PORT[,HOST:PORT...]   join the cluster whose shared state is in this etcd; the
                       desired state lives there, not in --state-dir, and the controller runs on
                       whichever node leads
  --node-name NAME     the node's name in the cluster (default: the host name)
  --address IP         how other nodes reach this one (default: --http-host, or 127.0.0.1)
  --resources JSON     what it offers, Ray's way: '{"CPU": 16, "GPU": 2, "memory": 64e9}' (default: its cores)
  --labels K=V[,K=V]   labels for placement
  --lease-ttl-s N      how long after its death the cluster notices it (default 2)
  --cluster-token-file F   the cluster's shared secret (first line of F): a node without it cannot join,
                       and replicas accept frames only from processes that present it
  --tls-ca F --tls-cert F --tls-key F   frames between nodes over mutual TLS (PEM files; every node's
                       certificate signed by the CA F, naming the node's --address as an IP SAN)
  --etcd-cacert F [--etcd-cert F --etcd-key F]   etcd over TLS (etcdctl's flags): its CA, and this
                       node's client certificate when etcd asks for one (--client-cert-auth)
)";

constexpr char kClientUsage[] = R"(Usage:
  ferry deploy CONFIG [--address URL] [--token TOKEN]
  ferry status [--json] [--watch] [--interval S] [--count N] [--address URL] [--token TOKEN]
  ferry status -n NAME [--address URL] [--token TOKEN]
  ferry config [-n NAME] [--address URL] [--token TOKEN]
  ferry rollback APPLICATION [--address URL] [--token TOKEN]
  ferry shutdown [-y] [--address URL] [--token TOKEN]
  ferry nodes [--json] [--address URL] [--token TOKEN]
  ferry build IMPORT_PATH... [-o FILE] [-d DIR]

--address (-a) defaults to $FERRY_ADDRESS, else http://127.0.0.1:8265; --token to $FERRY_ADMIN_TOKEN.
status -n and config -n print one application (its status, or its config as deployed), in YAML as Ray's
`serve status -n` and `serve config -n` do. shutdown asks nothing, so -y (Ray's) changes nothing.
build imports each Python application (a bound application or a builder; from DIR, default the current
directory) and writes a config that deploys them, in Ray's format, to FILE or standard output.
deploy sends the whole file (relative plugin paths resolve against its directory); invalid configs are
refused with every error found, and nothing running changes.
)";

std::string SelfExecutable() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "ferry";
  buf[n] = 0;
  return buf;
}

int Fail(const std::string& message, int code = 2) {
  std::cerr << "ferry: " << message << "\n";
  return code;
}

bool ParseInt(const std::string& s, int* out) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end || errno) return false;
  *out = static_cast<int>(v);
  return true;
}

// Flags of the form --name VALUE and switches --name, plus positional arguments.
struct Flags {
  std::map<std::string, std::string> values;
  std::set<std::string> switches;
  std::vector<std::string> positional;
  std::string error;
  bool help = false;

  static Flags Parse(const std::vector<std::string>& args, const std::set<std::string>& with_value,
                     const std::set<std::string>& switch_names, const char* usage_hint) {
    Flags f;
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "-h" || a == "--help") {
        f.help = true;
      } else if (with_value.count(a)) {
        if (i + 1 >= args.size()) {
          f.error = StrCat(a, " needs a value (see ", usage_hint, ")");
          return f;
        }
        f.values[a] = args[++i];
      } else if (switch_names.count(a)) {
        f.switches.insert(a);
      } else if (!a.empty() && a[0] == '-') {
        f.error = StrCat("unknown option ", a, " (see ", usage_hint, ")");
        return f;
      } else {
        f.positional.push_back(a);
      }
    }
    return f;
  }
  std::optional<std::string> Get(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
};

config::ValidationHooks Hooks(const std::string& self) {
  config::ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view name) { return runtimes::FindBuiltin(name) != nullptr; };
  hooks.runtime_library = [self](std::string_view name) -> std::string {
    std::string file = StrCat("libferry_runtime_", name, ".so");
    for (const std::filesystem::path& dir :
         {std::filesystem::path(self).parent_path(), std::filesystem::path(FERRY_RUNTIME_DIR)}) {
      std::error_code ec;
      std::filesystem::path candidate = dir / file;
      if (std::filesystem::is_regular_file(candidate, ec)) return candidate.string();
    }
    return "";
  };
  hooks.build_python_app = &cli::BuildPythonApp;
  // Loading a plugin to check it happens in a fresh process (ferry check-plugin): a broken library cannot
  // crash the node, and no thread of ours is forked mid-lock.
  hooks.check_plugin = [self](const std::string& path, const std::string& symbol) -> absl::Status {
    Pipe pipe = Pipe::Make();
    if (!pipe.ok) return absl::InternalError("pipe failed");
    pid_t pid = fork();
    if (pid == 0) {
      dup2(pipe.write.get(), STDERR_FILENO);
      int devnull = open("/dev/null", O_WRONLY);
      if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
      CloseDescriptorsFrom(3);
      execl(self.c_str(), self.c_str(), "check-plugin", path.c_str(), symbol.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    pipe.write.reset();
    std::string message;
    char buf[512];
    ssize_t n;
    while ((n = read(pipe.read.get(), buf, sizeof(buf))) > 0) message.append(buf, static_cast<size_t>(n));
    pipe.read.reset();
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
    while (!message.empty() && message.back() == '\n') message.pop_back();
    if (message.empty()) message = StrCat("loading plugin ", path, " crashed the loader");
    return absl::InvalidArgumentError(message);
  };
  return hooks;
}

// Applies the node flags shared by run and start to `options`.
std::optional<std::string> ApplyNodeFlags(const Flags& f, cli::NodeOptions& options) {
  int n;
  options.metrics = !f.switches.count("--no-metrics");
  if (auto v = f.Get("--http-host")) options.http.host = *v;
  if (auto v = f.Get("--http-port")) {
    if (!ParseInt(*v, &n) || n < 0 || n > 65535) return "--http-port needs a port number (0-65535)";
    options.http.port = n;
  }
  if (auto v = f.Get("--threads")) {
    if (!ParseInt(*v, &n) || n < 0 || n > 256) return "--threads needs a number from 0 to 256";
    options.http.num_threads = n;
  }
  if (auto v = f.Get("--admin-host")) options.admin.host = *v;
  if (auto v = f.Get("--admin-port")) {
    if (!ParseInt(*v, &n) || n < 0 || n > 65535) return "--admin-port needs a port number (0-65535)";
    options.admin.port = n;
  }
  if (auto v = f.Get("--admin-token-file")) {
    options.admin.auth_token_file = *v;
    options.admin.auth_token.clear();
  }
  if (auto v = f.Get("--log-level")) {
    LogLevel level;
    if (!ParseLogLevel(*v, &level)) return "--log-level needs debug, info, warning or error";
    Log::SetLevel(level);
  }
  return std::nullopt;
}

const std::set<std::string> kNodeFlags = {"--http-host",        "--http-port",  "--threads",
                                          "--admin-host",       "--admin-port", "--log-level",
                                          "--admin-token-file", "--run-dir",    "--state-dir"};

std::optional<config::Config> LoadOrReport(const std::string& path, const config::ValidationHooks& hooks) {
  absl::StatusOr<config::Config> loaded = config::LoadConfigFile(path, hooks);
  if (!loaded.ok()) {
    std::cerr << Message(loaded.status()) << "\n";
    std::cerr << "ferry: the config has errors; nothing was started\n";
    return std::nullopt;
  }
  return std::move(*loaded);
}

std::set<std::string> SetUnion(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

int ReportHttpError(const AdminResponse& r);

// `ferry run MODULE:ATTR k=v ...`: the one-application config it means (Ray's `serve run` arguments).
std::optional<std::string> ImportPathConfig(const Flags& f, std::string* error) {
  const std::string& target = f.positional[0];
  std::error_code ec;
  if (std::filesystem::exists(target, ec) || target.find(':') == std::string::npos ||
      target.find('/') != std::string::npos)
    return std::nullopt;  // a config file
  nlohmann::json app = {{"name", f.Get("--name").value_or("default")},
                        {"route_prefix", f.Get("--route-prefix").value_or("/")},
                        {"import_path", target}};
  std::string dir = std::filesystem::absolute(f.Get("--working-dir").value_or(".")).lexically_normal().string();
  if (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  app["runtime_env"] = {{"working_dir", dir}};
  nlohmann::json args = nlohmann::json::object();
  for (size_t i = 1; i < f.positional.size(); ++i) {
    const std::string& kv = f.positional[i];
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      *error = StrCat("expected KEY=VALUE application arguments after the import path, got \"", kv, "\"");
      return std::nullopt;
    }
    args[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!args.empty()) app["args"] = args;
  return nlohmann::json{{"applications", {app}}}.dump();
}

int RunCommand(const std::vector<std::string>& args) {
  Flags f = Flags::Parse(args, SetUnion(kNodeFlags, {"--working-dir", "--name", "--route-prefix", "-a", "--address"}),
                         {"--no-metrics", "--non-blocking"}, "ferry run --help");
  if (f.help) return std::cout << kRunUsage, 0;
  if (!f.error.empty()) return Fail(f.error);
  if (f.positional.empty()) return Fail("ferry run needs a CONFIG file or a MODULE:ATTR (see ferry run --help)");
  std::string error;
  std::optional<std::string> synthesized = ImportPathConfig(f, &error);
  if (!error.empty()) return Fail(error);
  if (!synthesized && f.positional.size() != 1)
    return Fail("ferry run takes one CONFIG file (KEY=VALUE arguments go with a MODULE:ATTR)");
  if (synthesized && (f.Get("-a") || f.Get("--address") || f.switches.count("--non-blocking"))) {
    const char* env_address = getenv("FERRY_ADDRESS");
    std::string address =
        f.Get("-a").value_or(f.Get("--address").value_or(env_address && *env_address ? env_address : kDefaultAddress));
    const char* env_token = getenv("FERRY_ADMIN_TOKEN");
    absl::StatusOr<AdminResponse> r =
        AdminRequest(address, "PUT", "/api/serve/applications/", *synthesized, env_token ? env_token : "",
                     {{"x-ferry-config-file", "command line"}});
    if (!r.ok()) return Fail(StrCat("cannot reach the node at ", address, ": ", r.status().message()), 1);
    if (r->status != 200) return ReportHttpError(*r);
    std::cout << "ferry: deployed " << f.positional[0] << " to " << address << " (see ferry status)\n";
    return 0;
  }
  cli::NodeOptions options;
  options.ferry_binary = SelfExecutable();
  options.hooks = Hooks(options.ferry_binary);
  std::optional<config::Config> config;
  if (synthesized) {
    absl::StatusOr<config::Config> parsed =
        config::ParseConfig(*synthesized, "command line", std::filesystem::current_path().string(), options.hooks);
    if (!parsed.ok()) {
      std::cerr << parsed.status().message() << "\nferry: the application has errors; nothing was started\n";
      return 1;
    }
    config = std::move(*parsed);
  } else {
    config = LoadOrReport(f.positional[0], options.hooks);
  }
  if (!config) return 1;
  for (const std::string& w : config->warnings) std::cerr << "warning: " << w << "\n";
  options.http = config->http_options;
  options.admin = config->admin;
  if (auto error = ApplyNodeFlags(f, options)) return Fail(*error);
  config->http_options = options.http;
  options.run_dir = f.Get("--run-dir").value_or("");
  options.initial_config = std::move(config);
  options.serve_after_ready = true;
  options.exit_on_start_failure = true;
  return cli::RunNode(options);
}

std::string DefaultStateDir() {
  if (const char* dir = getenv("FERRY_STATE_DIR"); dir && *dir) return dir;
  const char* home = getenv("HOME");
  return StrCat(home && *home ? home : "/tmp", "/.ferry");
}

// An existing node's pid from DIR/ferry.pid, if that process is alive.
std::optional<pid_t> RunningNode(const std::string& pid_file) {
  std::ifstream in(pid_file);
  long pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  if (kill(static_cast<pid_t>(pid), 0) != 0) return std::nullopt;
  std::ifstream cmdline(StrCat("/proc/", pid, "/cmdline"));
  std::string text((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
  if (text.find("ferry") == std::string::npos) return std::nullopt;  // the pid was reused by something else
  return static_cast<pid_t>(pid);
}

// `ferry start --cluster ...`: the node's membership, from its flags.
std::optional<std::string> ClusterFlags(const Flags& f, const cli::NodeOptions& node, cluster::ClusterOptions* out) {
  // TLS: files are read now (an error names the file), and kept as absolute paths (the node daemonizes).
  auto tls_files = [&](const char* ca, const char* cert, const char* key, TlsFiles* files) {
    for (auto [flag, field] : {std::pair{ca, &files->ca}, {cert, &files->cert}, {key, &files->key}})
      if (auto v = f.Get(flag)) *field = std::filesystem::absolute(*v).string();
  };
  TlsFiles etcd_files;
  tls_files("--etcd-cacert", "--etcd-cert", "--etcd-key", &etcd_files);
  std::shared_ptr<const TlsContext> etcd_tls;
  if (!etcd_files.ca.empty()) {
    absl::StatusOr<std::shared_ptr<const TlsContext>> context =
        TlsContext::Create(etcd_files, TlsContext::Role::kClient);
    if (!context.ok()) return StrCat("etcd TLS: ", Message(context.status()));
    etcd_tls = std::move(*context);
  } else if (!etcd_files.cert.empty() || !etcd_files.key.empty()) {
    return "--etcd-cert and --etcd-key need --etcd-cacert (the CA that signed etcd's certificate)";
  }
  tls_files("--tls-ca", "--tls-cert", "--tls-key", &out->frame_tls);
  const TlsFiles& frame = out->frame_tls;
  if (!frame.ca.empty() || !frame.cert.empty() || !frame.key.empty()) {
    if (frame.ca.empty() || frame.cert.empty() || frame.key.empty())
      return "TLS between nodes needs all of --tls-ca, --tls-cert and --tls-key";
    absl::StatusOr<std::shared_ptr<const TlsContext>> check = TlsContext::Create(frame, TlsContext::Role::kServer);
    if (!check.ok()) return StrCat("TLS between nodes: ", Message(check.status()));
  }
  absl::StatusOr<std::vector<HttpEndpoint>> etcd = cluster::ParseEtcdUrl(*f.Get("--cluster"), etcd_tls);
  if (!etcd.ok()) return StrCat("--cluster: ", Message(etcd.status()));
  out->etcd = std::move(*etcd);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  out->node_id = f.Get("--node-name").value_or(host);
  if (out->node_id.empty() || out->node_id.find_first_of("/ \t\n") != std::string::npos)
    return "--node-name needs a name without '/' or spaces";
  // How other nodes reach this one: --address, else the proxy's host when it is a concrete address.
  const std::string& http_host = node.http.host;
  out->address = f.Get("--address").value_or(http_host == "0.0.0.0" || http_host == "::" ? "127.0.0.1" : http_host);
  if (auto v = f.Get("--resources")) {
    nlohmann::json r = nlohmann::json::parse(*v, nullptr, false);
    if (!r.is_object()) return "--resources needs a JSON object, e.g. '{\"CPU\": 16, \"GPU\": 2}'";
    for (auto& [k, amount] : r.items())
      if (!amount.is_number() || amount.get<double>() < 0)
        return StrCat("--resources: \"", k, "\" needs a non-negative number");
    out->resources = std::move(r);
  } else {
    out->resources = {{"CPU", std::max(1u, std::thread::hardware_concurrency())}};
  }
  if (auto v = f.Get("--labels")) {
    std::string_view rest = *v;
    while (!rest.empty()) {
      std::string_view kv = rest.substr(0, rest.find(','));
      rest.remove_prefix(std::min(rest.size(), kv.size() + 1));
      size_t eq = kv.find('=');
      if (eq == std::string_view::npos || eq == 0)
        return StrCat("--labels needs KEY=VALUE[,KEY=VALUE...], got \"", kv, "\"");
      out->labels[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
  }
  if (auto v = f.Get("--lease-ttl-s")) {
    int ttl;
    if (!ParseInt(*v, &ttl) || ttl < 1 || ttl > 600) return "--lease-ttl-s needs a number of seconds from 1 to 600";
    out->lease_ttl_s = ttl;
  }
  if (auto v = f.Get("--cluster-token-file")) {
    std::ifstream in(*v);
    std::string token;
    if (!in || !std::getline(in, token)) return StrCat("--cluster-token-file: cannot read ", *v);
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
    if (token.size() < 16) return StrCat("--cluster-token-file: the token in ", *v, " is shorter than 16 characters");
    out->token = std::move(token);
  }
  return std::nullopt;
}

int StartCommand(const std::vector<std::string>& args) {
  Flags f = Flags::Parse(args,
                         SetUnion(kNodeFlags, {"--cluster", "--node-name", "--address", "--resources", "--labels",
                                               "--lease-ttl-s", "--cluster-token-file", "--tls-ca", "--tls-cert",
                                               "--tls-key", "--etcd-cacert", "--etcd-cert", "--etcd-key"}),
                         {"--foreground", "--no-metrics"}, "ferry start --help");
  if (f.help) return std::cout << kStartUsage, 0;
  if (!f.error.empty()) return Fail(f.error);
  if (f.positional.size() > 1) return Fail("ferry start takes at most one CONFIG file (see ferry start --help)");
  cli::NodeOptions options;
  options.ferry_binary = SelfExecutable();
  options.hooks = Hooks(options.ferry_binary);
  if (!f.positional.empty()) {
    std::optional<config::Config> config = LoadOrReport(f.positional[0], options.hooks);
    if (!config) return 1;
    options.http = config->http_options;
    options.admin = config->admin;
    options.initial_config = std::move(config);
  }
  if (auto error = ApplyNodeFlags(f, options)) return Fail(*error);
  if (options.initial_config) options.initial_config->http_options = options.http;
  if (f.Get("--cluster")) {
    if (options.initial_config && !options.initial_config->applications.empty())
      return Fail(
          "a cluster node takes no applications at start: deploy them with ferry deploy CONFIG --address "
          "<any node's admin URL> (CONFIG may still set http_options and admin)");
    options.initial_config.reset();
    cluster::ClusterOptions cluster;
    if (auto error = ClusterFlags(f, options, &cluster)) return Fail(*error);
    options.cluster = std::move(cluster);
  } else {
    for (const char* flag :
         {"--node-name", "--address", "--resources", "--labels", "--lease-ttl-s", "--cluster-token-file", "--tls-ca",
          "--tls-cert", "--tls-key", "--etcd-cacert", "--etcd-cert", "--etcd-key"})
      if (f.Get(flag)) return Fail(StrCat(flag, " is for cluster nodes: add --cluster etcd://HOST:PORT"));
  }
  std::string state_dir = std::filesystem::absolute(f.Get("--state-dir").value_or(DefaultStateDir())).string();
  std::error_code ec;
  std::filesystem::create_directories(state_dir + "/run", ec);
  if (ec) return Fail(StrCat("cannot create ", state_dir, ": ", ec.message()), 1);
  options.state_dir = state_dir;
  options.run_dir = state_dir + "/run";
  const std::string pid_file = state_dir + "/ferry.pid";
  if (auto pid = RunningNode(pid_file))
    return Fail(StrCat("a node already runs from ", state_dir, " (pid ", *pid, ")"), 1);

  if (f.switches.count("--foreground")) {
    std::ofstream(pid_file) << getpid() << "\n";
    int code = cli::RunNode(options);
    std::filesystem::remove(pid_file, ec);
    return code;
  }
  // Daemonize: the child runs the node with its output in the log; the parent waits for it to be ready.
  Pipe ready = Pipe::Make();
  if (!ready.ok) return Fail("pipe failed", 1);
  pid_t child = fork();
  if (child < 0) return Fail("fork failed", 1);
  if (child == 0) {
    ready.read.reset();
    setsid();
    {  // the copies at 0-2 stay; the originals close at the end of this block
      UniqueFd log(open((state_dir + "/ferry.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
      UniqueFd devnull(open("/dev/null", O_RDONLY | O_CLOEXEC));
      if (devnull) dup2(devnull.get(), STDIN_FILENO);
      if (log) {
        dup2(log.get(), STDOUT_FILENO);
        dup2(log.get(), STDERR_FILENO);
      }
    }
    std::ofstream(pid_file) << getpid() << "\n";
    options.daemon = true;
    auto ready_w = std::make_shared<UniqueFd>(std::move(ready.write));
    options.on_ready = [ready_w](const std::string& summary) {
      std::string line = summary + "\n";
      ssize_t n = write(ready_w->get(), line.data(), line.size());
      (void)n;
      ready_w->reset();  // the parent reads to the end: this is it
    };
    int code = cli::RunNode(options);
    std::filesystem::remove(pid_file, ec);
    _exit(code);
  }
  ready.write.reset();
  std::string summary;
  char buf[1024];
  ssize_t n;
  while ((n = read(ready.read.get(), buf, sizeof(buf))) > 0) summary.append(buf, static_cast<size_t>(n));
  ready.read.reset();
  if (summary.empty()) {
    int status = 0;
    waitpid(child, &status, WNOHANG);
    std::cerr << "ferry: the node did not start; see " << state_dir << "/ferry.log\n";
    std::ifstream log(state_dir + "/ferry.log");
    std::string line, tail;
    std::vector<std::string> lines;
    while (std::getline(log, line)) lines.push_back(line);
    for (size_t i = lines.size() > 10 ? lines.size() - 10 : 0; i < lines.size(); ++i) std::cerr << lines[i] << "\n";
    return 1;
  }
  std::cout << summary << "ferry: node started (pid " << child << "); state in " << state_dir << ", log in "
            << state_dir << "/ferry.log\n";
  return 0;
}

struct ClientContext {
  std::string address;
  std::string token;
};

std::optional<ClientContext> ClientFrom(const Flags& f) {
  ClientContext c;
  const char* env_address = getenv("FERRY_ADDRESS");
  c.address = f.Get("--address").value_or(env_address && *env_address ? env_address : kDefaultAddress);
  const char* env_token = getenv("FERRY_ADMIN_TOKEN");
  c.token = f.Get("--token").value_or(env_token ? env_token : "");
  return c;
}

// Prints a failed admin call's reason; returns the exit code.
int ReportHttpError(const AdminResponse& r) {
  nlohmann::json body = nlohmann::json::parse(r.body, nullptr, false);
  std::cerr << "ferry: the node answered " << r.status;
  if (body.is_object() && body.contains("error")) std::cerr << ": " << body["error"].get<std::string>();
  std::cerr << "\n";
  if (body.is_object() && body.contains("errors"))
    for (const auto& e : body["errors"]) std::cerr << e.get<std::string>() << "\n";
  return 1;
}

// 2, 0.5, 6.4e+10: a resource amount as a person reads it.
std::string FormatNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// ferry drain NODE: marks it draining (through the leader), then waits until no replica is left on it.
int DrainNode(const ClientContext& c, const std::string& node, bool wait, int timeout_s) {
  absl::StatusOr<AdminResponse> r =
      AdminRequest(c.address, "POST", StrCat("/api/ferry/nodes/", node, "/drain"), "", c.token);
  if (!r.ok()) return Fail(std::string(Message(r.status())), 1);
  if (r->status != 202) return ReportHttpError(*r);
  std::cout << "ferry: node " << node << " is draining: it takes no new replicas, and its replicas move to other "
            << "nodes (replacements first)" << std::endl;
  if (!wait) return 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int last = -1;
  while (std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<AdminResponse> nodes = AdminRequest(c.address, "GET", "/api/ferry/nodes", "", c.token);
    if (nodes.ok() && nodes->status == 200) {
      nlohmann::json body = nlohmann::json::parse(nodes->body, nullptr, false);
      if (body.is_object() && body.contains("nodes") && body["nodes"].is_array())
        for (const auto& n : body["nodes"])
          if (n.is_object() && n.value("node_id", "") == node) {
            const int left = n.value("replicas", 0);
            if (left == 0) {
              std::cout << "ferry: node " << node << " is drained" << std::endl;
              return 0;
            }
            if (left != last) std::cout << "ferry: " << left << " replicas left on " << node << std::endl;
            last = left;
          }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return Fail(StrCat("node ", node, " still has ", last, " replicas after ", timeout_s,
                     " s (ferry status says why: a replacement that fits nowhere keeps the old one serving)"),
              1);
}

int ClientCommand(const std::string& command, const std::vector<std::string>& args) {
  Flags f = Flags::Parse(args, {"--address", "-a", "--token", "--interval", "--count", "-n", "--name", "--timeout-s"},
                         {"--json", "--watch", "-y", "--yes", "--no-wait"}, "ferry --help");
  if (f.help) return std::cout << kClientUsage, 0;
  if (!f.error.empty()) return Fail(f.error);
  if (auto a = f.Get("-a")) f.values["--address"] = *a;
  const std::optional<std::string> app_name = f.Get("-n") ? f.Get("-n") : f.Get("--name");
  std::optional<ClientContext> c = ClientFrom(f);
  if (command == "status" && !f.switches.count("--json") && !app_name) {
    // Live traffic needs two scrapes of /metrics, --interval apart (1 s by default).
    cli::StatusOptions s{c->address, c->token};
    s.watch = f.switches.count("--watch") > 0;
    if (auto v = f.Get("--interval")) {
      char* end = nullptr;
      s.interval_s = std::strtod(v->c_str(), &end);
      if (end == v->c_str() || *end || !(s.interval_s > 0))
        return Fail("--interval needs a positive number of seconds");
    }
    if (auto v = f.Get("--count"); v && (!ParseInt(*v, &s.count) || s.count < 0))
      return Fail("--count needs a non-negative integer (0: until Ctrl-C)");
    return cli::RunStatus(s);
  }
  absl::StatusOr<AdminResponse> r;
  if (command == "deploy") {
    if (f.positional.size() != 1) return Fail("ferry deploy needs one CONFIG file");
    std::ifstream in(f.positional[0], std::ios::binary);
    if (!in) return Fail(StrCat(f.positional[0], ": cannot read config file"), 1);
    std::stringstream text;
    text << in.rdbuf();
    std::string dir = std::filesystem::absolute(f.positional[0]).parent_path().string();
    r = AdminRequest(c->address, "PUT", "/api/serve/applications/", text.str(), c->token,
                     {{"x-ferry-config-dir", dir}, {"x-ferry-config-file", f.positional[0]}});
  } else if (command == "status") {
    r = AdminRequest(c->address, "GET", "/api/serve/applications/", "", c->token);
  } else if (command == "config") {
    r = AdminRequest(c->address, "GET", "/api/ferry/config", "", c->token);
  } else if (command == "rollback") {
    if (f.positional.size() != 1) return Fail("ferry rollback needs an APPLICATION name");
    r = AdminRequest(c->address, "POST", StrCat("/api/ferry/applications/", f.positional[0], "/rollback"), "",
                     c->token);
  } else if (command == "shutdown") {
    r = AdminRequest(c->address, "POST", "/api/ferry/shutdown", "", c->token);
  } else if (command == "nodes") {
    r = AdminRequest(c->address, "GET", "/api/ferry/nodes", "", c->token);
  } else if (command == "drain") {
    if (f.positional.size() != 1) return Fail("ferry drain needs a NODE name (see ferry nodes)");
    int timeout_s = 300;
    if (auto v = f.Get("--timeout-s"); v && (!ParseInt(*v, &timeout_s) || timeout_s < 1))
      return Fail("--timeout-s needs a positive number of seconds");
    return DrainNode(*c, f.positional[0], !f.switches.count("--no-wait"), timeout_s);
  }
  if (!r.ok()) return Fail(std::string(Message(r.status())), 1);
  if (r->status != 200) return ReportHttpError(*r);
  nlohmann::json body = nlohmann::json::parse(r->body, nullptr, false);
  if (command == "status" && app_name) {
    if (!body.contains("applications") || !body["applications"].contains(*app_name))
      return Fail(StrCat("no application named \"", *app_name, "\""), 1);
    nlohmann::json app = body["applications"][*app_name];
    app.erase("deployed_app_config");
    std::cout << (f.switches.count("--json") ? app.dump(2) + "\n" : JsonToYaml(app));
  } else if (command == "status") {
    std::cout << body.dump(2) << "\n";  // --json: the admin API's document, as it is
  } else if (command == "nodes") {
    if (f.switches.count("--json")) return std::cout << body.dump(2) << "\n", 0;
    std::printf("%-20s %-8s %-7s %-16s %-8s %-40s %s\n", "NODE", "STATE", "LEADER", "ADDRESS", "REPLICAS",
                "RESOURCES (used/total)", "LABELS");
    for (const auto& n : body.value("nodes", nlohmann::json::array())) {
      std::string labels;
      const nlohmann::json given = n.value("labels", nlohmann::json::object());
      for (auto& [k, v] : given.items())
        labels += StrCat(labels.empty() ? "" : ",", k, "=", v.is_string() ? v.get<std::string>() : v.dump());
      // Each declared resource as used/total: "CPU 2/16, GPU 1/2".
      std::string resources;
      const nlohmann::json total = n.value("resources", nlohmann::json::object());
      const nlohmann::json used = n.value("resources_used", nlohmann::json::object());
      for (auto& [k, v] : total.items()) {
        if (!v.is_number()) continue;
        const double u = used.contains(k) && used[k].is_number() ? used[k].get<double>() : 0;
        resources += StrCat(resources.empty() ? "" : ", ", k, " ", FormatNumber(u), "/", FormatNumber(v.get<double>()));
      }
      std::printf("%-20s %-8s %-7s %-16s %-8d %-40s %s\n", n.value("node_id", "").c_str(), n.value("state", "").c_str(),
                  n.value("leader", false) ? "yes" : "", n.value("address", "").c_str(), n.value("replicas", 0),
                  resources.c_str(), labels.c_str());
    }
  } else if (command == "config" && app_name) {
    if (body.is_object() && body.contains("applications"))
      for (const auto& app : body["applications"])
        if (app.value("name", "") == *app_name) return std::cout << JsonToYaml(app), 0;
    return Fail(StrCat("no application named \"", *app_name, "\""), 1);
  } else if (command == "config") {
    std::cout << (body.is_null() ? "# nothing deployed\n" : JsonToYaml(body));
  } else {
    if (body.contains("warnings") && body["warnings"].is_array())
      for (const auto& w : body["warnings"]) std::cerr << "ferry: warning: " << w.get<std::string>() << "\n";
    std::cout << "ferry: " << body.value("result", "done") << "\n";
  }
  return 0;
}

// ferry build IMPORT_PATH... [-o FILE] [-d DIR]: Ray's `serve build`.
int BuildCommand(const std::vector<std::string>& args) {
  Flags f = Flags::Parse(args, {"-o", "--output-path", "-d", "--app-dir"}, {}, "ferry --help");
  if (f.help) return std::cout << kClientUsage, 0;
  if (!f.error.empty()) return Fail(f.error);
  if (f.positional.empty()) return Fail("ferry build needs at least one IMPORT_PATH (module:attr)");
  const std::string dir =
      std::filesystem::absolute(f.Get("-d").value_or(f.Get("--app-dir").value_or("."))).lexically_normal().string();
  config::RuntimeEnv env;
  env.config_dir = dir;
  // The modules are found in the config file's directory: when it is not DIR, the file names DIR as the
  // working_dir (relative to itself).
  std::optional<std::string> out = f.Get("-o") ? f.Get("-o") : f.Get("--output-path");
  const std::filesystem::path out_dir =
      out ? std::filesystem::absolute(*out).parent_path() : std::filesystem::current_path();
  nlohmann::json runtime_env = nlohmann::json::object();
  if (out_dir.lexically_normal() != std::filesystem::path(dir))
    runtime_env["working_dir"] = std::filesystem::path(dir).lexically_relative(out_dir).string();
  nlohmann::json apps = nlohmann::json::array();
  for (size_t i = 0; i < f.positional.size(); ++i) {
    const std::string& import_path = f.positional[i];
    absl::StatusOr<config::PythonApp> built = cli::BuildPythonApp(import_path, nlohmann::json::object(), env);
    if (!built.ok()) return Fail(StrCat("cannot import ", import_path, ": ", Message(built.status())), 1);
    nlohmann::json deployments = nlohmann::json::array();
    for (const auto& d : built->deployments) {
      nlohmann::json entry = {{"name", d.name}};
      for (const auto& [k, v] : d.options.items()) entry[k] = v;
      deployments.push_back(entry);
    }
    apps.push_back({{"name", StrCat("app", i + 1)},
                    {"route_prefix", f.positional.size() == 1 ? "/" : StrCat("/app", i + 1)},
                    {"import_path", import_path},
                    {"runtime_env", runtime_env},
                    {"deployments", deployments}});
  }
  nlohmann::json config = {
      {"proxy_location", "EveryNode"},
      {"http_options", {{"host", "0.0.0.0"}, {"port", 8000}}},
      {"grpc_options", {{"port", 9000}, {"grpc_servicer_functions", nlohmann::json::array()}}},
      {"logging_config",
       {{"encoding", "TEXT"}, {"log_level", "INFO"}, {"logs_dir", nullptr}, {"enable_access_log", true}}},
      {"applications", apps}};
  std::string text =
      "# Written by `ferry build`; deploy it with `ferry deploy` or `ferry run`.\n\n" + JsonToYaml(config);
  if (!out) return std::cout << text, 0;
  std::ofstream file(*out);
  if (!(file << text)) return Fail(StrCat("cannot write ", *out), 1);
  std::cout << "ferry: wrote " << *out << "\n";
  return 0;
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
    else if (args[i] == "--log-fd")
      ParseInt(args[i + 1], &options.log_fd);
    else if (args[i] == "--log-level") {
      LogLevel level;
      if (ParseLogLevel(args[i + 1], &level)) Log::SetLevel(level);
    }
  }
  if (options.spec_path.empty() || options.socket_path.empty())
    return Fail("replica mode is started by the node agent: ferry replica --spec FILE --socket PATH --status-fd N");
  // A cluster node's token, from its node (the environment, not the spec file): the user's code does not
  // see it.
  if (const char* token = getenv("FERRY_CLUSTER_TOKEN")) {
    transport::SetFrameToken(token);
    unsetenv("FERRY_CLUSTER_TOKEN");
  }
  // Its node's TLS between nodes: the replica serves its TCP clients over it.
  if (const char* ca = getenv("FERRY_TLS_CA")) {
    TlsFiles files{ca, getenv("FERRY_TLS_CERT") ? getenv("FERRY_TLS_CERT") : "",
                   getenv("FERRY_TLS_KEY") ? getenv("FERRY_TLS_KEY") : ""};
    if (absl::Status tls = transport::SetFrameTls(files); !tls.ok()) return Fail(StrCat("TLS: ", Message(tls)));
    for (const char* name : {"FERRY_TLS_CA", "FERRY_TLS_CERT", "FERRY_TLS_KEY"}) unsetenv(name);
  }
  return replica::RunReplica(options);
}

// ferry check-plugin PATH SYMBOL: exit 0 when the library loads and exports the deployment.
int CheckPluginCommand(const std::vector<std::string>& args) {
  if (args.size() != 2) return Fail("usage: ferry check-plugin LIBRARY CLASS");
  absl::Status s = config::CheckPluginInChildProcess(args[0], args[1]);
  if (!s.ok()) {
    std::cerr << Message(s) << "\n";
    return 1;
  }
  return 0;
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
  if (command == "start") return ferry::StartCommand(args);
  if (command == "deploy" || command == "status" || command == "config" || command == "rollback" ||
      command == "shutdown" || command == "nodes" || command == "drain")
    return ferry::ClientCommand(command, args);
  if (command == "build") return ferry::BuildCommand(args);
  if (command == "replica") return ferry::ReplicaCommand(args);
  if (command == "check-plugin") return ferry::CheckPluginCommand(args);
  return ferry::Fail(ferry::StrCat("unknown command \"", command, "\" (see ferry --help)"));
}
