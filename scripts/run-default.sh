#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds and runs the main job on the built-in default: generation with a small random-weight Llama that the
# project writes to ~/.cache/together/default-model. Extra arguments go to `together-worker generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TOGETHER_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build"
if [ "$#" -eq 0 ]; then
  set -- --prompt "Once upon a time" --max-tokens 48
fi
exec "$build/bin/together-worker" generate "$@"
