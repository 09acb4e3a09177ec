#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs node-llama-cpp (pinned) with only its prebuilt linux-x64 CPU binaries, without install scripts, into
# CACHE_DIR (once): llama.cpp itself, the independent reference for GGUF files. Exit 3 when npm or node is
# missing, so the caller can skip loudly.
set -euo pipefail
cache=${1:?usage: fetch-llama-cpp.sh CACHE_DIR}
command -v npm >/dev/null || { echo "fetch-llama-cpp: npm is not installed" >&2; exit 3; }
command -v node >/dev/null || { echo "fetch-llama-cpp: node is not installed" >&2; exit 3; }
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
[ -f "$cache/.complete" ] && exit 0
npm install --prefix "$cache" --no-audit --no-fund --ignore-scripts --omit=optional --no-save \
  node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1 >&2
touch "$cache/.complete"
