#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer targets (clang + ASan + UBSan, folder build-fuzz) and runs each for SECONDS (default 20)
# from its committed seed corpus (fuzz/corpus/<target>, copied: the run's discoveries stay in the build
# folder), plus ../shared's real tokenizer files when they are there. Fails on any crash, leak, timeout or
# out-of-memory; prints each target's executions per second and the coverage it reached.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_jinja fuzz_tokenizer fuzz_safetensors fuzz_gguf fuzz_config fuzz_peer_messages)
build=${TOGETHER_FUZZ_BUILD_DIR:-build-fuzz}
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DTOGETHER_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target "${targets[@]}"

shared=../shared/refmodels/stories260K/hf
status=0
printf '\n| target | seconds | executions | exec/s | coverage (edges) | features | corpus | result |\n|---|---:|---:|---:|---:|---:|---:|---|\n' > "$build/fuzz-summary.md"
for t in "${targets[@]}"; do
  work="$build/corpus/$t"
  mkdir -p "$work" "$build/artifacts/$t"
  cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  if [ "$t" = fuzz_tokenizer ] && [ -f "$shared/tokenizer.json" ]; then
    { cat "$shared/tokenizer.json"; printf '\0'; cat "$shared/tokenizer_config.json"; printf '\0Once upon a time'; } > "$work/stories260K"
  fi
  if [ "$t" = fuzz_jinja ] && [ -f "$shared/tokenizer_config.json" ]; then
    python3 -c 'import json,sys; t=json.load(open(sys.argv[1])).get("chat_template"); t and open(sys.argv[2],"w").write(t if isinstance(t,str) else json.dumps(t))' \
      "$shared/tokenizer_config.json" "$work/stories260K.jinja" || true
  fi
  log="$build/$t.log"
  echo "fuzz: $t for ${seconds}s"
  if "$build/bin/$t" "$work" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 -max_len=16384 \
       -print_final_stats=1 -artifact_prefix="$build/artifacts/$t/" >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log)"
    status=1
    tail -40 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result" >> "$build/fuzz-summary.md"
done
cat "$build/fuzz-summary.md"
exit $status
