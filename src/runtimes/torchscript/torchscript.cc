// torchscript:PATH.pt — serves a TorchScript module with LibTorch behind the Open Inference Protocol.
//
// Built as its own shared library (libferry_runtime_torchscript.so) against the public SDK, exactly as a
// user's plugin is, and loaded only by replicas that serve a TorchScript model: the ferry binary itself
// never links LibTorch.
//
// Per replica: the module is loaded once, put in eval mode and run under InferenceMode; intra-op threads
// come from args.intra_op_threads or the deployment's num_cpus; warm-up runs happen before the replica
// reports ready. Metadata (inputs, outputs: name, datatype, shape with -1 for any size) comes from
// args.inputs/args.outputs or from a `ferry.json` extra file saved in the module
// (torch.jit.save(m, path, _extra_files={"ferry.json": ...})); outputs left undescribed are named
// output__0, output__1, ... and typed from the warm-up run. Inputs are passed to forward() in the order
// of the metadata. When every input's first dimension is -1 (a batch dimension), a batch of requests is
// stacked along it into one forward() call and the outputs are split back.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <ferry/model.h>
#include <string>
#include <vector>

#include "runtimes/model_args.h"

namespace ferry::runtimes {
namespace {

std::optional<c10::ScalarType> TorchType(DataType t) {
  switch (t) {
    case DataType::kBool:
      return torch::kBool;
    case DataType::kUint8:
      return torch::kUInt8;
    case DataType::kInt8:
      return torch::kInt8;
    case DataType::kInt16:
      return torch::kInt16;
    case DataType::kInt32:
      return torch::kInt32;
    case DataType::kInt64:
      return torch::kInt64;
    case DataType::kFp16:
      return torch::kFloat16;
    case DataType::kFp32:
      return torch::kFloat32;
    case DataType::kFp64:
      return torch::kFloat64;
    default:
      return std::nullopt;  // UINT16/32/64 and BYTES have no torch type
  }
}

std::optional<DataType> FerryType(c10::ScalarType t) {
  switch (t) {
    case torch::kBool:
      return DataType::kBool;
    case torch::kUInt8:
      return DataType::kUint8;
    case torch::kInt8:
      return DataType::kInt8;
    case torch::kInt16:
      return DataType::kInt16;
    case torch::kInt32:
      return DataType::kInt32;
    case torch::kInt64:
      return DataType::kInt64;
    case torch::kFloat16:
      return DataType::kFp16;
    case torch::kFloat32:
      return DataType::kFp32;
    case torch::kFloat64:
      return DataType::kFp64;
    default:
      return std::nullopt;
  }
}

// The first line of a c10::Error's text (the rest is a C++ backtrace), printable.
std::string FirstLine(const std::exception& e) { return PrintableFirstLine(e.what()); }

class TorchScript : public Model {
 public:
  explicit TorchScript(const Args& args) {
    ModelArgs model = ModelArgs::Read(args, "torchscript", "intra_op_threads");
    path_ = model.path;
    name_ = model.name;
    versions_ = model.versions;
    at::set_num_threads(model.threads);
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
      // already set in this process (a second model in the same replica): keep it
    }
    torch::jit::ExtraFilesMap extra{{"ferry.json", ""}};
    try {
      module_ = torch::jit::load(path_, torch::kCPU, extra);
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot load TorchScript model " + path_ + ": " + FirstLine(e));
    }
    module_.eval();
    Json embedded = Json::object();
    if (!extra["ferry.json"].empty()) {
      embedded = Json::parse(extra["ferry.json"], nullptr, false);
      if (!embedded.is_object())
        throw std::invalid_argument("model " + path_ + ": its ferry.json extra file is not a JSON object");
    }
    auto specs = [&](const char* key) -> std::vector<TensorSpec> {
      if (args.has(key)) return SpecsFromJson(args.json().at(key), std::string("args.") + key);
      if (embedded.contains(key)) return SpecsFromJson(embedded[key], path_ + " ferry.json " + key);
      return {};
    };
    inputs_ = specs("inputs");
    outputs_ = specs("outputs");
    if (inputs_.empty())
      throw std::invalid_argument("model " + path_ +
                                  " has no input metadata: give args.inputs [{name, datatype, shape}] or save the "
                                  "module with _extra_files={\"ferry.json\": ...}");
    batchable_ = true;
    for (const TensorSpec& s : inputs_) {
      if (!TorchType(s.datatype))
        throw std::invalid_argument("input " + s.name + ": LibTorch has no " + std::string(DataTypeName(s.datatype)));
      batchable_ = batchable_ && !s.shape.empty() && s.shape[0] == -1;
    }
    WarmUp(args.get<int>("warmup_runs", 2));
  }

  ModelMetadata metadata() const override {
    return ModelMetadata{.name = name_,
                         .versions = versions_,
                         .platform = "pytorch_torchscript",
                         .inputs = inputs_,
                         .outputs = outputs_};
  }

  InferResponse infer(const InferRequest& request) override {
    std::vector<torch::jit::IValue> args;
    for (const TensorSpec& s : inputs_) args.emplace_back(View(request.input(s.name)));
    std::vector<at::Tensor> outs = Forward(args);
    InferResponse r;
    for (size_t i = 0; i < outs.size(); ++i) r.outputs.push_back(ToTensor(outs[i], i));
    return r;
  }

  // One forward() for the whole batch: each input's rows are copied into one tensor (one allocation, no
  // per-request torch operations) and each output is cut back into the requests' rows by byte offsets.
  std::vector<InferResponse> infer_batch(std::span<const InferRequest> batch) override {
    std::vector<int64_t> rows;
    if (!batchable_ || batch.size() < 2 || !RowsOf(batch, &rows)) return Model::infer_batch(batch);
    int64_t total = 0;
    for (int64_t n : rows) total += n;
    std::vector<torch::jit::IValue> args;
    for (const TensorSpec& s : inputs_) {
      const Tensor& first = batch.front().input(s.name);
      std::vector<int64_t> shape(first.shape().begin(), first.shape().end());
      shape[0] = total;
      at::Tensor stacked = torch::empty(shape, torch::TensorOptions().dtype(*TorchType(first.datatype())));
      auto* at = static_cast<std::byte*>(stacked.data_ptr());
      for (const InferRequest& r : batch) {
        std::span<const std::byte> bytes = r.input(s.name).bytes();
        std::memcpy(at, bytes.data(), bytes.size());
        at += bytes.size();
      }
      args.emplace_back(std::move(stacked));
    }
    std::vector<at::Tensor> outs = Forward(args);
    for (at::Tensor& o : outs) {
      if (o.dim() == 0 || o.size(0) != total) return Model::infer_batch(batch);  // not split by rows: one at a time
      o = o.contiguous();
    }
    std::vector<InferResponse> responses(batch.size());
    for (size_t i = 0; i < outs.size(); ++i) {
      const at::Tensor& o = outs[i];
      std::optional<DataType> dt = FerryType(o.scalar_type());
      if (!dt) throw InferError(500, "output " + std::to_string(i) + " has a type ferry cannot send");
      const size_t row_bytes = static_cast<size_t>(o.numel() / total) * o.element_size();
      const auto* from = static_cast<const std::byte*>(o.data_ptr());
      Shape shape(o.sizes().begin(), o.sizes().end());
      for (size_t k = 0; k < batch.size(); ++k) {
        shape[0] = rows[k];
        Tensor part(OutputName(i), *dt, shape);
        const size_t n = static_cast<size_t>(rows[k]) * row_bytes;
        if (n) std::memcpy(part.mutable_bytes().data(), from, n);
        from += n;
        responses[k].outputs.push_back(std::move(part));
      }
    }
    return responses;
  }

 private:
  // Every input of each request shares its first dimension (its rows), and every request's other
  // dimensions equal the first request's; false when not.
  bool RowsOf(std::span<const InferRequest> batch, std::vector<int64_t>* rows) const {
    for (const InferRequest& r : batch) {
      int64_t n = -1;
      for (const TensorSpec& s : inputs_) {
        const Tensor& t = r.input(s.name);
        if (t.shape().empty() || (n >= 0 && t.shape()[0] != n)) return false;
        const Shape& first = batch.front().input(s.name).shape();
        if (!std::equal(t.shape().begin() + 1, t.shape().end(), first.begin() + 1, first.end())) return false;
        n = t.shape()[0];
      }
      rows->push_back(n);
    }
    return true;
  }

  std::string OutputName(size_t index) const {
    return index < outputs_.size() ? outputs_[index].name : "output__" + std::to_string(index);
  }

  // A torch view of an SDK tensor's bytes (no copy; the request outlives the forward call).
  static at::Tensor View(const Tensor& t) {
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    void* data = const_cast<std::byte*>(t.bytes().data());
    return torch::from_blob(data, shape, torch::TensorOptions().dtype(*TorchType(t.datatype())));
  }

  std::vector<at::Tensor> Forward(std::vector<torch::jit::IValue>& args) {
    c10::InferenceMode guard;
    torch::jit::IValue out;
    try {
      out = module_.forward(args);
    } catch (const std::exception& e) {
      throw InferError(500, "model " + path_ + " failed: " + FirstLine(e));
    }
    std::vector<at::Tensor> outs;
    if (out.isTensor()) {
      outs.push_back(out.toTensor());
    } else if (out.isTuple()) {
      for (const auto& e : out.toTupleRef().elements()) {
        if (!e.isTensor()) throw InferError(500, "model " + path_ + " returned a tuple holding a non-tensor");
        outs.push_back(e.toTensor());
      }
    } else if (out.isTensorList()) {
      for (const at::Tensor& t : out.toTensorVector()) outs.push_back(t);
    } else {
      throw InferError(500,
                       "model " + path_ + " returned " + out.tagKind() + ", expected a tensor or a tuple of tensors");
    }
    return outs;
  }

  Tensor ToTensor(const at::Tensor& source, size_t index) const {
    at::Tensor t = source.contiguous();
    std::optional<DataType> dt = FerryType(t.scalar_type());
    if (!dt) throw InferError(500, "output " + std::to_string(index) + " has a type ferry cannot send");
    Tensor out(OutputName(index), *dt, Shape(t.sizes().begin(), t.sizes().end()));
    if (out.ByteSize()) std::memcpy(out.mutable_bytes().data(), t.data_ptr(), out.ByteSize());
    return out;
  }

  // Runs the model on zeros shaped by the metadata (-1 read as 1), and completes the output metadata
  // from what it returns.
  void WarmUp(int runs) {
    std::vector<torch::jit::IValue> args;
    for (const TensorSpec& s : inputs_) {
      std::vector<int64_t> shape;
      for (int64_t d : s.shape) shape.push_back(d < 0 ? 1 : d);
      args.emplace_back(torch::zeros(shape, torch::TensorOptions().dtype(*TorchType(s.datatype))));
    }
    std::vector<at::Tensor> outs;
    for (int i = 0; i < std::max(1, runs); ++i) {
      try {
        outs = Forward(args);
      } catch (const InferError& e) {
        throw std::runtime_error(std::string("warm-up: ") + e.what());
      }
    }
    if (!outputs_.empty() && outputs_.size() != outs.size())
      throw std::invalid_argument("model " + path_ + " returns " + std::to_string(outs.size()) +
                                  " outputs, its metadata describes " + std::to_string(outputs_.size()));
    if (outputs_.empty()) {
      for (size_t i = 0; i < outs.size(); ++i) {
        std::optional<DataType> dt = FerryType(outs[i].scalar_type());
        if (!dt)
          throw std::invalid_argument("model " + path_ + ": output " + std::to_string(i) + " has an unsupported type");
        Shape shape(outs[i].sizes().begin(), outs[i].sizes().end());
        if (batchable_ && !shape.empty()) shape[0] = -1;
        outputs_.push_back({"output__" + std::to_string(i), *dt, shape});
      }
    }
  }

  std::string path_, name_;
  std::vector<std::string> versions_;
  torch::jit::Module module_;
  std::vector<TensorSpec> inputs_, outputs_;
  bool batchable_ = false;
};

}  // namespace
}  // namespace ferry::runtimes

using TorchScript = ferry::runtimes::TorchScript;
FERRY_DEPLOYMENT(TorchScript)
