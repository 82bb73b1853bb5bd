// Test helper: a replica (this process's ReplicaServer over a built-in) serving frames on a Unix socket in
// a temporary directory, on a thread of its own, as the replica process would.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <thread>

#include "replica/internal/deployment_host.h"
#include "replica/internal/replica_server.h"

namespace ferry::testing {

inline replica::ReplicaSpec BuiltinSpec(std::string symbol, int max_ongoing = 4) {
  replica::ReplicaSpec s;
  s.replica_id = "app#D#7";
  s.application = "app";
  s.deployment = "D";
  s.import_path = "builtin:" + symbol;
  s.symbol = std::move(symbol);
  s.max_ongoing_requests = max_ongoing;
  s.graceful_shutdown_timeout_s = 30;
  return s;
}

class ServedReplica {
 public:
  explicit ServedReplica(const std::string& symbol, int max_ongoing = 4, std::string tag = "") {
    dir_ = std::filesystem::path(::testing::TempDir()) / ("replica-" + std::to_string(getpid()) + "-" + symbol + tag);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "r.sock").string();
    spec_ = BuiltinSpec(symbol, max_ongoing);
    auto host = replica::DeploymentHost::Create(spec_);
    EXPECT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
    server_ = std::make_unique<replica::ReplicaServer>(spec_, *host_);
    EXPECT_TRUE(server_->Listen(path_).ok());
    thread_ = std::thread([this] { server_->Run(); });
  }
  ~ServedReplica() {
    Stop();
    std::filesystem::remove_all(dir_);
  }
  void Stop() {
    if (!thread_.joinable()) return;
    server_->RequestStop();
    thread_.join();
  }
  const std::string& path() const { return path_; }
  bool socket_exists() const { return std::filesystem::exists(path_); }
  replica::ReplicaServer& server() { return *server_; }

 private:
  std::filesystem::path dir_;
  std::string path_;
  replica::ReplicaSpec spec_;
  std::unique_ptr<replica::DeploymentHost> host_;
  std::unique_ptr<replica::ReplicaServer> server_;
  std::thread thread_;
};

}  // namespace ferry::testing
