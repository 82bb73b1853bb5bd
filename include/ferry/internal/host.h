// The host's function table, as the plugin received it in create(). Not for user code.
#pragma once

#include <ferry/abi.h>

namespace ferry::internal {

inline const FerryHostApi*& Host() {
  static const FerryHostApi* host = nullptr;
  return host;
}

// Whether the host's table is long enough to hold `field` (tables grow by appending).
#define FERRY_HOST_HAS(host, field) \
  ((host) != nullptr && (host)->struct_size >= offsetof(FerryHostApi, field) + sizeof((host)->field) && (host)->field)

}  // namespace ferry::internal
