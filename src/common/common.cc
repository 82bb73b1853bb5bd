#include "common/common.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <random>

namespace ferry {

std::atomic<int> Log::level_{static_cast<int>(LogLevel::kInfo)};

namespace {

std::string& ProcessTag() {
  static std::string tag;
  return tag;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "?";
}

uint64_t RandomWord() {
  thread_local std::mt19937_64 engine([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
  }());
  return engine();
}

void AppendHex(std::string& out, uint64_t value, int chars) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int i = chars - 1; i >= 0; --i) out.push_back(kDigits[(value >> (i * 4)) & 0xf]);
}

}  // namespace

namespace internal {
void AppendDouble(std::string& out, double v) {
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%g", v);
  out.append(buf, n > 0 ? static_cast<size_t>(n) : 0);
}
}  // namespace internal

void Log::SetLevel(LogLevel level) { level_.store(static_cast<int>(level)); }
LogLevel Log::level() { return static_cast<LogLevel>(level_.load()); }
void Log::SetProcessTag(std::string tag) { ProcessTag() = std::move(tag); }

void Log::Write(LogLevel level, std::string_view component, std::string_view message) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm parts;
  gmtime_r(&ts.tv_sec, &parts);
  char stamp[40];
  snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", parts.tm_year + 1900, parts.tm_mon + 1,
           parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec, ts.tv_nsec / 1000000);
  std::string line = ferry::StrCat(stamp, " ", LevelName(level), " ", component);
  if (!ProcessTag().empty()) ferry::StrAppend(&line, " [", ProcessTag(), "]");
  ferry::StrAppend(&line, " ", message, "\n");
  ssize_t unused = ::write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
}

bool ParseLogLevel(std::string_view text, LogLevel* out) {
  std::string lower(text);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "debug")
    *out = LogLevel::kDebug;
  else if (lower == "info")
    *out = LogLevel::kInfo;
  else if (lower == "warning" || lower == "warn")
    *out = LogLevel::kWarning;
  else if (lower == "error")
    *out = LogLevel::kError;
  else
    return false;
  return true;
}

std::string HexString(uint64_t value, int chars) {
  std::string out;
  AppendHex(out, value, chars > 16 ? 16 : chars);
  return out;
}

std::string NewRequestId() {
  std::string id;
  id.reserve(32);
  AppendHex(id, RandomWord(), 16);
  AppendHex(id, RandomWord(), 16);
  return id;
}

std::string NewShortId(int hex_chars) {
  std::string id;
  AppendHex(id, RandomWord(), hex_chars > 16 ? 16 : hex_chars);
  return id;
}

double WallSeconds() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9;
}

}  // namespace ferry
