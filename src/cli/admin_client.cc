#include "cli/admin_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <yaml-cpp/yaml.h>

#include "common/common.h"

namespace ferry::cli {

namespace asio = boost::asio;
namespace http = boost::beast::http;

absl::StatusOr<AdminResponse> AdminRequest(const std::string& address, const std::string& method,
                                           const std::string& path, const std::string& body, const std::string& token,
                                           const std::vector<std::pair<std::string, std::string>>& headers) {
  // HOST:PORT or http://HOST:PORT (Ray's --address takes both).
  static constexpr std::string_view kScheme = "http://";
  std::string hostport = address.rfind(kScheme, 0) == 0 ? address.substr(kScheme.size()) : address;
  if (hostport.find("://") != std::string::npos || hostport.empty() || hostport.find('/') < hostport.find_last_not_of('/'))
    return absl::InvalidArgumentError(
        StrCat("--address must look like HOST:PORT or http://HOST:PORT, got ", address));
  while (!hostport.empty() && hostport.back() == '/') hostport.pop_back();
  size_t colon = hostport.rfind(':');
  std::string host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  std::string port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  try {
    asio::io_context io;
    asio::ip::tcp::resolver resolver(io);
    asio::ip::tcp::socket socket(io);
    asio::connect(socket, resolver.resolve(host, port));
    struct timeval tv {
      120, 0
    };
    setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    http::request<http::string_body> req{http::string_to_verb(method), path, 11};
    req.set(http::field::host, hostport);
    req.set(http::field::user_agent, "ferry-cli");
    if (!token.empty()) req.set(http::field::authorization, StrCat("Bearer ", token));
    for (const auto& [k, v] : headers) req.set(k, v);
    if (!body.empty()) req.set(http::field::content_type, "application/yaml");
    req.body() = body;
    req.prepare_payload();
    http::write(socket, req);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(socket, buffer, res);
    boost::system::error_code ignored;
    socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    return AdminResponse{static_cast<int>(res.result_int()), res.body()};
  } catch (const boost::system::system_error& e) {
    return absl::UnavailableError(StrCat("cannot reach the ferry node at ", address, ": ", e.code().message(),
                                         " (is it running? ferry start, or --address)"));
  }
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
