// builtin:call forwards each request through a handle, for trying composition without code:
//   args: {next: B}            calls deployment B with the request (method, path, query, headers, body) and
//                              answers {"via": "<own name>", "next": <B's JSON answer>} with B's status; a
//                              streamed answer from B is streamed through as it comes
//         {fanout: [B, C]}     calls them all at once and answers {"via": ..., "fanout": {"B": ..., "C": ...}}
//                              with the first non-2xx status among them (200 when all succeed)
// A callee's answer that is not JSON is included as a string; a call that fails is {"error", "status"}.
#include <ferry/deployment.h>
#include <memory>
#include <thread>

namespace ferry::runtimes {

class CallThrough : public Deployment {
 public:
  explicit CallThrough(const Args& args) : via_(std::make_shared<const Via>(get_replica_context().deployment)) {
    if (args.has("next") == args.has("fanout"))
      throw std::invalid_argument(
          "builtin:call needs exactly one of args.next (a deployment) and args.fanout (a list)");
    if (args.has("next")) next_ = args.handle("next");
    fanout_ = args.handle_list("fanout");
    if (args.has("fanout") && fanout_.empty()) throw std::invalid_argument("args.fanout: an empty list");
  }

  void handle_stream(const Request& req, ResponseWriter& out) override {
    CallOptions options;
    options.http_method.assign(req.method());
    options.path.assign(req.path());
    options.query.assign(req.query());
    for (size_t i = 0; i < req.num_headers(); ++i) {
      std::string_view name = req.header_name(i);
      if (name == "host" || name == "content-length" || name == "transfer-encoding" || name == "connection" ||
          name == "traceparent" || name == "x-request-id")
        continue;
      options.headers.emplace_back(name, req.header_value(i));
    }
    options.body.assign(req.body());
    options.parent = &req;
    if (!fanout_.empty()) {
      FanOut(options, out);
      return;
    }
    Call started = next_.call(std::move(options));
    // While few calls are in flight this thread reads the answer itself: waiting is the fastest way.
    // Under load, or with a host that cannot defer, ...
    DeferredResponse deferred;
    if (started.direct() || !(deferred = out.defer())) {
      Forward(std::move(started), out);
      return;
    }
    // ... the answer comes when the callee's does: this thread goes back to reading requests meanwhile,
    // and the callback answers from the thread that hears the callee's end (under load, one I/O thread
    // reading many answers at once).
    auto call = std::make_shared<Call>(std::move(started));
    auto answer = std::make_shared<DeferredResponse>(std::move(deferred));
    call->on_ready([call, answer, via = via_] {
      if (call->done()) {
        answer->send(via->Answer(*call));
        return;
      }
      // A streamed answer: passed on chunk by chunk by a thread of its own (writes wait for our client).
      std::thread([call, answer] {
        int status = call->status();
        std::vector<std::pair<std::string, std::string>> headers;
        for (const auto& [k, v] : call->headers())
          if (k == "content-type") headers.emplace_back(k, v);
        DetachedStream stream = answer->stream(status, headers);
        std::string chunk;
        try {
          while (call->next(&chunk))
            if (!stream.write(chunk)) return;  // our client left: the call is cancelled as it goes
          stream.end();
        } catch (const CallError& e) {
          stream.fail(e.what());
        }
      }).detach();
    });
  }

 private:
  // This deployment's name, and how it answers with a callee's answer inside. Shared with the callbacks
  // that answer later (they may outlive a request, not this).
  struct Via {
    explicit Via(std::string name) : name(std::move(name)), json(Json(this->name).dump()) {}
    Response Answer(Call& call) const {
      CallResult r;
      try {
        r = call.get();
      } catch (const CallError& e) {
        return Response::FromJson({{"via", name}, {"next", Failure(e)}}, e.status());
      }
      // A JSON answer goes in as it came (checked, not parsed into a tree and written out again: a hop's
      // work stays small); anything else as a string.
      Response answer;
      answer.status = r.status;
      answer.headers.emplace_back("content-type", "application/json");
      if (Json::accept(r.body)) {
        answer.body.reserve(r.body.size() + json.size() + 17);
        answer.body.append("{\"next\":").append(r.body).append(",\"via\":").append(json).append("}");
      } else {
        answer.body = Json{{"next", r.body}, {"via", name}}.dump();
      }
      return answer;
    }
    const std::string name;
    const std::string json;  // name as a JSON string
  };

  // The blocking way (a host that cannot defer): waits for the callee on this thread.
  void Forward(Call call, ResponseWriter& out) {
    int status;
    try {
      status = call.status();
    } catch (const CallError& e) {
      out.send(Response::FromJson({{"via", via_->name}, {"next", Failure(e)}}, e.status()));
      return;
    }
    if (call.streaming()) {
      out.set_status(status);
      for (const auto& [k, v] : call.headers())
        if (k == "content-type") out.add_header(k, v);
      std::string chunk;
      while (call.next(&chunk))         // a broken stream throws: this one breaks too
        if (!out.write(chunk)) return;  // our client left: the call is cancelled as it goes
      return;
    }
    out.send(via_->Answer(call));
  }

  void FanOut(const CallOptions& options, ResponseWriter& out) {
    std::vector<Call> calls;
    calls.reserve(fanout_.size());
    for (const Handle& h : fanout_) calls.push_back(h.call(options));  // all in flight at once
    Json answers = Json::object();
    int status = 200;
    for (size_t i = 0; i < calls.size(); ++i) {
      const std::string& name = fanout_[i].deployment();
      try {
        CallResult r = calls[i].get();
        answers[name] = AsJson(r.body);
        if ((r.status < 200 || r.status > 299) && status == 200) status = r.status;
      } catch (const CallError& e) {
        answers[name] = Failure(e);
        if (status == 200) status = e.status();
      }
    }
    out.send(Response::FromJson({{"via", via_->name}, {"fanout", std::move(answers)}}, status));
  }

  static Json AsJson(const std::string& body) {
    Json j = Json::parse(body, nullptr, false);
    return j.is_discarded() ? Json(body) : j;
  }
  static Json Failure(const CallError& e) { return {{"error", e.what()}, {"status", e.status()}}; }

  std::shared_ptr<const Via> via_;
  Handle next_;
  std::vector<Handle> fanout_;
};

}  // namespace ferry::runtimes

using FerryBuiltinCall = ferry::runtimes::CallThrough;
FERRY_DEPLOYMENT(FerryBuiltinCall)
