# The two commands: `make run` and `make test`. Both install what is missing first (scripts/install-deps).
BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
FUZZ_BUILD ?= build-fuzz
CONFIG     ?= examples/quickstart.yaml
FUZZ_SECONDS ?= 15
CMAKE_FLAGS ?= -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: all deps build run test unit-test integration-test asan-test tsan-test fuzz-test bench clean

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD)

run: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) --target ferry
	$(BUILD)/ferry run $(CONFIG)

# The whole suite: unit and integration tests on the release build, the unit tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer, a clang build that checks the lock annotations running the
# unit and integration tests under ThreadSanitizer, and a short run of every fuzz target.
test: build
	ctest --test-dir $(BUILD) --output-on-failure
	@$(MAKE) --no-print-directory asan-test
	@$(MAKE) --no-print-directory tsan-test
	@$(MAKE) --no-print-directory fuzz-test

unit-test: build
	ctest --test-dir $(BUILD) --output-on-failure -L unit

integration-test: build
	ctest --test-dir $(BUILD) --output-on-failure -L integration

asan-test: deps
	@cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON -DFERRY_BUILD_BENCH=OFF >/dev/null
	@cmake --build $(ASAN_BUILD) --target unit_tests
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir $(ASAN_BUILD) --output-on-failure -L unit

# clang-14 with -Wthread-safety -Werror=thread-safety (CMakeLists.txt) and -fsanitize=thread. Every process
# (test binaries, the ferry node, its replicas) writes its race reports to $(TSAN_BUILD)/tsan-reports:
# any report fails the run, even one from a replica whose exit no test looks at.
tsan-test: deps
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_TSAN=ON -DFERRY_BUILD_BENCH=OFF >/dev/null
	@cmake --build $(TSAN_BUILD)
	@rm -rf $(TSAN_BUILD)/tsan-reports && mkdir -p $(TSAN_BUILD)/tsan-reports
	@TSAN_OPTIONS="log_path=$(CURDIR)/$(TSAN_BUILD)/tsan-reports/report second_deadlock_stack=1" \
	  ctest --test-dir $(TSAN_BUILD) --output-on-failure -L 'unit|integration'; rc=$$?; \
	if ls $(TSAN_BUILD)/tsan-reports/report.* >/dev/null 2>&1; then \
	  cat $(TSAN_BUILD)/tsan-reports/report.*; echo "ThreadSanitizer reported races (above)"; exit 1; \
	fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; echo "ThreadSanitizer: no race reported"

fuzz-test: deps
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_FUZZ=ON -DFERRY_BUILD_TESTS=OFF >/dev/null
	@cmake --build $(FUZZ_BUILD)
	@for f in $(FUZZ_BUILD)/tests/fuzz/fuzz_*; do \
	  name=$$(basename $$f); corpus=tests/fuzz/corpus/$${name#fuzz_}; \
	  echo "fuzzing $$name for $(FUZZ_SECONDS) s"; \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$name; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 $(FUZZ_BUILD)/corpus/$$name $$corpus >$(FUZZ_BUILD)/$$name.log 2>&1 \
	    || { tail -n 40 $(FUZZ_BUILD)/$$name.log; exit 1; }; \
	done; echo "fuzz targets: no crash"

bench: build
	@scripts/install-deps --bench
	bench/http_echo/run.sh
	/usr/bin/python3 bench/lifecycle/run.py
	/usr/bin/python3 bench/batching/run.py
	/usr/bin/python3 bench/autoscale/run.py
	$(BUILD)/bench/micro_bench

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD)
