#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs every Debian (bookworm) package that together needs to build, run and test.
# Idempotent; run as root (or through sudo). Nothing is downloaded from anywhere but Debian's mirrors.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  # tests/check-size.sh: functions and files kept small (clang-tidy's readability-function-size)
  clang-tidy python3
  # engine
  libtorch-dev libopenblas0-pthread
  # distributed execution
  libgloo-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev
  # core: JSON, byte-level BPE pre-tokenizer regex (PCRE2 with Unicode), NFC normalization (ICU)
  nlohmann-json3-dev libpcre2-dev libicu-dev
  # GUI
  qt6-base-dev libqcustomplot-dev libgl1-mesa-dev
  # tests: GoogleTest; node + npm fetch the pinned JS reference tokenizer/jinja packages; network namespaces
  # (ip), systemd-analyze for the worker's unit file, setsid
  libgtest-dev libgmock-dev nodejs npm xvfb iproute2 systemd util-linux
  # the app's end-to-end test as a screen reader sees it: a D-Bus session, the accessibility bus and its
  # Python client, real X mouse events
  dbus at-spi2-core python3-pyatspi xdotool
)

# --sanitize: also clang and its libFuzzer runtime (scripts/fuzz.sh)
if [ "${1:-}" = "--sanitize" ]; then
  packages+=(clang libclang-rt-14-dev)
fi

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# The machine image may ship node/npm outside Debian's packaging; don't fight it.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in nodejs|npm) ;; *) filtered+=("$p") ;; esac
  done
  missing=("${filtered[@]}")
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
