// The Open Inference Protocol codec, host side: parsing (JSON and the binary tensor extension), validation
// against a model's metadata, serialization, and /v2 paths. Every error is a status naming what is wrong.
#include "inference/oip.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

namespace {

using ferry::DataType;
using ferry::Json;
using ferry::Tensor;
using ::testing::HasSubstr;

// Parses `body`, which must parse.
ferry::InferRequest Parse(std::string_view body, std::optional<size_t> header_length = std::nullopt) {
  absl::StatusOr<ferry::InferRequest> r = ferry::oip::ParseInferRequest(body, header_length);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::move(*r) : ferry::InferRequest{};
}

// The message of the InvalidArgument that parsing `body` gives ("" when it parses).
std::string ParseError(std::string_view body, std::optional<size_t> header_length = std::nullopt) {
  absl::StatusOr<ferry::InferRequest> r = ferry::oip::ParseInferRequest(body, header_length);
  if (r.ok()) return "";
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_EQ(ferry::oip::HttpStatus(r.status()), 400);
  return std::string(r.status().message());
}

TEST(OipParseTest, EveryDatatypeFromJson) {
  ferry::InferRequest r = Parse(R"({"id": "q", "parameters": {"p": 1}, "inputs": [
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
  ferry::InferRequest r = Parse(
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
  EXPECT_THAT(ferry::oip::SerializeInferResponse(none, resp, "m", "", &json_length), HasSubstr("\"a\\ufffd\""));
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
  ferry::InferRequest r = Parse(body, json.size());
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
    absl::StatusOr<ferry::InferRequest> r = ferry::oip::ParseInferRequest(body);
    EXPECT_TRUE(r.ok()) << r.status();
    absl::Status s = ferry::oip::Validate(m, *r, "net");
    EXPECT_TRUE(s.ok() || absl::IsInvalidArgument(s));
    return std::string(s.message());
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
  std::optional<ferry::oip::ModelPath> p = ferry::oip::ParseModelPath("/v2/models/m/versions/2/ready");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->name, "m");
  EXPECT_EQ(p->version, "2");
  EXPECT_EQ(p->rest, "/ready");
  EXPECT_FALSE(ferry::oip::ParseModelPath("/v2/models/"));
  EXPECT_FALSE(ferry::oip::ParseModelPath("/v2/health/ready"));
  EXPECT_EQ(ferry::oip::ParseModelPath("/v2/models/m")->rest, "");
  EXPECT_EQ(ferry::oip::HttpStatus(absl::InvalidArgumentError("x")), 400);
  EXPECT_EQ(ferry::oip::HttpStatus(absl::NotFoundError("x")), 404);
  EXPECT_EQ(ferry::oip::HttpStatus(absl::InternalError("x")), 500);
  EXPECT_FALSE(ferry::oip::BinaryHeaderLength("12x").ok());
  EXPECT_EQ(**ferry::oip::BinaryHeaderLength("12"), 12u);
  EXPECT_FALSE(*ferry::oip::BinaryHeaderLength(""));
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

}  // namespace
