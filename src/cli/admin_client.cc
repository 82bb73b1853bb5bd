#include "cli/admin_client.h"

#include <yaml-cpp/yaml.h>

#include "common/common.h"
#include "common/http_client.h"

namespace ferry::cli {

absl::StatusOr<AdminResponse> AdminRequest(const std::string& address, const std::string& method,
                                           const std::string& path, const std::string& body, const std::string& token,
                                           const std::vector<std::pair<std::string, std::string>>& headers) {
  // HOST:PORT or http://HOST:PORT (Ray's --address takes both).
  absl::StatusOr<HttpEndpoint> endpoint = ParseHttpEndpoint(address, /*scheme_optional=*/true);
  if (!endpoint.ok() || (endpoint->path != "/" && !endpoint->path.empty()))
    return absl::InvalidArgumentError(StrCat("--address must look like HOST:PORT or http://HOST:PORT, got ", address));
  HttpCall call;
  call.method = method;
  call.path = path;
  call.body = body;
  call.content_type = "application/yaml";
  call.headers = headers;
  if (!token.empty()) call.headers.emplace_back("Authorization", StrCat("Bearer ", token));
  call.timeout = std::chrono::seconds(120);  // a deploy waits for the controller
  absl::StatusOr<HttpResponse> r = SendHttp(*endpoint, call);
  if (!r.ok())
    return absl::UnavailableError(StrCat("cannot reach the ferry node at ", address, ": ", Message(r.status()),
                                         " (is it running? ferry start, or --address)"));
  return AdminResponse{r->status, std::move(r->body)};
}

namespace {

void Emit(YAML::Emitter& out, const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::object:
      out << YAML::BeginMap;
      for (auto it = v.begin(); it != v.end(); ++it) {
        out << YAML::Key << it.key() << YAML::Value;
        Emit(out, it.value());
      }
      out << YAML::EndMap;
      break;
    case nlohmann::json::value_t::array:
      out << YAML::BeginSeq;
      for (const auto& item : v) Emit(out, item);
      out << YAML::EndSeq;
      break;
    case nlohmann::json::value_t::string:
      out << YAML::DoubleQuoted << v.get<std::string>();
      break;
    case nlohmann::json::value_t::boolean:
      out << (v.get<bool>() ? "true" : "false");
      break;
    case nlohmann::json::value_t::null:
      out << YAML::Null;
      break;
    default:
      out << v.dump();
      break;
  }
}

}  // namespace

std::string JsonToYaml(const nlohmann::json& value) {
  YAML::Emitter out;
  Emit(out, value);
  return std::string(out.c_str()) + "\n";
}

}  // namespace ferry::cli
