// The SDK's C++ layer, exercised through the C ABI table it generates, as the host uses it.
#include <any>
#include <ferry/deployment.h>
#include <ferry/metrics.h>
#include <ferry/model.h>
#include <gtest/gtest.h>
#include <string>

#include "common/sdk_host.h"

namespace {

using ferry::testing::kHost;
using ferry::testing::S;

FerryRequest MakeRequest(std::string_view path, std::string_view query, const std::vector<FerryHeader>& headers) {
  return ferry::testing::MakeRequest("GET", path, query, "", headers);
}

class Greeter : public ferry::Deployment {
 public:
  explicit Greeter(const ferry::Args& args) : greeting_(args.get<std::string>("greeting", "hello")) {
    if (args.has("fail")) throw std::runtime_error("told to fail");
  }
  ferry::Response handle(const ferry::Request& req) override {
    if (req.path() == "/throw") throw std::runtime_error("handler exploded");
    return ferry::Response::FromJson(
        {{"msg", greeting_ + " " + std::string(req.query_param("name"))}, {"x", std::string(req.header("x-k"))}});
  }
  void reconfigure(const ferry::Json& config) override { greeting_ = config.at("greeting").get<std::string>(); }

 private:
  std::string greeting_;
};

class Plain : public ferry::Deployment {
 public:
  explicit Plain(const ferry::Args&) {}
  ferry::Response handle(const ferry::Request&) override { return ferry::Response::Text("ok"); }
};

class Chatty : public ferry::Deployment {
 public:
  explicit Chatty(const ferry::Args&) { ferry::log::Info("constructed"); }
  ferry::Response handle(const ferry::Request&) override {
    ferry::log::Warning("handled");
    ferry::log::Debug("details");
    return ferry::Response::Text("ok");
  }
};

TEST(SdkTest, LogLinesGoThroughTheHost) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Chatty>("Chatty");
  ferry::testing::LoggedLines().clear();
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S("{}"), &instance, &error), FERRY_OK);
  FerryRequest req = MakeRequest("/", "", {});
  FerryResponseSink sink;
  ASSERT_EQ(api->handle(instance, &req, &sink, &error), FERRY_OK);
  EXPECT_EQ(ferry::testing::LoggedLines(), (std::vector<std::string>{"1 constructed", "2 handled", "0 details"}));
  api->destroy(instance);

  // A host from before FerryHostApi.log (its struct_size ends at set_error; what follows is not its to
  // read, here a valid pointer that must not be called): lines go to stderr instead.
  FerryHostApi old = kHost;
  old.struct_size = offsetof(FerryHostApi, log);
  ferry::testing::LoggedLines().clear();
  ::testing::internal::CaptureStderr();
  ASSERT_EQ(api->create(&old, S("{}"), &instance, &error), FERRY_OK);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "constructed\n");
  EXPECT_TRUE(ferry::testing::LoggedLines().empty());
  api->destroy(instance);
}

// ferry::metrics through a host table that records what reaches it: tags in the declared order with
// defaults filled in, samples dropped before the host for missing or undeclared tags, and the host's
// refusal of a definition thrown with its reason.
struct RecordedSample {
  int id;
  std::vector<std::pair<std::string, std::string>> tags;
  double value;
};
std::vector<RecordedSample>& RecordedSamples() {
  static std::vector<RecordedSample> samples;
  return samples;
}

TEST(SdkTest, MetricsGoThroughTheHostWithTheirTags) {
  FerryHostApi host = kHost;
  host.struct_size = sizeof(FerryHostApi);
  host.metric_define = [](FerryString name, FerryString, int kind, const double*, size_t num_bounds,
                          FerryString* error) -> int {
    static const std::string why = "refused";
    if (std::string_view(name.data, name.size) == "bad") {
      *error = FerryString{why.data(), why.size()};
      return -1;
    }
    return kind * 10 + static_cast<int>(num_bounds);
  };
  host.metric_record = [](int id, const FerryHeader* tags, size_t n, double value) -> int {
    RecordedSample s{id, {}, value};
    for (size_t i = 0; i < n; ++i)
      s.tags.emplace_back(std::string(tags[i].name.data, tags[i].name.size),
                          std::string(tags[i].value.data, tags[i].value.size));
    RecordedSamples().push_back(std::move(s));
    return 0;
  };
  const FerryHostApi* saved = ferry::internal::Host();
  ferry::internal::Host() = &host;
  RecordedSamples().clear();
  ferry::metrics::Counter hits("hits", "", {"model", "kind"});
  hits.set_default_tags({{"kind", "plain"}});
  EXPECT_TRUE(hits.inc(2, {{"model", "a"}}));
  EXPECT_FALSE(hits.inc(1));                                    // model has no value
  EXPECT_FALSE(hits.inc(1, {{"model", "a"}, {"other", "x"}}));  // other is not declared
  EXPECT_THROW(hits.set_default_tags({{"other", "x"}}), std::invalid_argument);
  ferry::metrics::Histogram size("size", "", {1, 2, 3});
  EXPECT_TRUE(size.observe(1.5));
  EXPECT_THROW(ferry::metrics::Gauge("bad"), std::invalid_argument);
  ASSERT_EQ(RecordedSamples().size(), 2u);
  EXPECT_EQ(RecordedSamples()[0].id, 0);
  EXPECT_EQ(RecordedSamples()[0].tags,
            (std::vector<std::pair<std::string, std::string>>{{"model", "a"}, {"kind", "plain"}}));
  EXPECT_EQ(RecordedSamples()[0].value, 2);
  EXPECT_EQ(RecordedSamples()[1].id, 23);  // a histogram (kind 2) with 3 bounds
  // Without a host that has metrics (outside a replica, an older ferry): nothing recorded, nothing thrown.
  ferry::internal::Host() = &kHost;
  ferry::metrics::Gauge quiet("quiet");
  EXPECT_FALSE(quiet.set(1));
  ferry::internal::Host() = saved;
  EXPECT_EQ(RecordedSamples().size(), 2u);
}

// Streams ?n= events; ?plain=1 answers in one piece instead.
class Ticker : public ferry::Deployment {
 public:
  explicit Ticker(const ferry::Args&) {}
  void handle_stream(const ferry::Request& req, ferry::ResponseWriter& out) override {
    if (req.query_param("plain") == "1") {
      out.send(ferry::Response::Text("whole", 202));
      return;
    }
    out.set_status(201);
    int n = std::stoi(std::string(req.query_param("n")));
    for (int i = 0; i < n; ++i) {
      if (!out.write_event("tick " + std::to_string(i) + "\nline two")) return;
      ++written;
    }
  }
  int written = 0;
};

TEST(SdkTest, HandleStreamWritesChunksOrGathersThemOnAnOlderHost) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Ticker>("Ticker");
  FerryErrorSink error;
  void* instance = nullptr;
  ASSERT_EQ(api->create(&ferry::testing::kStreamingHost, S(""), &instance, &error), FERRY_OK) << error.message;
  FerryRequest two = MakeRequest("/", "n=2", {});
  FerryResponseSink sink;
  ASSERT_EQ(api->handle(instance, &two, &sink, &error), FERRY_OK);
  EXPECT_EQ(sink.status, 201);
  EXPECT_EQ(sink.header("content-type"), "text/event-stream");
  EXPECT_EQ(sink.chunks,
            (std::vector<std::string>{"data: tick 0\ndata: line two\n\n", "data: tick 1\ndata: line two\n\n"}));
  // A write that finds the stream over tells the handler to stop.
  FerryRequest many = MakeRequest("/", "n=1000", {});
  FerryResponseSink stopped;
  ASSERT_EQ(api->handle(instance, &many, &stopped, &error), FERRY_OK);
  EXPECT_EQ(stopped.chunks.size(), 100u);
  EXPECT_EQ(static_cast<Ticker*>(instance)->written, 2 + 99);
  FerryRequest plain = MakeRequest("/", "plain=1", {});
  FerryResponseSink whole;
  ASSERT_EQ(api->handle(instance, &plain, &whole, &error), FERRY_OK);
  EXPECT_EQ(whole.status, 202);
  EXPECT_EQ(whole.body, "whole");
  EXPECT_TRUE(whole.chunks.empty());
  api->destroy(instance);

  // A host without write_chunk: the chunks become one body.
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK) << error.message;
  FerryResponseSink gathered;
  ASSERT_EQ(api->handle(instance, &two, &gathered, &error), FERRY_OK);
  EXPECT_EQ(gathered.body, "data: tick 0\ndata: line two\n\ndata: tick 1\ndata: line two\n\n");
  api->destroy(instance);
}

// Answers later: each request's DeferredResponse waits in `pending` until the test answers it.
class Later : public ferry::Deployment {
 public:
  explicit Later(const ferry::Args&) {}
  void handle_stream(const ferry::Request&, ferry::ResponseWriter& out) override {
    ferry::DeferredResponse d = out.defer();
    if (!d) {
      out.send(ferry::Response::Text("now", 203));
      return;
    }
    pending.push_back(std::move(d));
  }
  std::vector<ferry::DeferredResponse> pending;
};

TEST(SdkTest, ADeferredAnswerComesAfterHandleReturnsWholeStreamedOrFailed) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Later>("Later");
  FerryErrorSink error;
  void* instance = nullptr;
  ASSERT_EQ(api->create(&ferry::testing::kStreamingHost, S(""), &instance, &error), FERRY_OK) << error.message;
  auto& later = *static_cast<Later*>(instance);
  FerryRequest r = MakeRequest("/", "", {});
  FerryResponseSink whole, streamed, dropped;
  for (FerryResponseSink* sink : {&whole, &streamed, &dropped}) {
    ASSERT_EQ(api->handle(instance, &r, sink, &error), FERRY_OK);
    EXPECT_TRUE(sink->deferred);
    EXPECT_FALSE(sink->answered) << "handle() returning must not answer a deferred request";
  }
  ASSERT_EQ(later.pending.size(), 3u);
  later.pending[0].send(ferry::Response::Text("later", 201));
  EXPECT_TRUE(whole.answered);
  EXPECT_EQ(whole.status, 201);
  EXPECT_EQ(whole.body, "later");
  EXPECT_FALSE(later.pending[0]);
  EXPECT_THROW(later.pending[0].send(ferry::Response::Text("twice")), std::logic_error);

  ferry::DetachedStream stream = later.pending[1].stream(206, {{"content-type", "text/plain"}});
  EXPECT_EQ(streamed.status, 206);
  EXPECT_EQ(streamed.header("content-type"), "text/plain");
  EXPECT_TRUE(stream.write("a"));
  EXPECT_TRUE(stream.write("b"));
  stream.end();
  EXPECT_EQ(streamed.chunks, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(streamed.answered);
  EXPECT_TRUE(streamed.end_ok);

  later.pending.pop_back();  // dropped unanswered: the host hears a failure
  EXPECT_TRUE(dropped.answered);
  EXPECT_FALSE(dropped.end_ok);
  EXPECT_NE(dropped.end_message.find("dropped"), std::string::npos) << dropped.end_message;
  api->destroy(instance);

  // A host that cannot defer: the handler answers on its thread.
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK) << error.message;
  FerryResponseSink now;
  ASSERT_EQ(api->handle(instance, &r, &now, &error), FERRY_OK);
  EXPECT_EQ(now.status, 203);
  EXPECT_EQ(now.body, "now");
  api->destroy(instance);
}

TEST(SdkTest, GeneratedTableCallsTheClass) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Greeter>("Greeter");
  EXPECT_EQ(api->abi_version, FERRY_ABI_VERSION);
  EXPECT_STREQ(api->name, "Greeter");
  ASSERT_NE(api->reconfigure, nullptr);
  EXPECT_EQ(api->check_health, nullptr);  // not overridden
  void* instance = nullptr;
  FerryErrorSink error;
  std::string args = R"({"greeting": "hi"})";
  ASSERT_EQ(api->create(&kHost, S(args), &instance, &error), FERRY_OK) << error.message;
  std::vector<FerryHeader> headers = {{S("x-k"), S("v")}};
  FerryRequest req = MakeRequest("/", "a=1&name=bob&c", headers);
  FerryResponseSink sink;
  ASSERT_EQ(api->handle(instance, &req, &sink, &error), FERRY_OK);
  EXPECT_EQ(sink.status, 200);
  EXPECT_EQ(ferry::Json::parse(sink.body)["msg"], "hi bob");
  EXPECT_EQ(ferry::Json::parse(sink.body)["x"], "v");

  std::string config = R"({"greeting": "hey"})";
  ASSERT_EQ(api->reconfigure(instance, S(config), &error), FERRY_OK);
  FerryResponseSink again;
  ASSERT_EQ(api->handle(instance, &req, &again, &error), FERRY_OK);
  EXPECT_EQ(ferry::Json::parse(again.body)["msg"], "hey bob");

  std::string bad = R"({"nope": 1})";
  EXPECT_EQ(api->reconfigure(instance, S(bad), &error), FERRY_ERROR);
  EXPECT_FALSE(error.message.empty());
  api->destroy(instance);
}

TEST(SdkTest, ExceptionsBecomeErrors) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Greeter>("Greeter");
  void* instance = nullptr;
  FerryErrorSink error;
  std::string fail = R"({"fail": true})";
  EXPECT_EQ(api->create(&kHost, S(fail), &instance, &error), FERRY_ERROR);
  EXPECT_EQ(error.message, "told to fail");
  std::string wrong_type = R"({"greeting": 5})";
  EXPECT_EQ(api->create(&kHost, S(wrong_type), &instance, &error), FERRY_ERROR);
  EXPECT_NE(error.message.find("args.greeting"), std::string::npos) << error.message;

  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK);
  FerryRequest req = MakeRequest("/throw", "", {});
  FerryResponseSink sink;
  FerryErrorSink handle_error;
  EXPECT_EQ(api->handle(instance, &req, &sink, &handle_error), FERRY_ERROR);
  EXPECT_EQ(handle_error.message, "handler exploded");
  api->destroy(instance);
}

class Strict : public ferry::Deployment {
 public:
  explicit Strict(const ferry::Args&) {}
  ferry::Response handle(const ferry::Request& req) override {
    if (req.header("authorization").empty()) throw ferry::HttpError(401, "no credentials");
    return ferry::Response::Text("ok");
  }
};

TEST(SdkTest, HttpErrorAnswersItsStatus) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Strict>("Strict");
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK);
  FerryRequest req = MakeRequest("/", "", {});
  FerryResponseSink sink;
  EXPECT_EQ(api->handle(instance, &req, &sink, &error), FERRY_OK);
  EXPECT_EQ(sink.status, 401);
  EXPECT_EQ(ferry::Json::parse(sink.body)["error"], "no credentials");
  api->destroy(instance);
}

// A streamed body as the host hands it out: pieces, then the end (or a break).
struct PieceSource {
  std::vector<std::string> pieces;
  size_t next = 0;
  bool broken = false;
  std::string all;
};
int ReadPiece(const FerryRequest* r, FerryString* chunk) {
  auto* src = static_cast<PieceSource*>(r->host_context);
  if (src->next == src->pieces.size()) return src->broken ? -1 : 0;
  const std::string& p = src->pieces[src->next++];
  *chunk = S(p);
  return 1;
}
FerryString ReadAll(const FerryRequest* r, int* ok) {
  auto* src = static_cast<PieceSource*>(r->host_context);
  FerryString piece;
  int rc;
  while ((rc = ReadPiece(r, &piece)) == 1) src->all.append(piece.data, piece.size);
  *ok = rc == 0;
  return S(src->all);
}

class Uploads : public ferry::Deployment {
 public:
  explicit Uploads(const ferry::Args&) {}
  ferry::Response handle(const ferry::Request& req) override {
    if (req.query() == "whole") return ferry::Response::Text(std::string(req.body()));
    std::string seen;
    std::string_view piece;
    while (req.read_body(&piece)) seen += "[" + std::string(piece) + "]";
    return ferry::Response::Text(seen + (req.body_streamed() ? " streamed" : " whole"));
  }
};

TEST(SdkTest, AStreamedBodyIsReadPieceByPieceOrWhole) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Uploads>("Uploads");
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S(""), &instance, &error), FERRY_OK);
  for (std::string_view query : {"pieces", "whole"}) {
    PieceSource src{{"ab", "cd", "e"}, 0, false, {}};
    FerryRequest req = ferry::testing::MakeRequest("POST", "/", query, "", {});
    req.body_streamed = 1;
    req.read_body = &ReadPiece;
    req.read_all_body = &ReadAll;
    req.host_context = &src;
    FerryResponseSink sink;
    ASSERT_EQ(api->handle(instance, &req, &sink, &error), FERRY_OK) << error.message;
    EXPECT_EQ(sink.body, query == "whole" ? "abcde" : "[ab][cd][e] streamed");
  }
  // A whole body reads as one piece.
  FerryRequest whole = ferry::testing::MakeRequest("POST", "/", "pieces", "xyz", {});
  FerryResponseSink sink;
  ASSERT_EQ(api->handle(instance, &whole, &sink, &error), FERRY_OK);
  EXPECT_EQ(sink.body, "[xyz] whole");
  // A body that breaks: the read throws BodyError, and handle() fails with its text.
  PieceSource broken{{"ab"}, 0, true, {}};
  FerryRequest req = ferry::testing::MakeRequest("POST", "/", "pieces", "", {});
  req.body_streamed = 1;
  req.read_body = &ReadPiece;
  req.read_all_body = &ReadAll;
  req.host_context = &broken;
  EXPECT_EQ(api->handle(instance, &req, &sink, &error), FERRY_ERROR);
  EXPECT_NE(error.message.find("broke"), std::string::npos) << error.message;
  api->destroy(instance);
}

class Chat : public ferry::Deployment {
 public:
  explicit Chat(const ferry::Args&) {}
  class Session : public ferry::WebSocketSession {
   public:
    Session(ferry::WebSocket ws, int* closed) : ws_(ws), closed_(closed) {}
    void on_message(std::string_view data, bool binary) override {
      if (data == "throw") throw std::runtime_error("bad message");
      if (data == "bye") {
        ws_.close(4000, "asked to");
        return;
      }
      if (binary)
        ws_.send_binary(data);
      else
        ws_.send_text("re: " + std::string(data));
    }
    void on_close(int code, std::string_view) override { *closed_ = code; }

   private:
    ferry::WebSocket ws_;
    int* closed_;
  };
  std::unique_ptr<ferry::WebSocketSession> accept_websocket(const ferry::Request& req, ferry::WebSocket ws) override {
    if (req.query() == "deny") return nullptr;
    if (req.query() == "auth") throw ferry::HttpError(401, "log in first");
    return std::make_unique<Session>(ws, &closed);
  }
  int closed = 0;
};

TEST(SdkTest, WebSocketSessionsThroughTheTable) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Chat>("Chat");
  ASSERT_NE(api->ws_open, nullptr);
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&ferry::testing::kStreamingHost, S(""), &instance, &error), FERRY_OK);
  ferry::testing::WebSocketLog().clear();
  FerryRequest req = MakeRequest("/chat", "", {});
  void* session = nullptr;
  FerryResponseSink refusal;
  int token = 0;  // the host's session handle: opaque to the plugin
  auto* ws = reinterpret_cast<FerryWebSocket*>(&token);
  ASSERT_EQ(api->ws_open(instance, &req, ws, &session, &refusal, &error), FERRY_OK);
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(api->ws_message(instance, session, S("hi"), 0, &error), FERRY_OK);
  EXPECT_EQ(api->ws_message(instance, session, S("\x01"), 1, &error), FERRY_OK);
  EXPECT_EQ(api->ws_message(instance, session, S("throw"), 0, &error), FERRY_ERROR);
  EXPECT_EQ(error.message, "bad message");
  EXPECT_EQ(api->ws_message(instance, session, S("bye"), 0, &error), FERRY_OK);
  EXPECT_EQ(ferry::testing::WebSocketLog(),
            (std::vector<std::string>{"text:re: hi", "binary:\x01", "close:4000:asked to"}));
  api->ws_closed(instance, session, 4000, S("asked to"));
  EXPECT_EQ(static_cast<Chat*>(instance)->closed, 4000);

  FerryRequest deny = MakeRequest("/chat", "deny", {});
  FerryResponseSink denied;
  ASSERT_EQ(api->ws_open(instance, &deny, nullptr, &session, &denied, &error), FERRY_OK);
  EXPECT_EQ(session, nullptr);
  EXPECT_EQ(denied.status, 403);
  FerryRequest auth = MakeRequest("/chat", "auth", {});
  FerryResponseSink unauthorized;
  ASSERT_EQ(api->ws_open(instance, &auth, nullptr, &session, &unauthorized, &error), FERRY_OK);
  EXPECT_EQ(session, nullptr);
  EXPECT_EQ(unauthorized.status, 401);
  EXPECT_EQ(ferry::Json::parse(unauthorized.body)["error"], "log in first");
  api->destroy(instance);
}

TEST(SdkTest, OptionalMethodsAreNullWhenNotOverridden) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<Plain>("Plain");
  EXPECT_EQ(api->ws_open, nullptr);
  EXPECT_EQ(api->reconfigure, nullptr);
  EXPECT_EQ(api->check_health, nullptr);
  EXPECT_EQ(api->handle_batch, nullptr);
  EXPECT_EQ(api->prepare, nullptr);
  EXPECT_EQ(api->release, nullptr);
}

// Counts words in prepare() (as a request arrives) and sums them per batch in handle_batch().
class WordCounter : public ferry::Deployment {
 public:
  explicit WordCounter(const ferry::Args&) {}
  ferry::Response handle(const ferry::Request& req) override {
    return ferry::Response::Text(std::to_string(Count(req)));
  }
  std::any prepare(const ferry::Request& req) override {
    if (req.body() == "throw") throw std::runtime_error("cannot prepare that");
    return Count(req);
  }
  std::vector<ferry::Response> handle_batch(std::span<const ferry::Request> batch) override {
    std::vector<ferry::Response> out;
    for (const ferry::Request& r : batch) {
      std::any* p = r.prepared();
      out.push_back(ferry::Response::Text(p ? "prepared " + std::to_string(std::any_cast<int>(*p))
                                            : "unprepared " + std::to_string(Count(r))));
    }
    return out;
  }

 private:
  static int Count(const ferry::Request& req) {
    int n = 0;
    bool in_word = false;
    for (char c : req.body()) {
      n += !in_word && c != ' ';
      in_word = c != ' ';
    }
    return n;
  }
};

TEST(SdkTest, PrepareStateReachesHandleBatchAndIsReleased) {
  const FerryDeploymentApi* api = ferry::internal::ApiFor<WordCounter>("WordCounter");
  ASSERT_NE(api->prepare, nullptr);
  ASSERT_NE(api->release, nullptr);
  void* instance = nullptr;
  FerryErrorSink error;
  ASSERT_EQ(api->create(&kHost, S("{}"), &instance, &error), FERRY_OK);
  FerryRequest a = ferry::testing::MakeRequest("POST", "/", "", "one two three");
  FerryRequest b = ferry::testing::MakeRequest("POST", "/", "", "throw");
  void* state_a = nullptr;
  void* state_b = nullptr;
  ASSERT_EQ(api->prepare(instance, &a, &state_a, &error), FERRY_OK);
  FerryErrorSink b_error;
  EXPECT_EQ(api->prepare(instance, &b, &state_b, &b_error), FERRY_ERROR);
  EXPECT_EQ(b_error.message, "cannot prepare that");
  EXPECT_EQ(state_b, nullptr);
  a.prepared = state_a;
  const FerryRequest* batch[] = {&a, &b};
  FerryResponseSink out[2];
  FerryResponseSink* sinks[] = {&out[0], &out[1]};
  ASSERT_EQ(api->handle_batch(instance, batch, 2, sinks, &error), FERRY_OK);
  EXPECT_EQ(out[0].body, "prepared 3");
  EXPECT_EQ(out[1].body, "unprepared 1");  // its prepare() failed: handle_batch() copes
  api->release(instance, state_a);         // under ASan, a state not freed here is a leak
  api->destroy(instance);
}

TEST(SdkTest, QueryParamsAndCancellation) {
  FerryRequest raw = MakeRequest("/", "a=1&b=&c&a=2", {});
  ferry::Request req(&raw);
  EXPECT_EQ(req.query_param("a"), "1");
  EXPECT_EQ(req.query_param("b"), "");
  EXPECT_EQ(req.query_param("c"), "");
  EXPECT_EQ(req.query_param("zz").data(), nullptr);
  EXPECT_FALSE(req.is_cancelled());
  raw.is_cancelled = [](const FerryRequest*) { return 1; };
  EXPECT_TRUE(req.is_cancelled());
}

TEST(SdkTest, BytesElementsPackIntoTheAbiLayoutAndBack) {
  const std::vector<std::string> elements = {"", "a", std::string(300, 'x'), std::string("\0\xff", 2)};
  std::string packed;
  ferry::PackBytes(elements, &packed);
  ASSERT_EQ(packed.size(), 4 * elements.size() + 0 + 1 + 300 + 2);
  EXPECT_EQ(packed.substr(4, 4), std::string("\x01\x00\x00\x00", 4)) << "lengths are little-endian";
  EXPECT_EQ(packed.substr(9, 4), std::string("\x2c\x01\x00\x00", 4));
  EXPECT_EQ(ferry::UnpackBytes(packed), elements);
  // A cut-short buffer yields the elements that are whole.
  EXPECT_EQ(ferry::UnpackBytes(std::string_view(packed).substr(0, 12)), (std::vector<std::string>{"", "a"}));
  EXPECT_TRUE(ferry::UnpackBytes("").empty());
}

}  // namespace
