#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds and runs the main job on the built-in default: a local cluster of worker processes on this machine
# (two tensor-parallel ranks, each standing for a machine, on loopback with a fresh cluster key) generating
# with a small random-weight Llama that the project writes to ~/.cache/together/default-model.
# Extra arguments go to `together-cli run` (e.g. --model DIR --local tp=1,pp=2 --prompt "...").
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TOGETHER_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build"
if [ "$#" -eq 0 ]; then
  set -- --local tp=2,pp=1 --prompt "Once upon a time" --max-tokens 48
fi
exec "$build/bin/together-cli" run "$@"
