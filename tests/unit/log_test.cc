// The logger's two encodings, as a log shipper reads them.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <string>

#include "common/common.h"

namespace ferry {
namespace {

using nlohmann::json;

class LogTest : public ::testing::Test {
 protected:
  void TearDown() override {
    Log::SetEncoding(LogEncoding::kText);
    Log::SetProcessTag("");
    Log::SetProcessFields({});
  }
  static std::string Line(LogLevel level, std::string_view message, std::initializer_list<LogField> fields = {}) {
    std::string out;
    Log::Format(level, "proxy", message, fields, &out);
    return out;
  }
};

TEST_F(LogTest, TextLinesCarryTimeLevelComponentTagAndFields) {
  Log::SetProcessTag("app#Echo#1234abcd");
  std::string line =
      Line(LogLevel::kWarning, "slow", {{"request_id", "r1"}, {"latency_ms", 1.5}, JsonOnly({"hidden", "x"})});
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  EXPECT_EQ(line[4], '-');  // 2026-11-26T...
  EXPECT_NE(line.find("Z WARNING proxy [app#Echo#1234abcd] slow request_id=r1 latency_ms=1.5\n"), std::string::npos)
      << line;
  EXPECT_EQ(line.find("hidden"), std::string::npos);
  EXPECT_NE(Line(LogLevel::kInfo, "m", {{"replica", ""}}).find(" replica=-\n"), std::string::npos);
}

TEST_F(LogTest, LinesOnBehalfOfAnotherProcessUseItsEncodingTagAndFields) {
  // The node logs what a replica printed: the replica's encoding, tag and fields, not the node's own.
  Log::SetEncoding(LogEncoding::kText);
  Log::SetProcessTag("node-tag");
  Log::SetProcessFields({{"node_field", "n"}});
  const std::vector<std::pair<std::string, std::string>> fields = {{"replica", "app#Echo#1"}, {"deployment", "Echo"}};
  std::string out;
  Log::FormatAs(LogEncoding::kJson, "app#Echo#1", fields, LogLevel::kWarning, "stderr", "bad \"news\"\x01", {}, &out);
  json j = json::parse(out);
  EXPECT_EQ(j["levelname"], "WARNING");
  EXPECT_EQ(j["component_name"], "stderr");
  EXPECT_EQ(j["message"], "bad \"news\"\x01");
  EXPECT_EQ(j["replica"], "app#Echo#1");
  EXPECT_EQ(j["deployment"], "Echo");
  EXPECT_FALSE(j.contains("node_field"));
  std::string text;
  Log::FormatAs(LogEncoding::kText, "app#Echo#1", fields, LogLevel::kInfo, "stdout", "hello", {}, &text);
  EXPECT_NE(text.find("Z INFO stdout [app#Echo#1] hello\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("node-tag"), std::string::npos);
  // The process's own lines are unchanged.
  EXPECT_NE(Line(LogLevel::kInfo, "mine").find(" INFO proxy [node-tag] mine\n"), std::string::npos);
}

TEST_F(LogTest, JsonLinesAreOneObjectWithRayServesKeys) {
  Log::SetEncoding(LogEncoding::kJson);
  Log::SetProcessFields({{"application", "app"}, {"replica", "app#Echo#1234abcd"}});
  std::string line = Line(LogLevel::kInfo, "POST /echo 200 0.1ms",
                          {{"request_id", "r1"}, {"status_code", 200}, {"latency_ms", 0.125}, JsonOnly({"m", "x"})});
  ASSERT_EQ(line.find('\n'), line.size() - 1);
  json j = json::parse(line);
  EXPECT_EQ(j["levelname"], "INFO");
  EXPECT_EQ(j["component_name"], "proxy");
  EXPECT_EQ(j["message"], "POST /echo 200 0.1ms");
  EXPECT_EQ(j["application"], "app");
  EXPECT_EQ(j["replica"], "app#Echo#1234abcd");
  EXPECT_EQ(j["request_id"], "r1");
  EXPECT_EQ(j["status_code"], 200);
  EXPECT_DOUBLE_EQ(j["latency_ms"].get<double>(), 0.125);
  EXPECT_EQ(j["m"], "x");  // JSON-only fields are there
  EXPECT_TRUE(j["asctime"].get<std::string>().ends_with("Z"));
}

TEST_F(LogTest, JsonEscapesControlCharactersAndReplacesInvalidUtf8) {
  Log::SetEncoding(LogEncoding::kJson);
  std::string message = "quote \" backslash \\ newline \n tab \t bell \x07 caf\xc3\xa9 bad \xff\xfe end \xe2\x82";
  std::string line = Line(LogLevel::kError, message);
  ASSERT_EQ(line.find('\n'), line.size() - 1) << "a raw newline would split the line";
  json j = json::parse(line);  // throws on invalid UTF-8 or bad escapes
  EXPECT_EQ(j["message"],
            "quote \" backslash \\ newline \n tab \t bell \x07 caf\xc3\xa9 bad \xef\xbf\xbd\xef\xbf\xbd end "
            "\xef\xbf\xbd\xef\xbf\xbd");
  // Overlong encodings and surrogates are not UTF-8 either.
  json k = json::parse(Line(LogLevel::kError, "\xc0\xaf \xed\xa0\x80"));
  EXPECT_EQ(k["message"].get<std::string>().find('\xc0'), std::string::npos);
}

TEST_F(LogTest, ParsesRayServesNames) {
  LogEncoding e;
  EXPECT_TRUE(ParseLogEncoding("JSON", &e));
  EXPECT_EQ(e, LogEncoding::kJson);
  EXPECT_TRUE(ParseLogEncoding("text", &e));
  EXPECT_EQ(e, LogEncoding::kText);
  EXPECT_FALSE(ParseLogEncoding("yaml", &e));
  LogLevel l;
  EXPECT_TRUE(ParseLogLevel("CRITICAL", &l));
  EXPECT_EQ(l, LogLevel::kError);
  EXPECT_TRUE(ParseLogLevel("DEBUG", &l));
  EXPECT_EQ(l, LogLevel::kDebug);
  EXPECT_FALSE(ParseLogLevel("verbose", &l));
}

}  // namespace
}  // namespace ferry
