#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Configures, builds and runs the whole test suite. Needs the packages from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TOGETHER_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure -j 2 --timeout 900
