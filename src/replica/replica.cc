#include "replica/replica.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/common.h"
#include "common/unique_fd.h"
#include "replica/internal/deployment_host.h"
#include "replica/internal/replica_server.h"
#include "tracing/tracing.h"
#include "transport/address.h"

namespace ferry::replica {

namespace {

ReplicaServer* g_server = nullptr;  // for the signal handler

void WriteStatus(int fd, const nlohmann::json& line) {
  if (fd < 0) return;
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  ssize_t n = ::write(fd, text.data(), text.size());
  (void)n;
}

}  // namespace

int RunReplica(const ReplicaOptions& options) {
  // Die with the node: a replica never outlives the process that started it.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1;
  UniqueFd status(options.status_fd);  // where the node reads how the start went; owned from here
  if (options.log_fd >= 0) Log::SetOutput(options.log_fd);
  // Standard output is a pipe to the node, which logs it line by line: flush each line as it is printed
  // (stdio would hold a pipe's output until 4 KiB gathered or the process exited).
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::ifstream in(options.spec_path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json spec_json = nlohmann::json::parse(text.str(), nullptr, false);
  absl::StatusOr<ReplicaSpec> spec = spec::ReplicaSpecFromJson(spec_json);
  if (!spec.ok()) {
    WriteStatus(status.get(), {{"error", std::string(spec.status().message())}});
    return 2;
  }
  Log::SetProcessTag(spec->replica_id);
  Log::SetProcessFields(
      {{"application", spec->application}, {"deployment", spec->deployment}, {"replica", spec->replica_id}});
  ApplyLogging(spec->logging);
  // This replica's spans go to the collector from here, as every OpenTelemetry-instrumented process's do.
  tracing::Tracer tracer({{"service.name", std::string("ferry")},
                          {"service.instance.id", spec->replica_id},
                          {"ferry.application", spec->application},
                          {"ferry.deployment", spec->deployment},
                          {"process.pid", static_cast<int64_t>(getpid())}});
  if (absl::Status s = ApplyTracing(&tracer, spec->tracing); !s.ok()) FERRY_LOG(kWarning, "replica", Message(s));
  // OpenMP threads (LibTorch's and XGBoost's) that spin between a model's calls take the CPU that this
  // replica's I/O threads and the node's proxy need; they sleep instead unless the environment says
  // otherwise. Set before the deployment's library (and so libgomp) is loaded, which reads it once.
  setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0);
  // Calls to other deployments (handles): declared before the deployment, so it goes away after it.
  handle::HandleClient handles(StrCat(spec->application, "/", spec->deployment), &tracer);
  SetHandleClient(&handles);
  absl::StatusOr<std::unique_ptr<DeploymentHost>> host = DeploymentHost::Create(*spec);
  if (!host.ok()) {
    FERRY_LOG(kError, "replica", host.status().message());
    WriteStatus(status.get(), {{"error", std::string(host.status().message())}});
    return 1;
  }
  ReplicaServer server(*spec, **host, &tracer, &handles);
  absl::Status listening = server.Listen(options.socket_path);
  if (!listening.ok()) {
    WriteStatus(status.get(), {{"error", std::string(listening.message())}});
    return 1;
  }
  nlohmann::json ready = {{"ready", true}, {"pid", getpid()}};
  if (!spec->tcp_host.empty()) {
    absl::StatusOr<uint16_t> port = server.ListenTcp(spec->tcp_host);
    if (!port.ok()) {
      WriteStatus(status.get(), {{"error", std::string(port.status().message())}});
      return 1;
    }
    ready["tcp_address"] = transport::TcpAddress(spec->tcp_host, *port);
  }
  WriteStatus(status.get(), ready);
  status.reset();  // the node reads one line: it has it
  FERRY_LOG(kInfo, "replica", "serving ", spec->deployment, " on ", options.socket_path);
  g_server = &server;
  struct sigaction action {};
  action.sa_handler = [](int) {
    if (g_server) g_server->RequestStop();
  };
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  server.Run();
  g_server = nullptr;
  FERRY_LOG(kInfo, "replica", "stopped");
  return 0;
}

}  // namespace ferry::replica
