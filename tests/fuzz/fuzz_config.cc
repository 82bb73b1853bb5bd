// Parses arbitrary bytes as a ferry config: any input gets a config or an error, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  ferry::config::ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view name) { return name == "echo"; };
  auto config = ferry::config::ParseConfig(text, "fuzz.yaml", "/nonexistent", hooks);
  if (config.ok()) (void)ferry::config::ToJson(*config).dump();
  return 0;
}
