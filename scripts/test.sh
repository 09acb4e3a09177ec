#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Configures, builds and runs the whole test suite. Needs the packages from scripts/install-deps.sh.
#   --sanitize: the same suite built with AddressSanitizer + UndefinedBehaviorSanitizer (folder build-asan): every
#               test, with leak detection on; a sanitizer report fails the test that triggered it (the spawned
#               workers and shards are instrumented too). Suppressions, each with its reason: tests/sanitizers/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sanitize" ]; then
  build=${TOGETHER_BUILD_DIR:-build-asan}
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOGETHER_SANITIZE=ON
  cmake --build "$build"
  supp="$PWD/tests/sanitizers"
  # quarantine_size_mb: ASan keeps 256 MiB of freed memory per process by default, which shards count as
  # resident memory; a daemon stops a launch whose shards exceed what it donates (+10%), and the tests donate
  # what the estimate says a shard needs. 16 MiB still catches a use shortly after a free.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16:suppressions=$supp/asan.supp
  export LSAN_OPTIONS=suppressions=$supp/lsan.supp:print_suppressions=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp
  ctest --test-dir "$build" --output-on-failure -j 2 --timeout 2700
  exit 0
fi
build=${TOGETHER_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure -j 2 --timeout 900
