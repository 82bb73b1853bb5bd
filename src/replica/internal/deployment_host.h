// Loads a deployment through the plugin ABI and calls it: the host side of <ferry/abi.h>.
// Thread-safe as the ABI promises: Handle may run on many threads at once.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <atomic>
#include <ferry/abi.h>
#include <memory>
#include <string>
#include <vector>

#include "handle/handle_client.h"
#include "metrics/metrics.h"
#include "replica/internal/model_host.h"
#include "replica/replica.h"
#include "transport/frame.h"

namespace ferry::replica {

// The functions the replica host offers deployments (FerryHostApi), as every deployment it creates gets them.
const FerryHostApi* HostApi();
// What deployments in this process recorded through metric_define / metric_record.
metrics::UserRegistry& UserMetrics();
// The multiplexed models a deployment in this process said it has loaded (set_model_ids), sorted.
std::vector<std::string> LoadedModelIds();
// Where FerryHostApi's handles go: this process's handle client (one replica per process). Set before the
// deployment is created; null: get_handle fails.
void SetHandleClient(handle::HandleClient* client);

class DeploymentHost {
 public:
  // Finds the deployment (built-in or plugin), runs its constructor, and applies user_config.
  // The error carries the constructor's exception text.
  static absl::StatusOr<std::unique_ptr<DeploymentHost>> Create(const ReplicaSpec& spec);
  ~DeploymentHost();

  // Runs handle(). A plugin error becomes 500 with the message in a JSON body. `body` (not null): the
  // request's body streams from there (the request's own body holds nothing).
  void Handle(const transport::RequestMessage& request, const std::atomic<bool>& cancelled, FerryResponseSink* response,
              BodySource* body = nullptr);
  // WebSocket sessions: whether the deployment takes them; opening one (accepted: true with *session
  // set; refused: false with the answer in *refusal); its messages (an error: close it with 1011); its
  // end (once; frees the session).
  bool takes_websocket() const { return ws_open_ != nullptr; }
  bool OpenWebSocket(const transport::RequestMessage& request, const std::atomic<bool>& cancelled, FerryWebSocket* ws,
                     void** session, FerryResponseSink* refusal);
  absl::Status WebSocketMessage(void* session, std::string_view data, bool binary);
  void WebSocketClosed(void* session, uint16_t code, std::string_view reason);
  // True when the deployment has handle_batch, or is a model (the tensor entry takes batches).
  bool can_batch() const { return handle_batch_ != nullptr || model_ != nullptr; }
  // True when the deployment has prepare() (per-request work before its batch), or is a model (the
  // host parses and checks each request as it arrives).
  bool can_prepare() const { return prepare_ != nullptr || model_ != nullptr; }
  // True when it is served through the tensor entry (a ferry::Model built with this SDK).
  bool is_model() const { return model_ != nullptr; }
  // Runs prepare() on a request that just arrived: its state for HandleBatch, to be given back to
  // Release() once the request is answered; null when prepare() failed (logged) or there is none.
  void* Prepare(const transport::RequestMessage& request, const std::atomic<bool>& cancelled);
  void Release(void* state);
  // Runs handle_batch over `requests`; responses[i] answers requests[i]; prepared[i] (when `prepared`
  // is not empty) is what Prepare returned for requests[i]. A failed batch answers every request 500
  // with the message.
  void HandleBatch(const std::vector<const transport::RequestMessage*>& requests,
                   const std::vector<const std::atomic<bool>*>& cancelled, const std::vector<void*>& prepared,
                   std::vector<FerryResponseSink>* responses);
  absl::Status Reconfigure(const std::string& user_config_json);
  absl::Status CheckHealth();

 private:
  explicit DeploymentHost(const FerryDeploymentApi* api);
  const FerryDeploymentApi* api_;
  decltype(FerryDeploymentApi::handle_batch) handle_batch_ = nullptr;
  decltype(FerryDeploymentApi::prepare) prepare_ = nullptr;
  decltype(FerryDeploymentApi::release) release_ = nullptr;
  decltype(FerryDeploymentApi::ws_open) ws_open_ = nullptr;
  decltype(FerryDeploymentApi::ws_message) ws_message_ = nullptr;
  decltype(FerryDeploymentApi::ws_closed) ws_closed_ = nullptr;
  void* instance_ = nullptr;
  std::unique_ptr<ModelHost> model_;  // set for a model: the host speaks the protocol
};

}  // namespace ferry::replica
