#include "proxy/internal/inference_endpoints.h"

#include <nlohmann/json.hpp>
#include <optional>

#include "common/common.h"
#include "inference/oip.h"

namespace ferry::proxy {

namespace http = boost::beast::http;

namespace {

InferenceAnswer Ok(const nlohmann::json& body) { return {nullptr, http::status::ok, body.dump(), false}; }
InferenceAnswer Error(http::status status, std::string message) { return {nullptr, status, std::move(message), true}; }

// A model with no replica is unready, unless it autoscales to zero on purpose: an infer call then starts
// one and is answered.
bool Unready(const router::Route& route) {
  router::RouterStats stats = route.router->Stats();
  return stats.replicas == 0 && !stats.scales_from_zero;
}

}  // namespace

InferenceAnswer AnswerInferenceProtocol(http::verb method, std::string_view path, const router::RoutingTable& table,
                                        bool draining) {
  const bool get = method == http::verb::get || method == http::verb::head;
  const bool post = method == http::verb::post;
  auto wrong_method = [&](std::string_view allowed) {
    return Error(http::status::method_not_allowed, StrCat(path, " accepts ", allowed));
  };
  if (path == "/v2" || path == "/v2/") {
    if (!get) return wrong_method("GET");
    return Ok({{"name", "ferry"}, {"version", kVersion}, {"extensions", {"binary_tensor_data"}}});
  }
  if (path == "/v2/health/live") {
    if (!get) return wrong_method("GET");
    return Ok({{"live", !draining}});
  }
  if (path == "/v2/health/ready") {
    if (!get) return wrong_method("GET");
    std::string waiting;
    for (const router::ModelRoute& m : table.models())
      if (Unready(m.route)) StrAppend(&waiting, waiting.empty() ? "" : ", ", m.name);
    if (draining) return Error(http::status::service_unavailable, "this node is being drained");
    if (!waiting.empty())
      return Error(http::status::bad_request, StrCat("not ready: no replica serves model(s) ", waiting));
    return Ok({{"ready", true}});
  }
  std::optional<oip::ModelPath> model_path = oip::ParseModelPath(path);
  if (!model_path) return Error(http::status::not_found, StrCat("no Open Inference Protocol endpoint at ", path));
  const std::string_view name = model_path->name, version = model_path->version, rest = model_path->rest;
  const router::ModelRoute* model = table.FindModel(name);
  if (!model && !table.refusal().empty()) return Error(http::status::service_unavailable, table.refusal());
  if (!model) return Error(http::status::not_found, StrCat("unknown model '", name, "'"));
  if (!version.empty() && version != model->version)
    return Error(
        http::status::not_found,
        model->version.empty()
            ? StrCat("model '", name, "' has no version '", version, "' (it is unversioned)")
            : StrCat("model '", name, "' has no version '", version, "' (it serves version '", model->version, "')"));
  if (rest == "/ready") {
    if (!get) return wrong_method("GET");
    if (Unready(model->route))
      return Error(http::status::bad_request, StrCat("model '", name, "' is not ready: no replica is running"));
    return Ok({{"name", model->name}, {"ready", true}});
  }
  if (rest.empty() && !get) return wrong_method("GET");
  if (rest == "/infer" && !post) return wrong_method("POST");
  if (!rest.empty() && rest != "/infer")
    return Error(http::status::not_found, StrCat("no Open Inference Protocol endpoint at ", path));
  InferenceAnswer to_model;
  to_model.route = &model->route;
  return to_model;
}

}  // namespace ferry::proxy
