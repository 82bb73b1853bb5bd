// The model SDK: tensors, the Open Inference Protocol codec and validation, and ferry::Model through the
// C ABI table it generates, as the replica host calls it.
#include <atomic>
#include <cmath>
#include <ferry/inference.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <string>
#include <thread>

#include "common/sdk_host.h"

namespace {

using ferry::DataType;
using ferry::InferError;
using ferry::Json;
using ferry::Tensor;
using ::testing::HasSubstr;

using ferry::testing::kHost;
using ferry::testing::S;

// The message of the InferError that parsing `body` throws ("" when it parses).
std::string ParseError(std::string_view body, std::optional<size_t> header_length = std::nullopt) {
  try {
    ferry::oip::ParseInferRequest(body, header_length);
  } catch (const InferError& e) {
    EXPECT_EQ(e.status(), 400);
    return e.what();
  }
  return "";
}

TEST(TensorTest, TypedAccessAndChecks) {
  Tensor t = Tensor::From<float>("x", {2, 2}, std::vector<float>{1, 2, 3, 4});
  EXPECT_EQ(t.size(), 4);
  EXPECT_EQ(t.ByteSize(), 16u);
  EXPECT_EQ(t.data<float>()[3], 4.0f);
  EXPECT_THROW(t.data<double>(), std::invalid_argument);
  EXPECT_THROW(Tensor::From<float>("x", {3}, std::vector<float>{1, 2}), std::invalid_argument);
  EXPECT_THROW(Tensor("x", DataType::kFp32, {-1, 2}), std::invalid_argument);
  t.Reshape({4});
  EXPECT_EQ(t.shape(), ferry::Shape({4}));
  EXPECT_THROW(t.Reshape({5}), std::invalid_argument);
  Tensor s = Tensor::FromStrings("s", {2}, {"a", "bc"});
  EXPECT_EQ(s.strings()[1], "bc");
  EXPECT_TRUE(s.bytes().empty());
}

TEST(TensorTest, HalfConversions) {
  EXPECT_EQ(ferry::Half::FromFloat(1.0f).bits, 0x3c00);
  EXPECT_EQ(ferry::Half::FromFloat(-2.0f).bits, 0xc000);
  EXPECT_EQ(ferry::Half::FromFloat(65504.0f).bits, 0x7bff);
  EXPECT_EQ(ferry::Half::FromFloat(1e6f).bits, 0x7c00);                   // overflow: infinity
  EXPECT_EQ(ferry::Half::FromFloat(std::ldexp(1.0f, -24)).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(ferry::Half::FromFloat(0.0f).bits, 0x0000);
  EXPECT_TRUE(std::isnan(ferry::Half::FromFloat(NAN).ToFloat()));
  for (float f : {0.5f, 3.140625f, -1024.0f, 6.1035156e-05f, 5.9604645e-08f})
    EXPECT_EQ(ferry::Half::FromFloat(f).ToFloat(), f) << f;
  EXPECT_EQ(ferry::Half::FromFloat(1.0009765625f + 0.0001f).ToFloat(), 1.0009765625f);  // rounds to nearest
}

TEST(OipParseTest, EveryDatatypeFromJson) {
  ferry::InferRequest r = ferry::oip::ParseInferRequest(R"({"id": "q", "parameters": {"p": 1}, "inputs": [
    {"name": "b", "datatype": "BOOL", "shape": [2], "data": [true, false]},
    {"name": "u8", "datatype": "UINT8", "shape": [2], "data": [0, 255]},
    {"name": "u64", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615]},
    {"name": "i8", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
    {"name": "i64", "datatype": "INT64", "shape": [1], "data": [-9223372036854775808]},
    {"name": "h", "datatype": "FP16", "shape": [1], "data": [1.5]},
    {"name": "f", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3e2, -4]]},
    {"name": "d", "datatype": "FP64", "shape": [1], "data": [0.1]},
    {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]}],
    "outputs": [{"name": "o"}]})");
  EXPECT_EQ(r.id, "q");
  EXPECT_EQ(r.parameters["p"], 1);
  ASSERT_EQ(r.inputs.size(), 9u);
  EXPECT_TRUE(r.input("b").data<bool>()[0]);
  EXPECT_EQ(r.input("u8").data<uint8_t>()[1], 255);
  EXPECT_EQ(r.input("u64").data<uint64_t>()[0], UINT64_MAX);
  EXPECT_EQ(r.input("i8").data<int8_t>()[0], -128);
  EXPECT_EQ(r.input("i64").data<int64_t>()[0], INT64_MIN);
  EXPECT_EQ(r.input("h").data<ferry::Half>()[0].ToFloat(), 1.5f);
  EXPECT_THAT(std::vector<float>(r.input("f").data<float>().begin(), r.input("f").data<float>().end()),
              ::testing::ElementsAre(1, 2.5, 300, -4));
  EXPECT_EQ(r.input("d").data<double>()[0], 0.1);
  EXPECT_EQ(r.input("s").strings()[1], "yz");
  EXPECT_EQ(r.outputs, std::vector<std::string>{"o"});
}

TEST(OipParseTest, MalformedRequestsNameWhatIsWrong) {
  EXPECT_THAT(ParseError("{"), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError("[]"), HasSubstr("JSON object"));
  EXPECT_THAT(ParseError("{}"), HasSubstr("\"inputs\" is required"));
  EXPECT_THAT(ParseError(R"({"inputs": []})"), HasSubstr("non-empty array"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]})"), HasSubstr("\"name\""));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]})"),
              HasSubstr("input 'x': unknown datatype \"FP8\""));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]})"),
              HasSubstr("input 'x': \"shape\""));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]})"),
              HasSubstr("input 'x': \"shape\" is required"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]})"),
              HasSubstr("input 'x': shape [3] needs 3 elements, \"data\" has 2"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, "a"]}]})"),
              HasSubstr("input 'x': element 1 (\"a\") is not a number"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [128]}]})"),
              HasSubstr("element 0 (128) is not an integer in the datatype's range for INT8"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}]})"),
              HasSubstr("for UINT8"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]})"),
              HasSubstr("for INT32"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]})"),
              HasSubstr("true or false"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]})"),
              HasSubstr("not a string"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                                        {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})"),
              HasSubstr("input 'x' appears twice"));
  // A shape that asks for more elements than the body could carry is refused before anything is allocated.
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP64", "shape": [100000000000], "data": []}]})"),
              HasSubstr("more than the request could carry"));
  EXPECT_THAT(
      ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [1]})"),
      HasSubstr("\"outputs\""));
}

TEST(OipParseTest, AnyMemberOrderEscapesAndWhiteSpace) {
  ferry::InferRequest r = ferry::oip::ParseInferRequest(
      "{ \"unknown\": {\"a\": [1, {\"b\": \"]\"}]},\n \"inputs\" : [ { \"data\" : [ [ 1.5e1 , -0.25 ] ] ,"
      " \"shape\": [1, 2], \"datatype\": \"FP64\", \"name\": \"x\" },"
      " {\"name\": \"s\", \"datatype\": \"BYTES\", \"shape\": [2], \"data\": [\"a\\\"b\\n\", "
      "\"\\u00e9\\ud83d\\ude00\"]} ] }\n");
  EXPECT_EQ(r.input("x").data<double>()[0], 15.0);
  EXPECT_EQ(r.input("x").data<double>()[1], -0.25);
  EXPECT_EQ(r.input("s").strings()[0], "a\"b\n");
  EXPECT_EQ(r.input("s").strings()[1], "\xc3\xa9\xf0\x9f\x98\x80");  // é and U+1F600 in UTF-8
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": 5}]})"),
              HasSubstr("\"data\" must be an array"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]} x)"),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1,]}]})"),
              HasSubstr("element 1 () is not a number"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [nan]}]})"),
              HasSubstr("element 0 (nan) is not a number"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e99]}]})"),
              HasSubstr("in the datatype's range for FP32"));
  EXPECT_THAT(ParseError(R"({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}]})"),
              HasSubstr("unpaired surrogate"));
  EXPECT_THAT(ParseError(R"({"id": 5, "inputs": []})"), HasSubstr("\"id\" must be a string"));
  for (std::string bad : {"\x84", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf5\x80\x80\x80"})
    EXPECT_THAT(
        ParseError(R"({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": [")" + bad + "\"]}]}"),
        HasSubstr("invalid UTF-8"))
        << bad;
  // Binary BYTES may hold any bytes; a JSON answer replaces what is not UTF-8.
  ferry::InferRequest none;
  ferry::InferResponse resp;
  resp.outputs.push_back(Tensor::FromStrings("s", {1}, {"a\x84"}));
  std::optional<size_t> json_length;
  EXPECT_THAT(ferry::oip::SerializeInferResponse(none, resp, "m", "", &json_length), HasSubstr("\"a\xef\xbf\xbd\""));
}

TEST(OipParseTest, BinaryTensorExtension) {
  std::string json =
      R"({"inputs": [{"name": "f", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
                     {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}},
                     {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]}]})";
  std::string body = json;
  float f[2] = {1.5f, -2.0f};
  body.append(reinterpret_cast<const char*>(f), sizeof(f));
  body.append(std::string("\x02\x00\x00\x00hi\x01\x00\x00\x00!", 11));
  ferry::InferRequest r = ferry::oip::ParseInferRequest(body, json.size());
  EXPECT_EQ(r.input("f").data<float>()[1], -2.0f);
  EXPECT_EQ(r.input("s").strings(), (std::vector<std::string>{"hi", "!"}));
  EXPECT_EQ(r.input("j").data<int32_t>()[0], 7);

  EXPECT_THAT(ParseError(body, body.size() + 1), HasSubstr("larger than the body"));
  EXPECT_THAT(ParseError(body + "zz", json.size()), HasSubstr("2 bytes of binary data that no input claims"));
  EXPECT_THAT(ParseError(body.substr(0, body.size() - 3), json.size()), HasSubstr("runs past the end of the body"));
  EXPECT_THAT(ParseError(json), HasSubstr("no Inference-Header-Content-Length header"));
  std::string short_json =
      R"({"inputs": [{"name": "f", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}]})";
  EXPECT_THAT(ParseError(short_json + std::string(8, '\0'), short_json.size()),
              HasSubstr("binary_data_size is 8 bytes, shape [3] of FP32 needs 12"));
}

TEST(OipValidateTest, AgainstTheModelsMetadata) {
  ferry::ModelMetadata m;
  m.inputs = {{"x", DataType::kFp32, {-1, 3}}, {"y", DataType::kInt64, {1}}};
  m.outputs = {{"out", DataType::kFp32, {-1}}};
  auto error = [&](std::string body) -> std::string {
    try {
      ferry::oip::Validate(m, ferry::oip::ParseInferRequest(body), "net");
    } catch (const InferError& e) {
      return e.what();
    }
    return "";
  };
  const std::string y = R"({"name": "y", "datatype": "INT64", "shape": [1], "data": [1]})";
  EXPECT_EQ(
      error(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1,2,3,4,5,6]}, )" + y + "]}"),
      "");
  EXPECT_EQ(error(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1,2,3]}]})"),
            "missing input 'y'");
  EXPECT_EQ(error(R"({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}, )" + y + "]}"),
            "unknown input 'z': model 'net' takes x, y");
  EXPECT_EQ(error(R"({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1,2,3]}, )" + y + "]}"),
            "input 'x': datatype FP64 does not match the model's FP32");
  EXPECT_EQ(error(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1,2,3]}, )" + y + "]}"),
            "input 'x': shape [3] does not match the model's [-1, 3] (-1 is any size)");
  EXPECT_EQ(error(R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1,2,3]}, )" + y +
                  R"(], "outputs": [{"name": "nope"}]})"),
            "unknown output 'nope' requested: model 'net' has no such output");
}

TEST(OipSerializeTest, JsonAndBinaryOutputs) {
  ferry::InferRequest req;
  req.id = "r1";
  ferry::InferResponse resp;
  resp.outputs.push_back(Tensor::From<float>("a", {3}, std::vector<float>{0.1f, 2.0f, NAN}));
  resp.outputs.push_back(Tensor::From<int64_t>("b", {1}, std::vector<int64_t>{-5}));
  std::optional<size_t> json_length;
  std::string body = ferry::oip::SerializeInferResponse(req, resp, "m", "3", &json_length);
  EXPECT_FALSE(json_length);
  Json j = Json::parse(body);
  EXPECT_EQ(j["model_name"], "m");
  EXPECT_EQ(j["model_version"], "3");
  EXPECT_EQ(j["id"], "r1");
  EXPECT_EQ(j["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(j["outputs"][0]["shape"], Json::array({3}));
  EXPECT_EQ(j["outputs"][0]["data"][0].get<float>(), 0.1f);  // shortest text that reads back exactly
  EXPECT_THAT(body, HasSubstr("[0.1,2,null]"));
  EXPECT_EQ(j["outputs"][1]["data"][0], -5);

  req.outputs = {"b"};
  req.parameters = {{"binary_data_output", true}};
  body = ferry::oip::SerializeInferResponse(req, resp, "m", "", &json_length);
  ASSERT_TRUE(json_length);
  Json head = Json::parse(body.substr(0, *json_length));
  ASSERT_EQ(head["outputs"].size(), 1u);
  EXPECT_EQ(head["outputs"][0]["parameters"]["binary_data_size"], 8);
  int64_t b;
  ASSERT_EQ(body.size() - *json_length, 8u);
  std::memcpy(&b, body.data() + *json_length, 8);
  EXPECT_EQ(b, -5);
}

TEST(OipTargetTest, PathsAndMethods) {
  ferry::oip::Target t = ferry::oip::ParseTarget("POST", "/v2/models/m/versions/2/infer");
  EXPECT_TRUE(t.infer);
  EXPECT_EQ(t.model_name, "m");
  EXPECT_EQ(t.model_version, "2");
  t = ferry::oip::ParseTarget("GET", "/v2/models/m");
  EXPECT_FALSE(t.infer);
  EXPECT_EQ(t.model_version, "");
  EXPECT_TRUE(ferry::oip::ParseTarget("POST", "/app").infer);
  EXPECT_FALSE(ferry::oip::ParseTarget("GET", "/app").infer);
}

// Doubles "x"; counts infer_batch calls; fails items whose x[0] is negative.
class Doubler : public ferry::Model {
 public:
  explicit Doubler(const ferry::Args& args) : name_(args.get<std::string>("model_name", "doubler")) {}
  ferry::ModelMetadata metadata() const override {
    return {.name = name_,
            .versions = {"7"},
            .platform = "test",
            .inputs = {{"x", DataType::kFp32, {-1}}},
            .outputs = {{"y", DataType::kFp32, {-1}}}};
  }
  ferry::InferResponse infer(const ferry::InferRequest& req) override {
    const Tensor& x = req.input("x");
    if (x.size() > 0 && x.data<float>()[0] < 0) throw InferError(422, "negative input");
    Tensor y("y", DataType::kFp32, x.shape());
    for (int64_t i = 0; i < x.size(); ++i) y.mutable_data<float>()[i] = 2 * x.data<float>()[i];
    ferry::InferResponse r;
    r.outputs.push_back(std::move(y));
    return r;
  }
  std::vector<ferry::InferResponse> infer_batch(std::span<const ferry::InferRequest> batch) override {
    batches.fetch_add(1);
    last_batch_size = batch.size();
    return Model::infer_batch(batch);
  }
  static inline std::atomic<int> batches{0};
  static inline size_t last_batch_size = 0;

 private:
  std::string name_;
};

FerryRequest MakeRequest(std::string_view method, std::string_view path, std::string_view body,
                         const std::vector<FerryHeader>& headers = {}) {
  return ferry::testing::MakeRequest(method, path, "", body, headers);
}

TEST(ModelTest, SpeaksTheProtocolThroughTheAbi) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Doubler>("Doubler");
  ASSERT_NE(api->handle_batch, nullptr);
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK) << error.message;

  FerryRequest meta = MakeRequest("GET", "/v2/models/served", "");
  FerryResponseSink sink;
  ASSERT_EQ(api->handle(instance, &meta, &sink, &error), FERRY_OK);
  Json m = Json::parse(sink.body);
  EXPECT_EQ(m["name"], "served");
  EXPECT_EQ(m["versions"], Json::array({"7"}));
  EXPECT_EQ(m["inputs"][0]["shape"], Json::array({-1}));

  std::string body = R"({"id": "i", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2.5]}]})";
  FerryRequest infer = MakeRequest("POST", "/v2/models/served/infer", body);
  FerryResponseSink out;
  ASSERT_EQ(api->handle(instance, &infer, &out, &error), FERRY_OK);
  EXPECT_EQ(out.status, 200);
  Json r = Json::parse(out.body);
  EXPECT_EQ(r["model_name"], "served");
  EXPECT_EQ(r["model_version"], "7");
  EXPECT_EQ(r["outputs"][0]["data"], Json::array({2, 5}));

  std::string wrong = R"({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]})";
  FerryRequest bad = MakeRequest("POST", "/v2/models/served/infer", wrong);
  FerryResponseSink bad_out;
  ASSERT_EQ(api->handle(instance, &bad, &bad_out, &error), FERRY_OK);
  EXPECT_EQ(bad_out.status, 400);
  EXPECT_EQ(Json::parse(bad_out.body)["error"], "input 'x': datatype INT32 does not match the model's FP32");

  // A binary request gets a binary answer when it asks for one.
  std::string json =
      R"({"parameters": {"binary_data_output": true}, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]})";
  std::string bin = json;
  float three = 3.0f;
  bin.append(reinterpret_cast<const char*>(&three), 4);
  std::string length = std::to_string(json.size());
  std::vector<FerryHeader> headers = {{S("inference-header-content-length"), S(length)}};
  FerryRequest binary = MakeRequest("POST", "/route", bin, headers);
  FerryResponseSink bin_out;
  ASSERT_EQ(api->handle(instance, &binary, &bin_out, &error), FERRY_OK);
  ASSERT_EQ(bin_out.status, 200) << bin_out.body;
  size_t n = std::stoul(bin_out.header("inference-header-content-length"));
  EXPECT_EQ(Json::parse(bin_out.body.substr(0, n))["model_name"], "doubler");  // not named by the path
  float six;
  ASSERT_EQ(bin_out.body.size(), n + 4);
  std::memcpy(&six, bin_out.body.data() + n, 4);
  EXPECT_EQ(six, 6.0f);
  api->destroy(instance);
}

TEST(ModelTest, ABatchRunsOnceAndFailsOnlyItsBadItems) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Doubler>("Doubler");
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK);
  std::vector<std::string> bodies = {
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["bad"]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [-1]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [4, 5]}]})"};
  std::vector<FerryRequest> requests;
  for (const std::string& b : bodies) requests.push_back(MakeRequest("POST", "/v2/models/d/infer", b));
  std::vector<const FerryRequest*> ptrs;
  for (const FerryRequest& r : requests) ptrs.push_back(&r);
  std::vector<FerryResponseSink> sinks(bodies.size());
  std::vector<FerryResponseSink*> sink_ptrs;
  for (FerryResponseSink& s : sinks) sink_ptrs.push_back(&s);
  int before = Doubler::batches.load();
  ASSERT_EQ(api->handle_batch(instance, ptrs.data(), ptrs.size(), sink_ptrs.data(), &error), FERRY_OK);
  EXPECT_EQ(Doubler::batches.load(), before + 1);
  EXPECT_EQ(Doubler::last_batch_size, 3u);  // the malformed item never reaches the model
  EXPECT_EQ(sinks[0].status, 200);
  EXPECT_EQ(sinks[0].header("ferry-batch-size"), "3");
  EXPECT_EQ(sinks[1].header("ferry-batch-size"), "");
  EXPECT_EQ(Json::parse(sinks[0].body)["outputs"][0]["data"], Json::array({2}));
  EXPECT_EQ(sinks[1].status, 400);
  EXPECT_EQ(sinks[2].status, 422);
  EXPECT_EQ(Json::parse(sinks[2].body)["error"], "negative input");
  EXPECT_EQ(sinks[3].status, 200);
  EXPECT_EQ(Json::parse(sinks[3].body)["outputs"][0]["data"], Json::array({8, 10}));
  api->destroy(instance);
}

// prepare() parses and validates a request as it arrives; handle_batch() then answers it exactly as it
// would have unprepared, on whatever thread prepare() ran.
TEST(ModelTest, PreparedRequestsAnswerAsUnprepared) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Doubler>("Doubler");
  ASSERT_NE(api->prepare, nullptr);
  ASSERT_NE(api->release, nullptr);
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK);
  std::vector<std::string> bodies = {
      R"({"id": "a", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["bad"]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [-1]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [4, 5]}]})",
      R"({"inputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1]}]})"};
  auto run = [&](bool prepare) {
    std::vector<FerryRequest> requests;
    for (const std::string& b : bodies) requests.push_back(MakeRequest("POST", "/v2/models/d/infer", b));
    std::vector<void*> states(requests.size(), nullptr);
    if (prepare) {
      std::thread receiver([&] {  // the replica prepares on its receiving thread, not the batch's
        for (size_t i = 0; i < requests.size(); ++i) {
          FerryErrorSink e;
          EXPECT_EQ(api->prepare(instance, &requests[i], &states[i], &e), FERRY_OK) << e.message;
          EXPECT_NE(states[i], nullptr);
        }
      });
      receiver.join();
      for (size_t i = 0; i < requests.size(); ++i) requests[i].prepared = states[i];
    }
    std::vector<const FerryRequest*> ptrs;
    for (const FerryRequest& r : requests) ptrs.push_back(&r);
    std::vector<FerryResponseSink> sinks(bodies.size());
    std::vector<FerryResponseSink*> sink_ptrs;
    for (FerryResponseSink& s : sinks) sink_ptrs.push_back(&s);
    EXPECT_EQ(api->handle_batch(instance, ptrs.data(), ptrs.size(), sink_ptrs.data(), &error), FERRY_OK);
    for (void* state : states) api->release(instance, state);
    return sinks;
  };
  std::vector<FerryResponseSink> plain = run(false), prepared = run(true);
  ASSERT_EQ(plain.size(), prepared.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_EQ(prepared[i].status, plain[i].status) << i;
    EXPECT_EQ(prepared[i].body, plain[i].body) << i;
    EXPECT_EQ(prepared[i].headers, plain[i].headers) << i;
  }
  EXPECT_EQ(Json::parse(prepared[0].body)["id"], "a");
  EXPECT_EQ(Json::parse(prepared[3].body)["outputs"][0]["data"], Json::array({8, 10}));
  EXPECT_EQ(prepared[1].status, 400);
  EXPECT_EQ(prepared[4].status, 400);

  // A host whose FerryRequest ends before `prepared`: the field is not read, the SDK prepares itself.
  FerryRequest old = MakeRequest("POST", "/v2/models/d/infer", bodies[3]);
  void* state = nullptr;
  ASSERT_EQ(api->prepare(instance, &old, &state, &error), FERRY_OK);
  old.struct_size = offsetof(FerryRequest, prepared);
  ferry::Request view(&old);
  EXPECT_EQ(view.prepared(), nullptr);
  old.prepared = reinterpret_cast<void*>(0x1);  // beyond its struct_size: must not be touched
  const FerryRequest* one = &old;
  FerryResponseSink sink;
  FerryResponseSink* sink_ptr = &sink;
  ASSERT_EQ(api->handle_batch(instance, &one, 1, &sink_ptr, &error), FERRY_OK);
  EXPECT_EQ(Json::parse(sink.body)["outputs"][0]["data"], Json::array({8, 10}));
  api->release(instance, state);
  api->destroy(instance);
}

TEST(SpecsTest, FromArgs) {
  auto specs =
      ferry::oip::SpecsFromJson(Json::parse(R"([{"name": "a", "datatype": "INT8", "shape": [-1, 2]}])"), "args.inputs");
  ASSERT_EQ(specs.size(), 1u);
  EXPECT_EQ(specs[0].datatype, DataType::kInt8);
  try {
    ferry::oip::SpecsFromJson(Json::parse(R"([{"name": "a", "datatype": "F32", "shape": [1]}])"), "args.inputs");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("args.inputs[0].datatype"));
  }
}

}  // namespace
