#include "replica/internal/model_host.h"

#include "common/common.h"
#include "inference/oip.h"

namespace ferry::replica {

namespace {

FerryString Str(std::string_view s) { return FerryString{s.data(), s.size()}; }

// An SDK tensor as the ABI's view; BYTES elements are packed into `packed` (length-prefixed).
FerryTensor ViewOf(const Tensor& t, std::string* packed) {
  FerryTensor v{};
  v.name = Str(t.name());
  v.datatype = static_cast<uint32_t>(t.datatype());
  v.shape = t.shape().data();
  v.rank = t.shape().size();
  if (t.datatype() == DataType::kBytes) {
    PackBytes(t.strings(), packed);
    v.data = Str(*packed);
  } else {
    v.data = FerryString{reinterpret_cast<const char*>(t.bytes().data()), t.bytes().size()};
  }
  return v;
}

}  // namespace

FerryResponseSink ErrorResponse(int status, std::string_view message) {
  FerryResponseSink r;
  r.status = status;
  r.headers.emplace_back("content-type", "application/json");
  r.body = "{\"error\":";
  AppendJsonString(r.body, message);
  r.body += "}";
  return r;
}

absl::StatusOr<std::unique_ptr<ModelHost>> ModelHost::Create(const FerryDeploymentApi* api, void* instance,
                                                             const std::string& deployment) {
  FerryResponseSink out;
  FerryErrorSink error;
  if (!api->model_metadata || api->model_metadata(instance, &out, &error) != FERRY_OK)
    return absl::FailedPreconditionError(StrCat("model ", deployment, " has no metadata: ", error.message));
  Json j = Json::parse(out.body, nullptr, false);
  if (!j.is_object()) return absl::FailedPreconditionError(StrCat("model ", deployment, ": metadata is not JSON"));
  ModelMetadata m;
  try {
    m.name = j.value("name", "");
    m.platform = j.value("platform", "");
    if (j.contains("versions")) m.versions = j["versions"].get<std::vector<std::string>>();
    if (j.contains("inputs")) m.inputs = SpecsFromJson(j["inputs"], "metadata.inputs");
    if (j.contains("outputs")) m.outputs = SpecsFromJson(j["outputs"], "metadata.outputs");
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(StrCat("model ", deployment, ": ", e.what()));
  }
  return std::unique_ptr<ModelHost>(new ModelHost(api, instance, std::move(m)));
}

std::unique_ptr<ModelHost::Prepared> ModelHost::Prepare(const transport::RequestMessage& request) const {
  auto p = std::make_unique<Prepared>();
  oip::Target target = oip::ParseTarget(request.method, request.path);
  p->name = target.model_name.empty() ? metadata_.name : target.model_name;
  p->version = !target.model_version.empty() ? target.model_version
                                             : (metadata_.versions.empty() ? "" : metadata_.versions.front());
  if (!target.infer) {
    FerryResponseSink r;
    r.headers.emplace_back("content-type", "application/json");
    r.body = MetadataJson(metadata_, p->name).dump();
    p->answer = std::move(r);
    return p;
  }
  std::string_view header_length;
  for (const auto& [k, v] : request.headers)
    if (k == "inference-header-content-length") header_length = v;
  absl::StatusOr<std::optional<size_t>> length = oip::BinaryHeaderLength(header_length);
  absl::StatusOr<InferRequest> parsed =
      length.ok() ? oip::ParseInferRequest(request.body, *length) : absl::StatusOr<InferRequest>(length.status());
  absl::Status valid = parsed.ok() ? oip::Validate(metadata_, *parsed, p->name) : parsed.status();
  if (!valid.ok()) {
    p->answer = ErrorResponse(oip::HttpStatus(valid), View(valid.message()));
    return p;
  }
  p->request = std::move(*parsed);
  return p;
}

void ModelHost::Run(const std::vector<Prepared*>& batch, const std::vector<const FerryRequest*>& http,
                    const std::vector<FerryResponseSink*>& responses) const {
  const size_t n = batch.size();
  // The host's tensors as views: the model borrows them for the call.
  std::vector<std::vector<FerryTensor>> inputs(n);
  std::vector<std::vector<std::string>> packed(n);
  std::vector<std::vector<FerryString>> outputs(n);
  std::vector<std::string> parameters(n);
  std::vector<FerryInferRequest> raw(n);
  std::vector<const FerryInferRequest*> raw_ptrs(n);
  std::vector<FerryInferSink> sinks(n);
  std::vector<FerryInferSink*> sink_ptrs(n);
  for (size_t i = 0; i < n; ++i) {
    const InferRequest& r = batch[i]->request;
    packed[i].resize(r.inputs.size());
    for (size_t k = 0; k < r.inputs.size(); ++k) inputs[i].push_back(ViewOf(r.inputs[k], &packed[i][k]));
    for (const std::string& o : r.outputs) outputs[i].push_back(Str(o));
    if (!r.parameters.is_null()) parameters[i] = r.parameters.dump();
    raw[i] = FerryInferRequest{};
    raw[i].struct_size = sizeof(FerryInferRequest);
    raw[i].http = http[i];
    raw[i].id = Str(r.id);
    raw[i].parameters = Str(parameters[i]);
    raw[i].inputs = inputs[i].data();
    raw[i].num_inputs = inputs[i].size();
    raw[i].outputs = outputs[i].data();
    raw[i].num_outputs = outputs[i].size();
    raw_ptrs[i] = &raw[i];
    sink_ptrs[i] = &sinks[i];
  }
  FerryErrorSink error;
  if (api_->infer(instance_, raw_ptrs.data(), n, sink_ptrs.data(), &error) != FERRY_OK) {
    std::string message = error.message.empty() ? "infer failed" : error.message;
    FERRY_LOG(kWarning, "replica", n == 1 ? "a request" : StrCat("a batch of ", n, " requests"),
              " failed in infer(): ", message);
    for (size_t i = 0; i < n; ++i) *responses[i] = ErrorResponse(500, message);
    return;
  }
  const std::string batch_size = std::to_string(n);
  for (size_t i = 0; i < n; ++i) {
    const InferResponse& result = sinks[i].response;
    FerryResponseSink& out = *responses[i];
    if (result.error_status != 0) {
      out = ErrorResponse(result.error_status, result.error);
      continue;
    }
    out = FerryResponseSink{};
    std::optional<size_t> json_length;
    out.body = oip::SerializeInferResponse(batch[i]->request, result, batch[i]->name, batch[i]->version, &json_length);
    if (json_length) {
      out.headers.emplace_back("content-type", "application/octet-stream");
      out.headers.emplace_back("inference-header-content-length", std::to_string(*json_length));
    } else {
      out.headers.emplace_back("content-type", "application/json");
    }
    // How many requests the model ran together: lets a client see batching at work.
    if (n > 1) out.headers.emplace_back("ferry-batch-size", batch_size);
  }
}

void ModelHost::AddOutput(FerryInferSink* sink, const FerryTensor* v) {
  if (v->datatype > static_cast<uint32_t>(DataType::kBytes)) {
    FailInfer(sink, 500, Str("the model returned an output of an unknown datatype"));
    return;
  }
  const DataType datatype = static_cast<DataType>(v->datatype);
  std::string name(v->name.data, v->name.size);
  Shape shape(v->shape, v->shape + v->rank);
  try {
    if (datatype == DataType::kBytes) {
      sink->response.outputs.push_back(Tensor::FromStrings(std::move(name), std::move(shape),
                                                           UnpackBytes(std::string_view(v->data.data, v->data.size))));
      return;
    }
    Tensor t(std::move(name), datatype, std::move(shape));
    if (t.ByteSize() != v->data.size) {
      FailInfer(sink, 500,
                Str(StrCat("output ", t.name(), ": ", v->data.size, " bytes for shape ", ShapeString(t.shape()), " of ",
                           DataTypeName(datatype), " (", t.ByteSize(), " expected)")));
      return;
    }
    if (t.ByteSize()) std::memcpy(t.mutable_bytes().data(), v->data.data, t.ByteSize());
    sink->response.outputs.push_back(std::move(t));
  } catch (const std::exception& e) {
    FailInfer(sink, 500, Str(StrCat("bad output tensor: ", e.what())));
  }
}

void ModelHost::SetInferParameters(FerryInferSink* sink, FerryString parameters_json) {
  sink->response.parameters = Json::parse(std::string_view(parameters_json.data, parameters_json.size), nullptr, false);
  if (sink->response.parameters.is_discarded() || !sink->response.parameters.is_object())
    sink->response.parameters = nullptr;
}

void ModelHost::FailInfer(FerryInferSink* sink, int status, FerryString message) {
  sink->response.error_status = status >= 400 && status <= 599 ? status : 500;
  sink->response.error.assign(message.data, message.size);
}

}  // namespace ferry::replica
