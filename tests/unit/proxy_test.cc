// The proxy's decisions as pure functions: what it makes of a parsed request (classification, request id,
// read errors, limits), how it answers the Open Inference Protocol's own endpoints over a routing table, and
// the access lines it writes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/common.h"
#include "proxy/internal/access_log.h"
#include "proxy/internal/inference_endpoints.h"
#include "proxy/internal/request_head.h"

namespace ferry::proxy {
namespace {

using ::testing::HasSubstr;

http::request<http::string_body> Parse(std::string_view bytes, const ProxyOptions& options = {},
                                       boost::system::error_code* error = nullptr) {
  http::request_parser<http::string_body> parser;
  ConfigureParser(parser, options);
  parser.eager(true);
  boost::system::error_code ec;
  parser.put(boost::asio::buffer(bytes.data(), bytes.size()), ec);
  if (error) *error = ec;
  return parser.release();
}

TEST(RequestHeadTest, ClassifiesRequestsAndKeepsOrMakesTheirIds) {
  auto req = Parse("GET /echo/a?x=1 HTTP/1.1\r\nHost: h\r\nx-request-id: abc-1\r\n\r\n");
  RequestHead head = Classify(req);
  EXPECT_EQ(head.kind, RequestHead::Kind::kRoute);
  EXPECT_EQ(head.path, "/echo/a");
  EXPECT_EQ(RequestIdFrom(req), "abc-1");
  EXPECT_EQ(Classify(Parse("GET /-/healthz HTTP/1.1\r\n\r\n")).kind, RequestHead::Kind::kOwnEndpoint);
  EXPECT_EQ(Classify(Parse("POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 0\r\n\r\n")).kind,
            RequestHead::Kind::kInferenceProtocol);
  RequestHead odd = Classify(Parse("GET http://h/x HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(odd.kind, RequestHead::Kind::kReject);
  EXPECT_EQ(odd.error.status, http::status::bad_request);
  EXPECT_THAT(odd.error.message, HasSubstr("absolute path"));
  // An id with a space, or longer than 128 characters, is replaced by a new 32-hex-character one.
  std::string made = RequestIdFrom(Parse("GET / HTTP/1.1\r\nx-request-id: a b\r\n\r\n"));
  EXPECT_EQ(made.size(), 32u);
  EXPECT_EQ(RequestIdFrom(Parse("GET / HTTP/1.1\r\nx-request-id: " + std::string(129, 'a') + "\r\n\r\n")).size(), 32u);
  EXPECT_EQ(CheckHeader(Parse("GET / HTTP/1.1\r\n\r\n")), std::nullopt);
  std::optional<ErrorAnswer> brew = CheckHeader(Parse("BREW / HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(brew);
  EXPECT_EQ(brew->status, http::status::not_implemented);
  EXPECT_THAT(brew->message, HasSubstr("method BREW is not supported"));
}

TEST(RequestHeadTest, LimitsAndReadErrorsGetClearAnswers) {
  ProxyOptions options;
  options.max_header_bytes = 64;
  options.max_body_bytes = 4;
  boost::system::error_code ec;
  Parse("GET / HTTP/1.1\r\nx-long: " + std::string(100, 'a') + "\r\n\r\n", options, &ec);
  std::optional<ErrorAnswer> a = AnswerToReadError(ec, options);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, http::status::request_header_fields_too_large);
  EXPECT_THAT(a->message, HasSubstr("64 bytes"));
  Parse("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", options, &ec);
  a = AnswerToReadError(ec, options);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, http::status::payload_too_large);
  EXPECT_THAT(a->message, HasSubstr("max_body_bytes (4 bytes)"));
  Parse("GET / HTTP/9.9\r\n\r\n", ProxyOptions{}, &ec);
  a = AnswerToReadError(ec, options);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, http::status::bad_request);
  EXPECT_THAT(a->message, HasSubstr("malformed HTTP request"));
  EXPECT_EQ(AnswerToReadError(http::error::end_of_stream, options), std::nullopt);  // the client left
}

// A routing table with two models: "ready" has a replica; "lazy" has none but autoscales from zero;
// "cold" has none and does not.
class InferenceEndpointsTest : public ::testing::Test {
 protected:
  InferenceEndpointsTest() {
    endpoints::EndpointSet one;
    one.endpoints.push_back({"r1", "/tmp/r1", 1, "v", endpoints::EndpointState::kServing, ""});
    ready_->Update(one);
    endpoints::EndpointSet from_zero;
    from_zero.scales_from_zero = true;
    lazy_->Update(from_zero);
  }
  router::RoutingTable Table(bool with_cold) {
    std::vector<router::ModelRoute> models = {{"ready", "2", {"/v2/models/ready", "a", "R", ready_}},
                                              {"lazy", "", {"/v2/models/lazy", "b", "L", lazy_}}};
    if (with_cold) models.push_back({"cold", "", {"/v2/models/cold", "c", "C", cold_}});
    return router::RoutingTable({}, std::move(models));
  }
  std::shared_ptr<router::Router> ready_ = router::Router::Create("R", 5, -1, 1);
  std::shared_ptr<router::Router> lazy_ = router::Router::Create("L", 5, -1, 2);
  std::shared_ptr<router::Router> cold_ = router::Router::Create("C", 5, -1, 3);
};

TEST_F(InferenceEndpointsTest, ServerEndpointsAndReadiness) {
  router::RoutingTable table = Table(false);
  InferenceAnswer a = AnswerInferenceProtocol(http::verb::get, "/v2", table, false);
  EXPECT_EQ(nlohmann::json::parse(a.body)["extensions"], nlohmann::json::array({"binary_tensor_data"}));
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/health/live", table, true).body, R"({"live":false})");
  a = AnswerInferenceProtocol(http::verb::get, "/v2/health/ready", table, false);
  EXPECT_EQ(a.status, http::status::ok) << "a model autoscaled to zero on purpose is ready";
  router::RoutingTable with_cold = Table(true);
  a = AnswerInferenceProtocol(http::verb::get, "/v2/health/ready", with_cold, false);
  EXPECT_EQ(a.status, http::status::bad_request);
  EXPECT_EQ(a.body, "not ready: no replica serves model(s) cold");
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/health/ready", table, true).status,
            http::status::service_unavailable);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::post, "/v2/health/ready", table, false).status,
            http::status::method_not_allowed);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/models/lazy/ready", table, false).status, http::status::ok);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/models/cold/ready", with_cold, false).status,
            http::status::bad_request);
}

TEST_F(InferenceEndpointsTest, ModelPathsVersionsAndMethods) {
  router::RoutingTable table = Table(false);
  InferenceAnswer a = AnswerInferenceProtocol(http::verb::post, "/v2/models/ready/versions/2/infer", table, false);
  ASSERT_NE(a.route, nullptr);
  EXPECT_EQ(a.route->router, ready_);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/models/ready", table, false).route, a.route);
  a = AnswerInferenceProtocol(http::verb::post, "/v2/models/ready/versions/9/infer", table, false);
  EXPECT_EQ(a.status, http::status::not_found);
  EXPECT_EQ(a.body, "model 'ready' has no version '9' (it serves version '2')");
  a = AnswerInferenceProtocol(http::verb::post, "/v2/models/lazy/versions/1/infer", table, false);
  EXPECT_THAT(a.body, HasSubstr("(it is unversioned)"));
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::post, "/v2/models/nope/infer", table, false).body,
            "unknown model 'nope'");
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/models/ready/infer", table, false).status,
            http::status::method_not_allowed);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::post, "/v2/models/ready", table, false).status,
            http::status::method_not_allowed);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/models/ready/explain", table, false).status,
            http::status::not_found);
  EXPECT_EQ(AnswerInferenceProtocol(http::verb::get, "/v2/nothing", table, false).status, http::status::not_found);
}

// Restores the process's log settings after a test changes them.
class LogSettings {
 public:
  LogSettings() : level_(Log::level()), encoding_(Log::encoding()) {}
  ~LogSettings() {
    Log::SetLevel(level_);
    Log::SetEncoding(encoding_);
  }

 private:
  LogLevel level_;
  LogEncoding encoding_;
};

TEST(AccessLogTest, AJsonLineNamesTheRouteReplicaStatusAndLatency) {
  LogSettings restore;
  Log::SetLevel(LogLevel::kInfo);
  Log::SetEncoding(LogEncoding::kJson);
  router::Route route{"/app", "app", "Ingress", nullptr};
  AccessLog log;
  AccessLine line;
  line.Begin("POST", "/app/predict", &route);
  ASSERT_TRUE(line.pending());
  line.Write(log, "rid-1", 200, "app#Ingress#abc", "0af7651916cd43dd8448eb211c80319c", 1.25);
  EXPECT_FALSE(line.pending());
  ASSERT_FALSE(log.block().empty());
  ASSERT_EQ(log.block().back(), '\n');
  nlohmann::json j = nlohmann::json::parse(log.block());
  EXPECT_EQ(j["request_id"], "rid-1");
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["path"], "/app/predict");
  EXPECT_EQ(j["route"], "/app");
  EXPECT_EQ(j["application"], "app");
  EXPECT_EQ(j["deployment"], "Ingress");
  EXPECT_EQ(j["replica"], "app#Ingress#abc");
  EXPECT_EQ(j["status_code"], 200);
  EXPECT_DOUBLE_EQ(j["latency_ms"].get<double>(), 1.25);
  EXPECT_EQ(j["trace_id"], "0af7651916cd43dd8448eb211c80319c");
  log.block().clear();  // not written to this test's output
}

TEST(AccessLogTest, ATextLineForAnUnroutedRequestAndNoLineWithInfoOff) {
  LogSettings restore;
  Log::SetLevel(LogLevel::kInfo);
  Log::SetEncoding(LogEncoding::kText);
  AccessLog log;
  AccessLine line;
  line.Begin("GET", "/nowhere", nullptr);
  line.Write(log, "rid-2", 404, "", "", 0.5);
  EXPECT_THAT(log.block(), HasSubstr("GET /nowhere 404 0.500ms"));
  log.block().clear();
  Log::SetLevel(LogLevel::kWarning);
  line.Begin("GET", "/x", nullptr);
  EXPECT_FALSE(line.pending()) << "INFO is off: no access line";
}

}  // namespace
}  // namespace ferry::proxy
