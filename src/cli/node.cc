#include "cli/node.h"

#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "admin/admin_server.h"
#include "cluster/cluster_launcher.h"
#include "cluster/cluster_publisher.h"
#include "common/common.h"
#include "controller/controller.h"
#include "controller/state_store.h"
#include "endpoints/endpoints.h"
#include "metrics/metrics.h"
#include "proxy/proxy.h"
#include "router/router_set.h"
#include "tracing/tracing.h"
#include "transport/address.h"

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
  options.body_stream_threshold_bytes = static_cast<uint64_t>(h.body_stream_threshold_bytes);
  options.websocket_max_message_bytes = static_cast<uint64_t>(h.websocket_max_message_bytes);
  options.websocket_idle_timeout = Millis(h.websocket_idle_timeout_s);
  options.websocket_ping_interval = Millis(h.websocket_ping_interval_s);
  return options;
}

// A problem the node reports on stderr: "ferry: ..." as it is, or an ERROR log line of component "node"
// when the logging_config says JSON (so every line a log shipper reads is JSON).
void Complain(std::string_view text) {
  if (Log::encoding() == LogEncoding::kJson) {
    Log::Write(LogLevel::kError, "node", text.starts_with("ferry: ") ? text.substr(7) : text);
  } else {
    std::cerr << text << std::endl;
  }
}

// The largest graceful_shutdown_timeout_s of what is deployed: how long the proxy lets requests finish.
double DrainSeconds(const std::optional<config::Config>& config) {
  double drain_s = 0;
  if (!config) return drain_s;
  for (const auto& app : config->applications)
    for (const auto& d : app.deployments) drain_s = std::max(drain_s, d.graceful_shutdown_timeout_s);
  return drain_s;
}

class Node {
 public:
  Node(const NodeOptions& options, std::unique_ptr<proxy::Proxy> proxy, metrics::Registry* metrics,
       tracing::Tracer* tracer)
      : options_(options),
        proxy_(std::move(proxy)),
        metrics_(metrics),
        tracer_(tracer),
        signals_(io_, SIGINT, SIGTERM) {}

  ~Node() {
    if (cluster_publisher_) cluster_publisher_->Stop();
    if (member_) member_->Stop();  // resigns: a standby leads at its next step
    if (admin_) admin_->Stop();
    if (drainer_.joinable()) drainer_.join();
    proxy_->Stop();
    control_.reset();  // kills whatever replica is left (in cluster mode, the worker's)
    worker_.reset();
  }

  absl::Status Create(endpoints::LocalPublisher* local_publisher, const std::string& run_dir,
                      handle::HandleClient* handles) {
    publisher_ = local_publisher;
    run_dir_ = run_dir;
    absl::StatusOr<std::string> token = config::LoadAdminToken(options_.admin);
    if (!token.ok()) return token.status();
    if (options_.cluster) {
      cluster::ClusterMember::Callbacks membership;
      membership.on_elected = [this](int64_t fence) {
        cluster_publisher_->SourceChanged();  // route by this node's controller from now on
        boost::asio::post(io_, [this, fence] { Lead(fence); });
      };
      membership.on_deposed = [this] {
        cluster_publisher_->SourceChanged();  // route by what the next leader publishes
        boost::asio::post(io_, [this] {
          Say(StrCat("ferry: node ", options_.cluster->node_id,
                     " no longer leads; it keeps serving what it runs until another node leads"));
        });
      };
      membership.on_other_leader = [this](const cluster::NodeInfo& leader) {
        boost::asio::post(io_, [this, id = leader.node_id] { StandDown(id); });
      };
      member_ = std::make_unique<cluster::ClusterMember>(*options_.cluster, std::move(membership));
      store_ = std::make_unique<cluster::EtcdStateStore>(member_.get());
      cluster_publisher_ = std::make_unique<cluster::ClusterPublisher>(
          member_.get(), local_publisher, [this](std::function<void()> f) { boost::asio::post(io_, std::move(f)); },
          *token);
      publisher_ = cluster_publisher_.get();
      // The replicas the leader assigns to this node run here, fed endpoint snapshots like the proxy.
      absl::StatusOr<std::unique_ptr<cluster::NodeWorker>> worker =
          cluster::NodeWorker::Create(io_, member_.get(), options_.ferry_binary, run_dir_, publisher_);
      if (!worker.ok()) return worker.status();
      worker_ = std::move(*worker);
    } else if (!options_.state_dir.empty()) {
      absl::StatusOr<std::unique_ptr<controller::EmbeddedStateStore>> store =
          controller::EmbeddedStateStore::Open(options_.state_dir);
      if (!store.ok()) return store.status();
      store_ = std::move(*store);
    }
    controller::ControllerCallbacks callbacks;
    if (options_.serve_after_ready)
      callbacks.on_progress = [this](const std::string& line) { Say(StrCat("ferry: starting ", line)); };
    callbacks.on_all_ready = [this] {
      if (!http_open_) OpenHttp();
    };
    callbacks.on_start_failure = [this](const std::string& what, const std::string& message) {
      if (!options_.exit_on_start_failure || http_open_ || failed_) return;
      failed_ = true;
      Complain(StrCat("ferry: ", what, " failed to start: ", message));
      exit_code_ = 1;
      control_->Shutdown([this] { io_.stop(); });
    };
    callbacks_ = callbacks;
    if (absl::Status made = MakeController(); !made.ok()) return made;

    if (token->empty() && !options_.admin.IsLoopback())
      return absl::FailedPreconditionError(
          StrCat("the admin API would listen on ", options_.admin.host,
                 " without a token: deploying runs code, so off loopback it needs admin.auth_token or "
                 "admin.auth_token_file (or --admin-token-file)"));
    admin::AdminServerOptions admin;
    admin.host = options_.admin.host;
    admin.port = options_.admin.port;
    admin.token = *token;
    admin.node_http = options_.http;
    admin.node_admin = options_.admin;
    admin.hooks = options_.hooks;
    admin.on_shutdown = [this] { boost::asio::post(io_, [this] { BeginStop("admin API shutdown"); }); };
    admin.metrics = metrics_;
    admin.handles = handles;
    if (member_) {
      admin.leader_admin = [this]() -> std::optional<std::string> {
        if (member_->leading()) return std::nullopt;
        std::optional<cluster::NodeInfo> leader = member_->LeaderNow();
        if (!leader || leader->node_id == options_.cluster->node_id) return std::string();  // nobody (known) leads
        return leader->admin_url;
      };
      admin.reports = [this] { return cluster_publisher_->RemoteReports(); };
      admin.drain = [this](const std::string& node) { return member_->Drain(node); };
      admin.nodes = [this]() -> absl::StatusOr<nlohmann::json> {
        absl::StatusOr<std::vector<cluster::NodeInfo>> nodes = member_->Nodes();
        if (!nodes.ok()) return nodes.status();
        nlohmann::json out = nlohmann::json::array();
        for (const auto& n : *nodes) out.push_back(cluster::NodeJson(n));
        return out;
      };
    }
    absl::StatusOr<std::unique_ptr<admin::AdminServer>> server = admin::AdminServer::Create(admin, io_, control_.get());
    if (!server.ok()) return server.status();
    admin_ = std::move(*server);
    return absl::OkStatus();
  }

  int Run() {
    WaitForSignal();
    admin_->Start();
    control_->Start();
    if (member_) {
      // The controller acts once this node is elected (Lead); until then the node serves what it has.
      OpenHttp();
      const std::string& ip = options_.cluster->address;
      absl::Status joined =
          member_->Start(StrCat("http://", ip, ":", admin_->port()), StrCat("http://", ip, ":", proxy_->port()));
      if (!joined.ok()) {
        Complain(StrCat("ferry: cannot join the cluster: ", Message(joined)));
        return 1;
      }
      cluster_publisher_->Start();
      worker_->Start();
      io_.run();
      return exit_code_;
    }
    absl::Status restored = control_->Restore();
    if (!restored.ok()) Complain(StrCat("ferry: could not restore the saved state: ", Message(restored)));
    if (options_.initial_config) {
      absl::Status applied = control_->Apply(*options_.initial_config);
      if (!applied.ok()) Complain(StrCat("ferry: ", Message(applied)));
    }
    if (!options_.serve_after_ready) OpenHttp();
    io_.run();
    return exit_code_;
  }

 private:
  absl::Status MakeController() {
    controller::ControllerOptions controller_options;
    controller_options.tracer = tracer_;
    if (options_.cluster) {
      controller_options.node_id = options_.cluster->node_id;
      controller_options.node_ip = options_.cluster->address;
      controller_options.replica_tcp_host = options_.cluster->address;  // other nodes reach its replicas
      // Whichever node leads places replicas on every node's worker, through etcd.
      control_ = controller::Controller::CreateWithLauncher(
          io_,
          [this](node::ReplicaListener* listener) {
            auto launcher = std::make_unique<cluster::ClusterLauncher>(io_, member_.get(), listener);
            cluster_launcher_ = launcher.get();
            return launcher;
          },
          publisher_, store_.get(), callbacks_, controller_options);
      return absl::OkStatus();
    }
    absl::StatusOr<std::unique_ptr<controller::Controller>> created = controller::Controller::Create(
        io_, options_.ferry_binary, run_dir_, publisher_, store_.get(), callbacks_, controller_options);
    if (!created.ok()) return created.status();
    control_ = std::move(*created);
    return absl::OkStatus();
  }

  // Elected: the desired state comes from etcd and this node's controller converges to it.
  void Lead(int64_t fence) {
    if (stopping_) return;
    if (standing_down_) {  // re-elected while the old term's replicas still stop: lead once they have
      pending_fence_ = fence;
      return;
    }
    Say(StrCat("ferry: node ", options_.cluster->node_id, " leads the cluster (fence ", fence, ")"));
    // The replicas to take over are in the launcher's mirror of etcd once it has seen this election.
    cluster_launcher_->WhenCaughtUp(fence, [this, fence](bool) {  // behind: Restore reads etcd instead
      if (stopping_ || member_->fence() != fence) return;         // deposed meanwhile
      // The state in etcd wins over what this node may still run from an earlier term (Restore applies it
      // as an update: what did not change keeps running).
      absl::Status restored = control_->Restore();
      if (!restored.ok()) Complain(StrCat("ferry: could not restore the cluster's state: ", Message(restored)));
    });
  }

  // Another node leads: what this one ran as the cluster's leader is that node's to run now, so it stops
  // it and waits as a standby (its controller forgets the applications without saving anything).
  void StandDown(const std::string& leader) {
    if (stopping_ || standing_down_ || member_->leading() || !control_->applied_config()) return;
    standing_down_ = true;
    Say(StrCat("ferry: node ", leader, " leads the cluster; node ", options_.cluster->node_id,
               " stops the replicas it ran as the leader"));
    control_->StandDown([this] {
      boost::asio::post(io_, [this] {
        standing_down_ = false;
        if (pending_fence_ && member_->fence() == *pending_fence_) Lead(*pending_fence_);
        pending_fence_.reset();
      });
    });
  }

  void OpenHttp() {
    proxy_->Start();
    http_open_ = true;
    std::string base = StrCat("http://", options_.http.host, ":", proxy_->port());
    std::string summary =
        StrCat("ferry: listening on ", base, "\nferry: admin API at http://", options_.admin.host, ":", admin_->port());
    if (const auto& applied = control_->applied_config()) {
      for (const auto& app : applied->applications)
        summary += StrCat("\nferry: application \"", app.name, "\" at ", base,
                          app.route_prefix == "/" ? "/" : app.route_prefix);
    }
    summary += "\nferry: ready";
    Say(summary);
    if (options_.on_ready) options_.on_ready(summary);
  }

  // What the node tells its operator: printed to stdout as it is, or as log lines of component "node"
  // (one per line, without the "ferry: " prefix) where a log shipper reads the stream: a daemon's (its
  // stdout is its log file), and a foreground node's whose logging_config says JSON (every line JSON).
  void Say(std::string_view text) {
    const bool as_log_lines = options_.daemon || Log::encoding() == LogEncoding::kJson;
    if (!as_log_lines) {
      std::cout << text << std::endl;
      return;
    }
    std::string out;
    for (std::string_view rest = text; !rest.empty();) {
      std::string_view line = rest.substr(0, rest.find('\n'));
      rest.remove_prefix(std::min(rest.size(), line.size() + 1));
      if (line.starts_with("ferry: ")) line.remove_prefix(7);
      if (options_.daemon) {
        Log::Write(LogLevel::kInfo, "node", line);
      } else {
        Log::Format(LogLevel::kInfo, "node", line, {}, &out);
      }
    }
    if (!out.empty()) std::cout << out << std::flush;
  }

  void WaitForSignal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
      if (!ec) BeginStop(strsignal(signo));
    });
  }

  void BeginStop(const std::string& why) {
    if (stopping_) {
      Complain("ferry: second signal; stopping now");
      exit_code_ = 1;
      proxy_->Stop();  // drops requests in flight, which also ends the drain
      io_.stop();
      return;
    }
    stopping_ = true;
    if (worker_ && !drain_started_ && worker_->live_replicas() > 0 && !OtherNodeCanTakeOver()) {
      Say(StrCat("ferry: ", why, ": node ", options_.cluster->node_id,
                 " is the cluster's last live node: its replicas have nowhere to move, so it stops them"));
      drain_started_ = true;
    }
    if (worker_ && !drain_started_) {
      // A cluster node leaving (a rolling upgrade, a spot preemption): it drains first. Marked draining, it
      // takes no new replicas and the leader starts replacements for its replicas elsewhere before stopping
      // them here; meanwhile its proxy serves on. Then it leaves as below.
      drain_started_ = true;
      absl::Status marked = member_->DrainSelf();
      if (!marked.ok()) {
        Complain(StrCat("ferry: cannot mark node ", options_.cluster->node_id, " draining (", Message(marked),
                        "); leaving without moving its replicas first"));
      } else {
        Say(StrCat("ferry: ", why, ": node ", options_.cluster->node_id, " drains: its ", worker_->live_replicas(),
                   " replicas move to other nodes first"));
        drain_deadline_ = std::chrono::steady_clock::now() + kNodeDrainLimit;
        WaitForSignal();
        WaitForWorkerEmpty(why);
        return;
      }
    }
    double drain_s = DrainSeconds(control_->applied_config());
    Say(StrCat("ferry: ", why, ": draining ", proxy_->in_flight(), " requests in flight (up to ", drain_s, " s)"));
    WaitForSignal();
    // Draining blocks; do it off the control thread so that replicas keep being watched meanwhile.
    drainer_ = std::thread([this, drain_s] {
      int left = http_open_ ? proxy_->Drain(Millis(drain_s)) : 0;
      boost::asio::post(io_, [this, left] { StopReplicas(left); });
    });
  }

  // Whether another node is alive and not draining (true when etcd cannot say: the drain then tries).
  bool OtherNodeCanTakeOver() {
    absl::StatusOr<std::vector<cluster::NodeInfo>> nodes = member_->Nodes();
    if (!nodes.ok()) return true;
    return std::any_of(nodes->begin(), nodes->end(), [this](const cluster::NodeInfo& n) {
      return n.alive && !n.draining && n.node_id != options_.cluster->node_id;
    });
  }

  // Polls until the leader has moved every replica off this node (or the drain limit passes), then stops.
  void WaitForWorkerEmpty(const std::string& why) {
    if (worker_->live_replicas() == 0 || std::chrono::steady_clock::now() >= drain_deadline_) {
      if (worker_->live_replicas() > 0)
        Complain(StrCat("ferry: ", worker_->live_replicas(), " replicas still here after ",
                        std::chrono::duration_cast<std::chrono::seconds>(kNodeDrainLimit).count(),
                        " s of draining; stopping them"));
      stopping_ = false;  // the second half of a normal stop: drain the proxy, leave
      BeginStop(why);
      return;
    }
    drain_timer_.expires_after(std::chrono::milliseconds(200));
    drain_timer_.async_wait([this, why](const boost::system::error_code& ec) {
      if (!ec) WaitForWorkerEmpty(why);
    });
  }

  void StopReplicas(int requests_left) {
    if (requests_left > 0)
      Complain(StrCat("ferry: graceful_shutdown_timeout_s passed with ", requests_left, " requests in flight"));
    proxy_->Stop();
    if (worker_) {
      // A cluster node leaves: it resigns (the next leader places its replicas elsewhere at once) and stops
      // what it runs. What runs on other nodes keeps running.
      cluster_publisher_->Stop();
      member_->Stop();
      worker_->StopAll([this] {
        Say("ferry: stopped");
        io_.stop();
      });
      return;
    }
    control_->Shutdown([this] {
      Say("ferry: stopped");
      io_.stop();
    });
  }

  const NodeOptions& options_;
  boost::asio::io_context io_{1};
  std::unique_ptr<proxy::Proxy> proxy_;
  metrics::Registry* metrics_;
  tracing::Tracer* tracer_;
  endpoints::Publisher* publisher_ = nullptr;
  std::string run_dir_;
  controller::ControllerCallbacks callbacks_;
  std::unique_ptr<cluster::ClusterMember> member_;                // cluster mode only
  std::unique_ptr<cluster::ClusterPublisher> cluster_publisher_;  // cluster mode: between controller and routers
  std::unique_ptr<cluster::NodeWorker> worker_;                   // cluster mode: runs this node's replicas
  cluster::ClusterLauncher* cluster_launcher_ = nullptr;          // cluster mode: the controller's launcher
  // Cluster mode's stop: drained first (its replicas moved), for at most kNodeDrainLimit.
  static constexpr std::chrono::seconds kNodeDrainLimit{120};
  bool drain_started_ = false;
  std::chrono::steady_clock::time_point drain_deadline_;
  boost::asio::steady_timer drain_timer_{io_};
  bool standing_down_ = false;
  std::optional<int64_t> pending_fence_;
  std::unique_ptr<controller::StateStore> store_;
  std::unique_ptr<controller::Controller> control_;
  std::unique_ptr<admin::AdminServer> admin_;
  boost::asio::signal_set signals_;
  std::thread drainer_;
  std::atomic<bool> http_open_{false};
  bool stopping_ = false;
  bool failed_ = false;
  int exit_code_ = 0;
};

}  // namespace

int RunNode(const NodeOptions& options) {
  // A cluster's token: every frame client here presents it, and the replicas this node starts (told through
  // their environment) require it. Set before any thread connects or serves.
  if (options.cluster && !options.cluster->token.empty()) {
    transport::SetFrameToken(options.cluster->token);
    setenv("FERRY_CLUSTER_TOKEN", options.cluster->token.c_str(), 1);
  }
  // TLS between nodes: this node's frame clients speak it to other nodes' replicas, and its replicas serve
  // their TCP clients over it.
  if (options.cluster && !options.cluster->frame_tls.ca.empty()) {
    const TlsFiles& files = options.cluster->frame_tls;
    if (absl::Status tls = transport::SetFrameTls(files); !tls.ok()) {
      FERRY_LOG(kError, "node", "TLS between nodes: ", Message(tls));
      return 1;
    }
    setenv("FERRY_TLS_CA", files.ca.c_str(), 1);
    setenv("FERRY_TLS_CERT", files.cert.c_str(), 1);
    setenv("FERRY_TLS_KEY", files.key.c_str(), 1);
  }
  // The controller publishes endpoint sets and routes here; the proxy's routers consume them and report
  // their load back. Both outlive the node's controller and proxy.
  endpoints::LocalPublisher publisher;
  router::RouterSet routers([&publisher] { publisher.Wake(); }, 0,
                            options.cluster ? options.cluster->node_id : std::string());
  publisher.Subscribe(&routers);
  // Calls from driver scripts (the admin API's /api/ferry/call/): a handle client of the node's own,
  // subscribed on its first call.
  handle::HandleClient driver_calls("-/driver", nullptr);
  driver_calls.SetSubscribe([&publisher, &driver_calls] { publisher.Subscribe(&driver_calls); });
  driver_calls.SetWake([&publisher] { publisher.Wake(); });
  // The config's log encoding from the first line on (its level applies with the config).
  if (options.initial_config && options.initial_config->logging_config)
    Log::SetEncoding(options.initial_config->logging_config->encoding);
  // Headers for the OTLP exports (read again by each process's Tracer; replicas inherit the environment).
  if (absl::StatusOr<tracing::HeaderList> headers = tracing::OtlpHeadersFromEnvironment(); !headers.ok()) {
    Complain(StrCat("ferry: ", Message(headers.status())));
    return 2;
  }
  metrics::Registry registry;  // the node's metrics: GET /metrics on the admin port
  // The node's spans (proxy and queue); the config's `tracing` turns it on. Outlives the proxy.
  tracing::Tracer tracer({{"service.name", std::string("ferry")},
                          {"service.instance.id", StrCat("node-", getpid())},
                          {"process.pid", static_cast<int64_t>(getpid())}});
  proxy::ProxyOptions proxy_options = ProxyOptionsFrom(options.http);
  proxy_options.metrics = options.metrics ? &registry : nullptr;
  proxy_options.tracer = &tracer;
  absl::StatusOr<std::unique_ptr<proxy::Proxy>> proxy = proxy::Proxy::Create(proxy_options, routers.routing());
  if (!proxy.ok()) {
    Complain(StrCat("ferry: ", Message(proxy.status())));
    return 1;
  }
  std::string run_dir = options.run_dir;
  bool own_run_dir = run_dir.empty();
  if (own_run_dir) {
    const char* tmp = getenv("TMPDIR");
    std::string pattern = StrCat(tmp && *tmp ? tmp : "/tmp", "/ferry-XXXXXX");
    if (!mkdtemp(pattern.data())) {
      Complain(StrCat("ferry: cannot create a run directory: ", strerror(errno)));
      return 1;
    }
    run_dir = pattern;
  }
  int code;
  {
    Node node(options, std::move(*proxy), options.metrics ? &registry : nullptr, &tracer);
    absl::Status created = node.Create(&publisher, run_dir, &driver_calls);
    if (!created.ok()) {
      Complain(StrCat("ferry: ", Message(created)));
      code = 1;
    } else {
      code = node.Run();
    }
  }
  publisher.Unsubscribe(&routers);
  if (driver_calls.wanted()) publisher.Unsubscribe(&driver_calls);
  if (own_run_dir) {
    std::error_code ignored;
    std::filesystem::remove_all(run_dir, ignored);
  }
  return code;
}

}  // namespace ferry::cli
