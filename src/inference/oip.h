// The Open Inference Protocol (V2, as KServe and Triton speak it), host side: the one place that parses
// /v2 model paths, infer request bodies (JSON tensors, and the binary tensor extension) and writes infer
// responses. The replica host uses it to hand models tensors; the proxy to route /v2 paths. Errors are
// statuses (InvalidArgument: the client sent something wrong; HttpStatus maps them), never exceptions.
// Thread-compatible: pure functions.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <ferry/model.h>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::oip {

// What /v2/models/{name}[/versions/{version}]{rest} names. nullopt for any other path.
struct ModelPath {
  std::string name;
  std::string version;  // empty when the path names none
  std::string rest;     // "", "/ready", "/infer", or anything else (not an endpoint)
};
std::optional<ModelPath> ParseModelPath(std::string_view path);

// What a request to a model asks for: /v2/models/... by its path, or any other path (a route_prefix):
// POST infers, GET answers the metadata.
struct Target {
  bool infer = false;
  std::string model_name;     // empty when the path does not name it
  std::string model_version;  // empty when the path does not name it
};
Target ParseTarget(std::string_view method, std::string_view path);

// The Inference-Header-Content-Length header's value: none when empty, an error when not a number.
absl::StatusOr<std::optional<size_t>> BinaryHeaderLength(std::string_view value);

// Parses an infer request body. `binary_header_length`: the JSON part's length when binary tensor data
// follows it. InvalidArgument naming what is wrong (the tensor, the byte of a syntax error).
absl::StatusOr<InferRequest> ParseInferRequest(std::string_view body, std::optional<size_t> binary_header_length = {});

// Checks a parsed request against the model's inputs and outputs (names, datatypes, shapes with -1 for any
// size, element counts). InvalidArgument naming the tensor.
absl::Status Validate(const ModelMetadata& m, const InferRequest& req, std::string_view model_name);

// The response body for `resp` (outputs filtered to the requested ones). Binary outputs (the request's
// parameters.binary_data_output) follow the JSON; then *json_length is the JSON's length for the
// Inference-Header-Content-Length header.
std::string SerializeInferResponse(const InferRequest& req, const InferResponse& resp, std::string_view model_name,
                                   std::string_view model_version, std::optional<size_t>* json_length);

// The HTTP status of a status (400 for InvalidArgument, 404 for NotFound, ...).
int HttpStatus(const absl::Status& s);

}  // namespace ferry::oip
