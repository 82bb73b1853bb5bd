// xgboost:PATH.json (or .ubj) — serves an XGBoost booster through XGBoost's C API behind the Open
// Inference Protocol.
//
// Built as its own shared library (libferry_runtime_xgboost.so) against the public SDK and loaded only by
// replicas that serve an XGBoost model. The booster is loaded once per replica with `nthread` from
// args.nthread or the deployment's num_cpus. Metadata: one FP32 input [-1, num_features] (named by
// args.input_name, default input__0) and one FP32 output (args.output_name, default output__0) shaped
// [-1] or [-1, num_class] as the objective predicts; args.inputs/args.outputs override it. A batch's rows
// are predicted in one call and split back per request.
#include <xgboost/c_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ferry/model.h>
#include <string>
#include <vector>

#include "runtimes/model_args.h"

namespace ferry::runtimes {
namespace {

class XGBoost : public Model {
 public:
  explicit XGBoost(const Args& args) {
    ModelArgs model = ModelArgs::Read(args, "xgboost", "nthread");
    path_ = model.path;
    name_ = model.name;
    versions_ = model.versions;
    Check(XGBoosterCreate(nullptr, 0, &booster_), "create a booster");
    if (XGBoosterLoadModel(booster_, path_.c_str()) != 0) {
      std::string why = XGBGetLastError();
      XGBoosterFree(booster_);
      booster_ = nullptr;
      throw std::runtime_error("cannot load XGBoost model " + path_ + ": " + FirstLine(why));
    }
    Check(XGBoosterSetParam(booster_, "nthread", std::to_string(model.threads).c_str()), "set nthread");
    bst_ulong features = 0;
    Check(XGBoosterGetNumFeature(booster_, &features), "read the number of features");
    features_ = static_cast<int64_t>(features);

    // Predict one row of zeros to learn the output's shape (and warm up).
    std::vector<float> zeros(static_cast<size_t>(features_), 0.0f);
    Shape out_shape;
    Predict(zeros.data(), 1, &out_shape);
    Shape output{-1};
    if (out_shape.size() > 1) output.insert(output.end(), out_shape.begin() + 1, out_shape.end());
    inputs_ = args.has("inputs")
                  ? SpecsFromJson(args.json().at("inputs"), "args.inputs")
                  : std::vector<TensorSpec>{
                        {args.get<std::string>("input_name", "input__0"), DataType::kFp32, {-1, features_}}};
    outputs_ =
        args.has("outputs")
            ? SpecsFromJson(args.json().at("outputs"), "args.outputs")
            : std::vector<TensorSpec>{{args.get<std::string>("output_name", "output__0"), DataType::kFp32, output}};
    if (inputs_.size() != 1 || inputs_[0].datatype != DataType::kFp32 || inputs_[0].shape.size() != 2 ||
        (inputs_[0].shape[1] != features_ && inputs_[0].shape[1] != -1))
      throw std::invalid_argument("args.inputs: an XGBoost model takes one FP32 input shaped [-1, " +
                                  std::to_string(features_) + "]");
    if (outputs_.size() != 1 || outputs_[0].datatype != DataType::kFp32)
      throw std::invalid_argument("args.outputs: an XGBoost model gives one FP32 output");
  }
  ~XGBoost() override {
    if (booster_) XGBoosterFree(booster_);
  }

  ModelMetadata metadata() const override {
    return ModelMetadata{
        .name = name_, .versions = versions_, .platform = "xgboost", .inputs = inputs_, .outputs = outputs_};
  }

  InferResponse infer(const InferRequest& request) override {
    const Tensor& x = request.input(inputs_[0].name);
    InferResponse r;
    r.outputs.push_back(Run(x.data<float>().data(), Rows(x)));
    return r;
  }

  std::vector<InferResponse> infer_batch(std::span<const InferRequest> batch) override {
    if (batch.size() < 2) return Model::infer_batch(batch);
    std::vector<float> rows;
    std::vector<int64_t> counts;
    for (const InferRequest& r : batch) {
      const Tensor& x = r.input(inputs_[0].name);
      std::span<const float> v = x.data<float>();
      rows.insert(rows.end(), v.begin(), v.end());
      counts.push_back(Rows(x));
    }
    int64_t total = 0;
    for (int64_t n : counts) total += n;
    Tensor all = Run(rows.data(), total);
    const int64_t per_row = total ? all.size() / total : 0;
    std::vector<InferResponse> out(batch.size());
    int64_t at = 0;
    for (size_t k = 0; k < batch.size(); ++k) {
      Shape shape = all.shape();
      shape[0] = counts[k];
      std::span<const float> values =
          all.data<float>().subspan(static_cast<size_t>(at * per_row), static_cast<size_t>(counts[k] * per_row));
      out[k].outputs.push_back(Tensor::From<float>(outputs_[0].name, shape, values));
      at += counts[k];
    }
    return out;
  }

 private:
  static std::string FirstLine(std::string_view text) { return PrintableFirstLine(text); }
  void Check(int rc, const char* what) const {
    if (rc != 0) throw std::runtime_error(std::string("XGBoost: cannot ") + what + ": " + FirstLine(XGBGetLastError()));
  }

  int64_t Rows(const Tensor& x) const {
    if (x.shape().size() != 2 || x.shape()[1] != features_)
      throw InferError(400, "input '" + x.name() + "': shape " + ShapeString(x.shape()) +
                                " does not match the model's [-1, " + std::to_string(features_) + "]");
    return x.shape()[0];
  }

  Tensor Run(const float* data, int64_t rows) const {
    Shape shape;
    const float* result = Predict(data, rows, &shape);
    Tensor out(outputs_[0].name, DataType::kFp32, shape);
    if (out.ByteSize()) std::memcpy(out.mutable_bytes().data(), result, out.ByteSize());
    return out;
  }

  // Predicts `rows` rows; the result belongs to the booster until this thread's next call.
  const float* Predict(const float* data, int64_t rows, Shape* shape) const {
    Json array = {{"data", {reinterpret_cast<uintptr_t>(data), true}},
                  {"shape", {rows, features_}},
                  {"typestr", "<f4"},
                  {"version", 3}};
    // cache_id 0 is required by XGBoost 1.7's in-place prediction; NaN marks a missing value.
    static const std::string config =
        R"({"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, "strict_shape": false, "cache_id": 0, "missing": NaN})";
    const bst_ulong* out_shape = nullptr;
    bst_ulong out_dim = 0;
    const float* result = nullptr;
    std::string interface = array.dump();
    if (XGBoosterPredictFromDense(booster_, interface.c_str(), config.c_str(), nullptr, &out_shape, &out_dim,
                                  &result) != 0)
      throw InferError(500, "XGBoost prediction failed: " + FirstLine(XGBGetLastError()));
    shape->assign(out_shape, out_shape + out_dim);
    if (shape->empty() || (*shape)[0] != rows) shape->insert(shape->begin(), rows);  // a scalar per row
    return result;
  }

  std::string path_, name_;
  std::vector<std::string> versions_;
  BoosterHandle booster_ = nullptr;
  int64_t features_ = 0;
  std::vector<TensorSpec> inputs_, outputs_;
};

}  // namespace
}  // namespace ferry::runtimes

using XGBoost = ferry::runtimes::XGBoost;
FERRY_DEPLOYMENT(XGBoost)
