// The machinery behind FERRY_DEPLOYMENT for a ferry::Model: the tensor entry of <ferry/abi.h>. The host
// parses and validates the protocol; this side turns its borrowed tensors into ferry::Tensor views, runs
// infer() or infer_batch(), and hands the outputs back. Not for user code; included by <ferry/model.h>.
#pragma once

#include <string>
#include <type_traits>
#include <vector>

namespace ferry {
namespace internal {

// A host tensor as an SDK tensor: fixed-size elements are borrowed (no copy); BYTES elements are read
// out of their length-prefixed layout into strings.
inline Tensor TensorFromView(const FerryTensor& v) {
  std::string name(v.name.data, v.name.size);
  Shape shape(v.shape, v.shape + v.rank);
  const DataType datatype = static_cast<DataType>(v.datatype);
  if (datatype != DataType::kBytes) return Tensor::Borrow(std::move(name), datatype, std::move(shape), v.data.data);
  return Tensor::FromStrings(std::move(name), std::move(shape),
                             UnpackBytes(std::string_view(v.data.data, v.data.size)));
}

// Hands one answer to the host: its outputs and parameters, or its error.
inline void EmitInferResponse(const InferResponse& r, FerryInferSink* sink) {
  const FerryHostApi* host = Host();
  if (r.error_status != 0) {
    host->fail_infer(sink, r.error_status, FerryString{r.error.data(), r.error.size()});
    return;
  }
  std::string packed;  // BYTES elements in their length-prefixed layout
  for (const Tensor& t : r.outputs) {
    FerryTensor view{};
    view.name = FerryString{t.name().data(), t.name().size()};
    view.datatype = static_cast<uint32_t>(t.datatype());
    view.shape = t.shape().data();
    view.rank = t.shape().size();
    if (t.datatype() == DataType::kBytes) {
      PackBytes(t.strings(), &packed);
      view.data = FerryString{packed.data(), packed.size()};
    } else {
      view.data = FerryString{reinterpret_cast<const char*>(t.bytes().data()), t.bytes().size()};
    }
    host->add_output(sink, &view);
  }
  if (!r.parameters.is_null()) {
    std::string p = r.parameters.dump();
    host->set_infer_parameters(sink, FerryString{p.data(), p.size()});
  }
}

template <typename T, typename = void>
struct ModelOverridesReconfigure : std::false_type {};
template <typename T>
struct ModelOverridesReconfigure<T, std::void_t<decltype(&T::reconfigure)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::reconfigure), decltype(&Model::reconfigure)>> {};
template <typename T, typename = void>
struct ModelOverridesCheckHealth : std::false_type {};
template <typename T>
struct ModelOverridesCheckHealth<T, std::void_t<decltype(&T::check_health)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::check_health), decltype(&Model::check_health)>> {};

// Runs a model over `count` host requests: infer() for one, infer_batch() for more.
template <typename T>
void RunInfer(T* model, const FerryInferRequest* const* requests, size_t count, FerryInferSink* const* sinks) {
  std::vector<Request> http;
  http.reserve(count);
  std::vector<InferRequest> batch(count);
  for (size_t i = 0; i < count; ++i) {
    const FerryInferRequest& raw = *requests[i];
    InferRequest& r = batch[i];
    r.id.assign(raw.id.data, raw.id.size);
    if (raw.parameters.size) r.parameters = Json::parse(std::string_view(raw.parameters.data, raw.parameters.size));
    r.inputs.reserve(raw.num_inputs);
    for (size_t k = 0; k < raw.num_inputs; ++k) r.inputs.push_back(TensorFromView(raw.inputs[k]));
    for (size_t k = 0; k < raw.num_outputs; ++k) r.outputs.emplace_back(raw.outputs[k].data, raw.outputs[k].size);
    if (raw.http) r.http = &http.emplace_back(raw.http);
  }
  std::vector<InferResponse> out;
  try {
    if (count == 1)
      out.push_back(model->infer(batch[0]));
    else
      out = model->infer_batch(std::span<const InferRequest>(batch));
  } catch (const InferError& e) {
    out.assign(count, InferResponse::Error(e.status(), e.what()));
  } catch (const std::exception& e) {
    out.assign(count, InferResponse::Error(500, e.what()));
  }
  if (out.size() != count)
    out.assign(count, InferResponse::Error(500, "infer_batch returned " + std::to_string(out.size()) +
                                                    " responses for " + std::to_string(count) + " requests"));
  for (size_t i = 0; i < count; ++i) EmitInferResponse(out[i], sinks[i]);
}

template <typename T>
const FerryDeploymentApi* ModelApiFor(const char* name) {
  static_assert(std::is_base_of_v<Model, T>, "a model derives from ferry::Model");
  static_assert(std::is_constructible_v<T, const Args&>, "the class needs a constructor taking const ferry::Args&");
  static const FerryDeploymentApi api = [name] {
    FerryDeploymentApi a = TableFor<T>(name);
    a.create = [](const FerryHostApi* host, FerryString args_json, void** instance, FerryErrorSink* error) {
      Host() = host;
      if (host->struct_size < offsetof(FerryHostApi, fail_infer) + sizeof(host->fail_infer)) {
        SetError(host, error, "this ferry is too old for models built with this SDK (no tensor entry)");
        return static_cast<int>(FERRY_ERROR);
      }
      return ConstructInstance<T>(args_json, instance, error);
    };
    a.model_metadata = [](void* instance, FerryResponseSink* out, FerryErrorSink* error) {
      return Guard(error, [&] {
        std::string json = MetadataJson(static_cast<T*>(instance)->metadata(), "").dump();
        Host()->set_body(out, FerryString{json.data(), json.size()});
      });
    };
    a.infer = [](void* instance, const FerryInferRequest* const* requests, size_t count, FerryInferSink* const* sinks,
                 FerryErrorSink* error) {
      return Guard(error, [&] { RunInfer(static_cast<T*>(instance), requests, count, sinks); });
    };
    if constexpr (ModelOverridesReconfigure<T>::value) a.reconfigure = &ReconfigureInstance<T>;
    if constexpr (ModelOverridesCheckHealth<T>::value) a.check_health = &CheckInstanceHealth<T>;
    return a;
  }();
  return &api;
}

}  // namespace internal
}  // namespace ferry
