// SPDX-License-Identifier: MIT
#pragma once
// Builds with AddressSanitizer (scripts/test.sh --sanitize) run several times slower, and a process takes
// seconds to exit (the leak check scans its heap): waits for a computation to finish (a daemon's calibration)
// and the tests' waits for a process to end are stretched by this factor there, and nowhere else. Deadlines
// that detect a stalled peer are not: they already leave minutes for work that takes seconds. Resident memory
// includes ASan's shadow and redzones, so tests of memory estimates do not run in those builds.

namespace together {

#if defined(__SANITIZE_ADDRESS__)
constexpr int kSanitizerSlowdown = 5;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr int kSanitizerSlowdown = 5;
#else
constexpr int kSanitizerSlowdown = 1;
#endif
#else
constexpr int kSanitizerSlowdown = 1;
#endif

constexpr bool kSanitized = kSanitizerSlowdown > 1;

} // namespace together
