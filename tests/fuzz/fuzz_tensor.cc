// Parses arbitrary bytes as an Open Inference Protocol infer request with the host's codec (JSON tensors,
// and the binary tensor extension when the first byte says so), validates it against a model's metadata
// and writes a response from its inputs: any input gets a request or an error status, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "inference/oip.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::optional<size_t> header_length;
  if (data[0] & 1) header_length = (data[0] >> 1) * 4;  // the JSON part's length, as the header would say
  absl::StatusOr<ferry::InferRequest> req = ferry::oip::ParseInferRequest(body, header_length);
  if (!req.ok()) return 0;
  ferry::ModelMetadata m;
  m.inputs = {{"input__0", ferry::DataType::kFp32, {-1, 4}}, {"s", ferry::DataType::kBytes, {-1}}};
  m.outputs = {{"input__0", ferry::DataType::kFp32, {-1, 4}}};
  (void)ferry::oip::Validate(m, *req, "fuzz");
  ferry::InferResponse resp;
  resp.outputs = req->inputs;  // echo every input back as an output, in both encodings
  std::optional<size_t> json_length;
  (void)ferry::oip::SerializeInferResponse(*req, resp, "fuzz", "1", &json_length);
  req->parameters = {{"binary_data_output", true}};
  (void)ferry::oip::SerializeInferResponse(*req, resp, "fuzz", "", &json_length);
  (void)ferry::oip::ParseModelPath(body);
  return 0;
}
