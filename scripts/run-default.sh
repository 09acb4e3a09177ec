#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds and opens the app on the built-in default: two worker daemons started on this machine (each standing
# for a machine, on loopback, never broadcasting), the last model used or the built-in random-weight Llama
# (written once to ~/.cache/together/default-model; the app says its output is noise), and a placement the
# cost model proposes. Without a display the app says so and runs the headless main job instead
# (together-cli run --auto --local-workers 2). Extra arguments go to the app (e.g. --model DIR, --plan F).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TOGETHER_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build"
has_local=0
for a in "$@"; do
  case "$a" in --local-workers|--plan) has_local=1 ;; esac
done
if [ "$has_local" -eq 0 ]; then
  set -- --local-workers 2 "$@"
fi
exec "$build/bin/together" "$@"
