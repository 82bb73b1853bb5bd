// Serves a model: a deployment whose table has the tensor entry (FerryDeploymentApi.infer). The host side
// of the Open Inference Protocol: each request is parsed and checked against the model's metadata here,
// when it arrives (for batched deployments, while its batch gathers), and the model receives borrowed
// tensor views; its outputs come back through FerryHostApi.add_output and are serialized here.
// Thread-safe: Prepare and Run may be called from many threads at once.
#pragma once

#include <absl/status/statusor.h>
#include <chrono>
#include <ferry/abi.h>
#include <ferry/model.h>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "transport/frame.h"

namespace ferry::replica {
// A detached stream's host side (FerryHostApi.stream_write, stream_end): writes from any thread, one at a
// time; its end once (again: nothing).
class DetachedSink {
 public:
  virtual ~DetachedSink() = default;
  virtual bool Write(std::string_view chunk) = 0;
  virtual void End(bool ok, std::string_view message) = 0;
  // A deferred answer (nothing sent yet): the status and headers the first Write sends, or the whole
  // answer in one piece (which ends it). Ignored once the stream began.
  virtual void SetHead(const FerryResponseSink& head) = 0;
  virtual void Respond(const FerryResponseSink& whole) = 0;
  // True once the request is cancelled (its client left, its deadline passed).
  virtual bool Cancelled() const = 0;
  // Runs `hook` once when the request is cancelled (at once, when it is already): calls made for it.
  virtual void OnCancel(std::function<void()> hook) = 0;
};

// Where a streamed answer goes (the replica server's side of FerryHostApi.write_chunk), and the request's
// cancellation, which the calls it makes through handles follow.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Sends `head` (unless a chunk did) and lets the stream outlive handle(); null when it is over already.
  virtual std::unique_ptr<DetachedSink> Detach(const FerryResponseSink& head) = 0;
  // Lets the answer come after handle() returned, sending nothing now (see DetachedSink::Respond); null
  // when the stream began or the request is over already.
  virtual std::unique_ptr<DetachedSink> Defer() = 0;
  // Runs `hook` once when the request is cancelled (at once, when it is already).
  virtual void OnCancel(std::function<void()> hook) = 0;
  // Sends `head`'s status and headers (the first call only), then `chunk`, waiting for the client's
  // credit. False once the stream is over (cancelled, client gone): nothing was sent.
  virtual bool Write(const FerryResponseSink& head, std::string_view chunk) = 0;
};

// Where a streamed request body comes from (the replica server's side of FerryRequest.read_body).
class BodySource {
 public:
  virtual ~BodySource() = default;
  // The next piece: 1 with *chunk set (valid until the next call), 0 at the end, -1 when the body broke.
  virtual int Next(std::string_view* chunk) = 0;
};

// A WebSocket session's sending side (the replica server's side of FerryHostApi.ws_send and ws_close).
class WebSocketPeer {
 public:
  virtual ~WebSocketPeer() = default;
  // False once the session is closing or closed.
  virtual bool Send(std::string_view data, bool binary) = 0;
  virtual void Close(uint16_t code, std::string_view reason) = 0;
};
}  // namespace ferry::replica

struct FerryWebSocket {
  ferry::replica::WebSocketPeer* peer;
};

struct FerryStream {
  std::unique_ptr<ferry::replica::DetachedSink> sink;
  // The request's, for calls that name this stream as their parent (FerryCallOptions.parent_stream).
  std::string request_id;
  std::string traceparent;
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

struct FerryResponseSink {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Set by the server for requests that may stream (handle(), not batches); null: chunks gather in body.
  ferry::replica::ResponseStream* stream = nullptr;
  bool streamed = false;          // write_chunk sent the head: the answer is a stream
  bool detached = false;          // detach_stream: the stream goes on after handle() returns
  const void* request = nullptr;  // the host's context of the request being handled (its parent fields)
  std::string stream_error;       // handle() failed after streaming began: the stream breaks with this
};

struct FerryErrorSink {
  std::string message;
};

// One request's answer from a model, as it writes it through the host functions.
struct FerryInferSink {
  ferry::InferResponse response;
};

namespace ferry::replica {

class ModelHost {
 public:
  // Reads the model's metadata (model_metadata()); an error when it is missing or malformed.
  static absl::StatusOr<std::unique_ptr<ModelHost>> Create(const FerryDeploymentApi* api, void* instance,
                                                           const std::string& deployment);

  // A request parsed and checked, or already answered (metadata, or what was wrong with it).
  struct Prepared {
    std::optional<FerryResponseSink> answer;
    InferRequest request;  // owns the tensors the model borrows
    std::string name, version;
  };
  std::unique_ptr<Prepared> Prepare(const transport::RequestMessage& request) const;

  // Runs the model once over `batch` (prepared, not answered); http[i] is batch[i]'s HTTP request (for
  // the model's InferRequest.http). Writes (*responses)[i]. A failed call answers every request 500.
  void Run(const std::vector<Prepared*>& batch, const std::vector<const FerryRequest*>& http,
           const std::vector<FerryResponseSink*>& responses) const;

  const ModelMetadata& metadata() const { return metadata_; }

  // The host functions of the tensor entry (FerryHostApi.add_output, ...).
  static void AddOutput(FerryInferSink* sink, const FerryTensor* tensor);
  static void SetInferParameters(FerryInferSink* sink, FerryString parameters_json);
  static void FailInfer(FerryInferSink* sink, int status, FerryString message);

 private:
  ModelHost(const FerryDeploymentApi* api, void* instance, ModelMetadata metadata)
      : api_(api), instance_(instance), metadata_(std::move(metadata)) {}
  const FerryDeploymentApi* api_;
  void* instance_;
  const ModelMetadata metadata_;
};

// The JSON error answer every failure of a request gets: {"error": message}.
FerryResponseSink ErrorResponse(int status, std::string_view message);

}  // namespace ferry::replica
