#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# core/ holds no Qt and no libtorch; app/'s CLI holds no libtorch. Linking alone would not catch an include.
set -euo pipefail
root=${1:?usage: check-layering.sh SOURCE_DIR}
bad=$(grep -rlE '#include *[<"](Q[A-Za-z]+|torch/|ATen/|c10/)' "$root/core" || true)
if [ -n "$bad" ]; then
  echo "core/ must not include Qt or libtorch headers; found in:"; echo "$bad"; exit 1
fi
bad=$(grep -rlE '#include *[<"](torch/|ATen/|c10/)' "$root/app" || true)
if [ -n "$bad" ]; then
  echo "app/ must not include libtorch headers; found in:"; echo "$bad"; exit 1
fi
bad=$(grep -rlE '#include *[<"]torch/torch.h' "$root/worker" || true)
if [ -n "$bad" ]; then
  echo "worker/ includes <torch/torch.h> (12 s per file); use ATen headers:"; echo "$bad"; exit 1
fi
echo "layering ok"
