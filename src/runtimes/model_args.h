// What every model runtime reads from its args: the model file, the name and version it is served
// under, and its thread count. Header-only and SDK-only, like the runtimes that include it.
#pragma once

#include <algorithm>
#include <cmath>
#include <ferry/deployment.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::runtimes {

struct ModelArgs {
  std::string path;                   // args.model_path (the import path's PATH, set by the controller)
  std::string name;                   // args.model_name
  std::vector<std::string> versions;  // args.model_version, when set
  int threads = 1;                    // args.<threads_key>, else ceil(args.num_cpus), at least 1

  // `runtime` names the import path in errors ("torchscript"); `threads_key` is the runtime's own
  // thread option ("intra_op_threads", "nthread").
  static ModelArgs Read(const Args& args, std::string_view runtime, const std::string& threads_key) {
    ModelArgs m;
    m.path = args.get<std::string>("model_path", "");
    m.name = args.get<std::string>("model_name", "");
    if (m.path.empty())
      throw std::invalid_argument("args.model_path: required (the import path " + std::string(runtime) +
                                  ":PATH sets it)");
    if (args.has("model_version")) {
      const Json& v = args.json().at("model_version");
      m.versions.push_back(v.is_string() ? v.get<std::string>() : v.dump());
    }
    m.threads = args.get<int>(threads_key, 0);
    if (m.threads <= 0) m.threads = std::max(1, static_cast<int>(std::ceil(args.get<double>("num_cpus", 1.0))));
    return m;
  }
};

// The first line of a library's error message, printable: the rest may be a backtrace, and a corrupt
// model file's bytes may be quoted in it.
inline std::string PrintableFirstLine(std::string_view text) {
  std::string line(text.substr(0, text.find('\n')));
  for (char& c : line)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return line;
}

}  // namespace ferry::runtimes
