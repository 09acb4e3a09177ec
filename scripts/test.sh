#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Configures, builds and runs the whole test suite. Needs the packages from scripts/install-deps.sh.
#   --sanitize: AddressSanitizer + UndefinedBehaviorSanitizer build (folder build-asan) of the tests of the
#               parsers of untrusted input (model files, tokenizers, chat templates, plans), run the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sanitize" ]; then
  build=${TOGETHER_BUILD_DIR:-build-asan}
  parsers=(test_safetensors test_model_config test_tokenizer test_jinja test_chat test_plan test_hostile_input)
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOGETHER_SANITIZE=ON
  cmake --build "$build" --target "${parsers[@]}"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  for t in "${parsers[@]}"; do "$build/bin/$t" --gtest_brief=1; done
  exit 0
fi
build=${TOGETHER_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure -j 2 --timeout 900
