// SPDX-License-Identifier: MIT
#pragma once

#include "master/metrics.h"
#include "model/plan.h"

#include <string>
#include <vector>

namespace together {

// One measured run, as `together-cli bench` and the app's Performance pane show it.
struct BenchRow {
    std::string model;
    std::string placement;   // the source ("local tp=2,pp=1", a plan file, "auto")
    std::string layout;      // what ran: describePlan
    int tp = 1, pp = 1, machines = 1;
    std::string dtype, threads;
    int promptTokens = 0, decodeTokens = 0;
    double prefillTps = 0, decodeTps = 0, ttftMs = 0;
    double msPerToken = 0, computeMs = 0, allReduceMs = 0, linksMs = 0;
    double efficiency = 0;   // (decode tok/s / first row's) / (machines / first row's machines)
    double predictedMs = 0, errorPct = 0;
    bool predicted = false;
    double peakRssMiB = 0, estimateMiB = 0; // the largest shard's
};

// The row's placement columns from `plan`: layout, TP (the widest stage), PP, machines, threads per rank
// ("2", or "2/1/1" when they differ).
void setBenchPlacement(BenchRow& r, const Plan& plan);

// The table's columns, and one row's cells in that order.
const std::vector<std::string>& benchColumns();
std::vector<std::string> benchCells(const BenchRow& r);
// "TinyLlama-1.1B" from a Hugging Face cache snapshot (models--ORG--NAME/snapshots/HASH), else the folder's name.
std::string benchModelName(const std::string& dir);
// The original together-LLM table's cells: "4.2 tokens/s", or "1 token / 10 s" below one token a second.
std::string seedTableCell(double tokensPerSecond);
// A generation's decode steps: msPerToken and its split (compute, all-reduce, links) as p50s. Throws Error
// when there are none.
void splitBenchSteps(const std::vector<StepRecord>& steps, BenchRow& r);
// The rows as CSV (a header of benchColumns()), and as Markdown: a heading with the date, the host and
// `runs` (what each row is), the table, its legend, `failures`, and with `seedTable` the rows again in the
// layout of the original together-LLM table (columns `models`, rows TP sizes).
std::string benchCsv(const std::vector<BenchRow>& rows);
std::string benchMarkdown(const std::vector<BenchRow>& rows, const std::vector<std::string>& failures, const std::string& runs, bool seedTable,
                          const std::vector<std::string>& models);

} // namespace together
