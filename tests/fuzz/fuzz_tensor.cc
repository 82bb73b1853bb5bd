// Parses arbitrary bytes as an Open Inference Protocol infer request (JSON tensors, and the binary tensor
// extension when the first byte says so), validates it against a model's metadata and writes a response
// from its inputs: any input gets a request or an InferError, never a crash.
#include <cstddef>
#include <cstdint>
#include <ferry/inference.h>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::optional<size_t> header_length;
  if (data[0] & 1) header_length = (data[0] >> 1) * 4;  // the JSON part's length, as the header would say
  try {
    ferry::InferRequest req = ferry::oip::ParseInferRequest(body, header_length);
    ferry::ModelMetadata m;
    m.inputs = {{"input__0", ferry::DataType::kFp32, {-1, 4}}, {"s", ferry::DataType::kBytes, {-1}}};
    m.outputs = {{"input__0", ferry::DataType::kFp32, {-1, 4}}};
    try {
      ferry::oip::Validate(m, req, "fuzz");
    } catch (const ferry::InferError&) {
    }
    ferry::InferResponse resp;
    resp.outputs = req.inputs;  // echo every input back as an output, in both encodings
    std::optional<size_t> json_length;
    (void)ferry::oip::SerializeInferResponse(req, resp, "fuzz", "1", &json_length);
    req.parameters = {{"binary_data_output", true}};
    (void)ferry::oip::SerializeInferResponse(req, resp, "fuzz", "", &json_length);
  } catch (const ferry::InferError&) {
  }
  return 0;
}
