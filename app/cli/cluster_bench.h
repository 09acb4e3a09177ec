// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-cli bench`: runs each placement given (--local SPEC, --plan F, --auto; repeatable) of each model,
// one after another, and measures prefill, time to first token, decode and where a token's time goes, next to
// the cost model's prediction for the same placement. Writes PREFIX.md and PREFIX.csv (or the Markdown to
// stdout without --out); progress goes to stderr. Without placements: TP1, TP2 and PP2 on local workers (what
// the old `bench-cluster`, now an alias, compared).
int runBench(const std::vector<std::string>& args);

} // namespace together
