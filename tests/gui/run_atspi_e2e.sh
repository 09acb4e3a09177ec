#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs tests/gui/atspi_e2e.py (the app driven through AT-SPI, as a screen reader sees it) under its own X server
# (Xvfb) and its own session bus, on which the accessibility bus is D-Bus activated.
#   usage: run_atspi_e2e.sh BUILD/bin MODELDIR
# Exit status: 0 passed, 77 skipped (model, xvfb-run, dbus-run-session or python3-pyatspi absent), else failed.
# Debian packages: xvfb, dbus (dbus-run-session), at-spi2-core, python3-pyatspi; xdotool for the real click
# (skipped without it). No network beyond loopback: the app runs with --local-workers.
set -u

here=$(cd "$(dirname "$0")" && pwd)
skip=77

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD/bin MODELDIR" >&2
  exit 2
fi
bin=$1
model=$2

if [ ! -f "$model/reference.json" ] || [ ! -d "$model/hf" ]; then
  echo "SKIP: the reference model is absent: $model (needs hf/ and reference.json; it lives in ../shared/refmodels)"
  exit $skip
fi
for tool in xvfb-run Xvfb dbus-run-session; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool is not installed (Debian packages: xvfb for xvfb-run and Xvfb, dbus for dbus-run-session)"
    exit $skip
  fi
done
if [ ! -x /usr/libexec/at-spi-bus-launcher ] && ! command -v at-spi-bus-launcher >/dev/null 2>&1; then
  echo "SKIP: at-spi-bus-launcher is absent (Debian package at-spi2-core)"
  exit $skip
fi
# The Debian package installs pyatspi for the system python3; a python3 earlier on PATH (pyenv, a venv) may lack it.
py=
for cand in /usr/bin/python3 "$(command -v python3 2>/dev/null)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c 'import pyatspi' >/dev/null 2>&1; then
    py=$cand
    break
  fi
done
if [ -z "$py" ]; then
  echo "SKIP: no python3 can import pyatspi (Debian package python3-pyatspi)"
  exit $skip
fi
if ! command -v xdotool >/dev/null 2>&1; then
  echo "note: xdotool is not installed (Debian package xdotool): the real X click step will be skipped"
fi

export QT_LINUX_ACCESSIBILITY_ALWAYS_ON=1
export QT_QPA_PLATFORM=xcb
# A fresh session bus gives a fresh accessibility bus: nothing may point at the caller's.
unset AT_SPI_BUS_ADDRESS WAYLAND_DISPLAY DBUS_SESSION_BUS_ADDRESS

# xvfb-run -a picks the first display without a lock file; two started at once (another test, another user)
# can race for it, and the loser's clients cannot connect. The script says so with 75: try again.
rc=75
for attempt in 1 2 3; do
  xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- "$py" "$here/atspi_e2e.py" --bin "$bin" --model "$model"
  rc=$?
  [ $rc -eq 75 ] || break
  echo "the X display could not be opened (attempt $attempt); trying again"
  sleep $((attempt * 2))
done
if [ $rc -eq 75 ]; then
  echo "FAIL: no usable Xvfb display after 3 attempts"
  exit 1
fi
exit $rc
