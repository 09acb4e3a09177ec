// SPDX-License-Identifier: MIT
#pragma once

#include <string>

namespace together::test {

// ../shared/refmodels/stories260K (empty when ../shared is absent: tests skip with a message).
std::string stories260KDir();
std::string sharedDir();
// A fresh folder under the temp dir, removed at exit.
std::string makeTempDir(const std::string& tag);
// Runs a shell command; returns its exit status and fills stdout (stderr goes to `err` when given).
int runCommand(const std::string& cmd, std::string* out, std::string* err = nullptr);
std::string binDir();

} // namespace together::test

#define SKIP_WITHOUT_STORIES()                                                                                    \
    do {                                                                                                          \
        if (together::test::stories260KDir().empty())                                                             \
            GTEST_SKIP() << "../shared/refmodels/stories260K is absent: skipping the reference-model check";    \
    } while (0)
