// A toy sentiment "model": scores text by counting words from a lexicon. It shows every part of the
// SDK: constructor args, handle, reconfigure (user_config), check_health, and ferry::log.
#include <atomic>
#include <cctype>
#include <ferry/deployment.h>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

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
    served_.fetch_add(1);
    return ferry::Response::FromJson({{"label", label}, {"score", score}, {"threshold", threshold}});
  }

  void reconfigure(const ferry::Json& user_config) override { threshold_.store(user_config.value("threshold", 0.0)); }

  bool check_health() override { return !positive_.empty(); }

 private:
  std::set<std::string> positive_, negative_;
  std::atomic<double> threshold_{0.0};
  std::atomic<long> served_{0};
};

FERRY_DEPLOYMENT(Sentiment)
