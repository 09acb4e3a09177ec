// SPDX-License-Identifier: MIT
#include "base/error.h"

namespace together {

void rethrowWithContext(const std::string& context)
{
    try {
        throw;
    } catch (const Error& e) {
        throw Error(context + ": " + e.what());
    } catch (const std::exception& e) {
        throw Error(context + ": " + e.what());
    }
}

} // namespace together
