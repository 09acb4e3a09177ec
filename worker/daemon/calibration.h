// SPDX-License-Identifier: MIT
#pragma once

#include <map>
#include <vector>
#include <string>
#include <utility>

namespace together {

// What this machine can do, measured on the engine's own kernels: memory read bandwidth and the one-row
// matrix-vector product (the decode step) per dtype, each with one thread and with every donated thread,
// and the prefill's matrix product. The cost model (core/cost_model) predicts from these.
struct Calibration {
    double readGBps1 = 0, readGBpsAll = 0;
    std::map<std::string, std::pair<double, double>> matvecGBps; // dtype -> (one thread, all threads), weight GB/s
    double gemmGFlops = 0;                                        // all threads, f32
    double layerOverheadUs1 = 0, layerOverheadUsAll = 0;          // a decoder layer's fixed cost per decode step
    int threads = 1;
    std::string cpuModel;
    std::string kernelPath; // what decides which kernels run: the CPU's vector features and oneDNN's ISA cap
    bool fromCache = false;
    double seconds = 0;     // how long measuring took
};

// Measures with `threads` threads (takes about 2-4 s on a laptop-class CPU).
Calibration measureCalibration(int threads);
std::string calibrationKey(int threads); // CPU model, software version, kernel path, threads

// `together-worker calibrate [--threads N] [--recalibrate] [--report-fd FD]`: measures (one machine at a
// time: an flock on $cache/calibration.lock, so daemons starting together do not measure each other), or
// reuses the result cached in $cache/calibration.json for this key, and prints it as one JSON line (to the
// report fd when given, else stdout).
int runCalibrate(const std::vector<std::string>& args);

std::string calibrationToJson(const Calibration& c);
Calibration calibrationFromJson(const std::string& text); // throws Error

} // namespace together
