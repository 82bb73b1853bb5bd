// A toy sentiment "model": scores text by counting words from a lexicon. It shows every part of the
// SDK: constructor args, handle, reconfigure (user_config), check_health, ferry::log and a metric of its
// own (ferry::metrics, on the node's /metrics as sentiment_labels_total{label=...}). Reviews, below,
// composes with it through a deployment handle and streams its answer (reviews.yaml serves both).
#include <atomic>
#include <cctype>
#include <ferry/deployment.h>
#include <ferry/metrics.h>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

class Sentiment : public ferry::Deployment {
 public:
  explicit Sentiment(const ferry::Args& args) {
    for (const auto& w : args.get<std::vector<std::string>>("positive", {"good", "great", "love"})) positive_.insert(w);
    for (const auto& w : args.get<std::vector<std::string>>("negative", {"bad", "awful", "hate"})) negative_.insert(w);
    if (positive_.empty()) throw std::invalid_argument("args.positive: the lexicon needs at least one word");
    ferry::log::Info("lexicon: " + std::to_string(positive_.size()) + " positive and " +
                     std::to_string(negative_.size()) + " negative words");
  }

  ferry::Response handle(const ferry::Request& req) override {
    std::string text(req.method() == "GET" ? req.query_param("text") : req.body());
    for (char& c : text) c = c == '+' ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::istringstream words(text);
    int score = 0;
    for (std::string w; words >> w;) score += positive_.count(w) ? 1 : negative_.count(w) ? -1 : 0;
    double threshold = threshold_.load();
    const char* label = score > threshold ? "positive" : score < -threshold ? "negative" : "neutral";
    labels_.inc(1, {{"label", label}});
    return ferry::Response::FromJson({{"label", label}, {"score", score}, {"threshold", threshold}});
  }

  void reconfigure(const ferry::Json& user_config) override { threshold_.store(user_config.value("threshold", 0.0)); }

  bool check_health() override { return !positive_.empty(); }

 private:
  std::set<std::string> positive_, negative_;
  std::atomic<double> threshold_{0.0};
  ferry::metrics::Counter labels_{"sentiment_labels", "Texts scored, by the label they got.", {"label"}};
};

FERRY_DEPLOYMENT(Sentiment)

// An ingress that composes: each line of a POSTed body is scored by the Sentiment deployment through a
// handle (every line at once, spread over its replicas), and each result is streamed back as a Server-Sent
// Event as soon as it is in, then a summary event. args.sentiment names the deployment to call.
class Reviews : public ferry::Deployment {
 public:
  explicit Reviews(const ferry::Args& args) : sentiment_(args.handle("sentiment")) {}

  void handle_stream(const ferry::Request& req, ferry::ResponseWriter& out) override {
    std::vector<std::string> lines;
    std::istringstream body{std::string(req.body())};
    for (std::string line; std::getline(body, line);)
      if (!line.empty()) lines.push_back(line);
    if (lines.empty()) {
      out.send(ferry::Response::FromJson({{"error", "POST one review per line"}}, 400));
      return;
    }
    // All calls in flight at once; passing &req carries its deadline and trace, and cancels them with it.
    std::vector<ferry::Call> calls;
    for (const std::string& line : lines) calls.push_back(sentiment_.remote(line, &req));
    int positive = 0;
    for (size_t i = 0; i < calls.size(); ++i) {
      ferry::CallResult r = calls[i].get();  // a failed call throws ferry::CallError (status, message)
      ferry::Json score = ferry::Json::parse(r.body);
      if (score["label"] == "positive") ++positive;
      ferry::Json event = {{"line", i}, {"text", lines[i]}, {"label", score["label"]}, {"score", score["score"]}};
      if (!out.write_event(event.dump())) return;  // the client left: the remaining calls are cancelled
    }
    out.write_event(ferry::Json{{"lines", lines.size()}, {"positive", positive}}.dump(), "summary");
  }

 private:
  ferry::Handle sentiment_;
};

FERRY_DEPLOYMENT(Reviews)
