// `ferry run`: a whole node in the foreground — proxy, controller and node agent in this process, one
// child process per replica — from start-up progress to a graceful stop on SIGINT/SIGTERM.
// Not thread-safe: construct and Run on the main thread.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"

namespace ferry::cli {

struct ForegroundOptions {
  std::string ferry_binary;  // this executable, started again in replica mode
  std::string run_dir;       // empty: a new directory under $TMPDIR, removed at exit
};

// Serves `config` until a signal; returns the process exit code (0 after a graceful stop, 1 when a
// deployment failed to start, the port could not be bound, or a second signal cut the drain short).
int RunForeground(const config::Config& config, const ForegroundOptions& options);

}  // namespace ferry::cli
