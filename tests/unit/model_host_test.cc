// The model SDK (tensors, ferry::Model) through the tensor entry of the C ABI, as the replica host serves it:
// the host parses and checks each request, the model gets borrowed tensors, the host writes the answer.
#include "replica/internal/model_host.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <ferry/model.h>
#include <string>
#include <thread>

#include "replica/internal/deployment_host.h"

namespace {

using ferry::DataType;
using ferry::InferError;
using ferry::Json;
using ferry::Tensor;
using ferry::replica::ModelHost;
using ::testing::HasSubstr;

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

TEST(TensorTest, BorrowedTensorsCopyOnlyWhenWritten) {
  float data[3] = {1, 2, 3};
  Tensor t = Tensor::Borrow("x", DataType::kFp32, {3}, data);
  EXPECT_TRUE(t.borrowed());
  EXPECT_EQ(t.data<float>().data(), data);  // no copy
  t.mutable_data<float>()[0] = 9;
  EXPECT_FALSE(t.borrowed());
  EXPECT_EQ(data[0], 1);  // the borrowed buffer is never written
  EXPECT_EQ(t.data<float>()[0], 9);
  EXPECT_THROW(Tensor::Borrow("s", DataType::kBytes, {1}, data), std::invalid_argument);
}

TEST(SpecsTest, FromArgs) {
  auto specs =
      ferry::SpecsFromJson(Json::parse(R"([{"name": "a", "datatype": "INT8", "shape": [-1, 2]}])"), "args.inputs");
  ASSERT_EQ(specs.size(), 1u);
  EXPECT_EQ(specs[0].datatype, DataType::kInt8);
  try {
    ferry::SpecsFromJson(Json::parse(R"([{"name": "a", "datatype": "F32", "shape": [1]}])"), "args.inputs");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("args.inputs[0].datatype"));
  }
}

// Doubles "x"; counts infer_batch calls and whether its inputs were borrowed; fails items whose x[0] is
// negative.
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
    all_borrowed = all_borrowed && x.borrowed();
    if (req.http) last_request_id = std::string(req.http->request_id());
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
  static inline bool all_borrowed = true;
  static inline std::string last_request_id;

 private:
  std::string name_;
};

// A Doubler created through its exported table with the replica host's functions, served by a ModelHost.
struct Served {
  Served() {
    api = ferry::internal::ApiFor<Doubler>("Doubler");
    FerryErrorSink error;
    EXPECT_EQ(api->create(ferry::replica::HostApi(), FerryString{"", 0}, &instance, &error), FERRY_OK)
        << error.message;
    auto created = ModelHost::Create(api, instance, "Doubler");
    EXPECT_TRUE(created.ok()) << created.status();
    host = std::move(*created);
  }
  ~Served() { api->destroy(instance); }
  const FerryDeploymentApi* api;
  void* instance = nullptr;
  std::unique_ptr<ModelHost> host;
};

ferry::transport::RequestMessage Message(std::string_view method, std::string_view path, std::string_view body,
                                         ferry::transport::HeaderList headers = {}) {
  ferry::transport::RequestMessage m;
  m.request_id = "req-1";
  m.method = method;
  m.path = path;
  m.body = body;
  m.headers = std::move(headers);
  return m;
}

FerryResponseSink Serve(const Served& s, const ferry::transport::RequestMessage& m) {
  std::unique_ptr<ModelHost::Prepared> p = s.host->Prepare(m);
  if (p->answer) return *p->answer;
  FerryRequest http{};
  http.struct_size = sizeof(http);
  http.request_id = FerryString{m.request_id.data(), m.request_id.size()};
  FerryResponseSink out;
  s.host->Run({p.get()}, {&http}, {&out});
  return out;
}

std::string Header(const FerryResponseSink& r, std::string_view name) {
  for (const auto& [k, v] : r.headers)
    if (k == name) return v;
  return "";
}

TEST(ModelTest, ATableWithTheTensorEntryNeedsNoHandle) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Doubler>("Doubler");
  EXPECT_EQ(api->handle, nullptr);
  EXPECT_NE(api->infer, nullptr);
  EXPECT_NE(api->model_metadata, nullptr);
  EXPECT_EQ(api->struct_size, sizeof(FerryDeploymentApi));
}

TEST(ModelTest, TheHostSpeaksTheProtocolAndTheModelGetsBorrowedTensors) {
  Served s;
  EXPECT_EQ(s.host->metadata().versions, std::vector<std::string>{"7"});
  FerryResponseSink meta = Serve(s, Message("GET", "/v2/models/served", ""));
  Json m = Json::parse(meta.body);
  EXPECT_EQ(m["name"], "served");
  EXPECT_EQ(m["versions"], Json::array({"7"}));
  EXPECT_EQ(m["inputs"][0]["shape"], Json::array({-1}));

  Doubler::all_borrowed = true;
  std::string body = R"({"id": "i", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2.5]}]})";
  FerryResponseSink out = Serve(s, Message("POST", "/v2/models/served/infer", body));
  EXPECT_EQ(out.status, 200) << out.body;
  Json r = Json::parse(out.body);
  EXPECT_EQ(r["model_name"], "served");
  EXPECT_EQ(r["model_version"], "7");
  EXPECT_EQ(r["id"], "i");
  EXPECT_EQ(r["outputs"][0]["data"], Json::array({2, 5}));
  EXPECT_TRUE(Doubler::all_borrowed) << "the model's inputs were copied";
  EXPECT_EQ(Doubler::last_request_id, "req-1");  // the HTTP request reaches the model too

  std::string wrong = R"({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]})";
  FerryResponseSink bad = Serve(s, Message("POST", "/v2/models/served/infer", wrong));
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(Json::parse(bad.body)["error"], "input 'x': datatype INT32 does not match the model's FP32");
  FerryResponseSink negative =
      Serve(s, Message("POST", "/app", R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [-1]}]})"));
  EXPECT_EQ(negative.status, 422);
  EXPECT_EQ(Json::parse(negative.body)["error"], "negative input");
  FerryResponseSink length = Serve(s, Message("POST", "/app", "{}", {{"inference-header-content-length", "x"}}));
  EXPECT_EQ(length.status, 400);
  EXPECT_THAT(length.body, HasSubstr("Inference-Header-Content-Length"));

  // A binary request gets a binary answer when it asks for one.
  std::string json =
      R"({"parameters": {"binary_data_output": true}, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]})";
  std::string bin = json;
  float three = 3.0f;
  bin.append(reinterpret_cast<const char*>(&three), 4);
  std::string header_length = std::to_string(json.size());
  FerryResponseSink bin_out = Serve(s, Message("POST", "/route", bin, {{"inference-header-content-length", header_length}}));
  ASSERT_EQ(bin_out.status, 200) << bin_out.body;
  size_t n = std::stoul(Header(bin_out, "inference-header-content-length"));
  EXPECT_EQ(Json::parse(bin_out.body.substr(0, n))["model_name"], "doubler");  // not named by the path
  float six;
  ASSERT_EQ(bin_out.body.size(), n + 4);
  std::memcpy(&six, bin_out.body.data() + n, 4);
  EXPECT_EQ(six, 6.0f);
}

TEST(ModelTest, ABatchRunsOnceAndFailsOnlyItsBadItems) {
  Served s;
  std::vector<std::string> bodies = {
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["bad"]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [-1]}]})",
      R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [4, 5]}]})"};
  // Prepared as they arrive, on another thread than the batch's, as the replica does.
  std::vector<std::unique_ptr<ModelHost::Prepared>> prepared(bodies.size());
  std::thread receiver([&] {
    for (size_t i = 0; i < bodies.size(); ++i) prepared[i] = s.host->Prepare(Message("POST", "/v2/models/d/infer", bodies[i]));
  });
  receiver.join();
  ASSERT_TRUE(prepared[1]->answer) << "a malformed body is answered when it arrives";
  EXPECT_EQ(prepared[1]->answer->status, 400);
  std::vector<ModelHost::Prepared*> batch = {prepared[0].get(), prepared[2].get(), prepared[3].get()};
  FerryRequest http{};
  http.struct_size = sizeof(http);
  std::vector<FerryResponseSink> out(3);
  int before = Doubler::batches.load();
  s.host->Run(batch, {&http, &http, &http}, {&out[0], &out[1], &out[2]});
  EXPECT_EQ(Doubler::batches.load(), before + 1);
  EXPECT_EQ(Doubler::last_batch_size, 3u);
  EXPECT_EQ(out[0].status, 200);
  EXPECT_EQ(Header(out[0], "ferry-batch-size"), "3");
  EXPECT_EQ(Json::parse(out[0].body)["outputs"][0]["data"], Json::array({2}));
  EXPECT_EQ(out[1].status, 422);
  EXPECT_EQ(Json::parse(out[1].body)["error"], "negative input");
  EXPECT_EQ(out[2].status, 200);
  EXPECT_EQ(Json::parse(out[2].body)["outputs"][0]["data"], Json::array({8, 10}));
}

}  // namespace
