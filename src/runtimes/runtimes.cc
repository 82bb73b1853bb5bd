#include "runtimes/runtimes.h"

extern "C" const FerryDeploymentApi* ferry_deployment_FerryBuiltinEcho();
extern "C" const FerryDeploymentApi* ferry_deployment_FerryBuiltinBusy();
extern "C" const FerryDeploymentApi* ferry_deployment_FerryBuiltinCall();

namespace ferry::runtimes {
namespace {

struct Builtin {
  std::string_view name;
  FerryDeploymentEntry entry;
};

constexpr Builtin kBuiltins[] = {
    {"echo", &ferry_deployment_FerryBuiltinEcho},
    {"busy", &ferry_deployment_FerryBuiltinBusy},
    {"call", &ferry_deployment_FerryBuiltinCall},
};

}  // namespace

const FerryDeploymentApi* FindBuiltin(std::string_view name) {
  for (const Builtin& b : kBuiltins)
    if (b.name == name) return b.entry();
  return nullptr;
}

std::vector<std::string> BuiltinNames() {
  std::vector<std::string> names;
  for (const Builtin& b : kBuiltins) names.emplace_back(b.name);
  return names;
}

}  // namespace ferry::runtimes
