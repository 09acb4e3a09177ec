// SPDX-License-Identifier: MIT
#include "cli/verify_command.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "base/process.h"
#include "common/placements.h"
#include "master/cluster.h"
#include "model/run_dtype.h"
#include "text/run_options.h"
#include "text/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include <unistd.h>

namespace together {

namespace fs = std::filesystem;

namespace {

struct Steps {
    std::vector<int> ids;
    std::vector<std::map<int, float>> top; // per step: the top logits by id
};

Steps generate(const std::shared_ptr<const Credentials>& credentials, const Plan& plan, const std::string& modelDir, const std::string& dtype,
               int64_t context, const std::vector<int>& prompt, int steps, bool force)
{
    Cluster::Callbacks callbacks;
    Cluster cluster(credentials, callbacks);
    struct StopOnExit {
        Cluster& c;
        ~StopOnExit() { c.stop(); }
    } stopOnExit{cluster};
    cluster.launch(plan, modelDir, dtype, context, force);
    RingRequest r;
    r.tokens = prompt;
    r.sampling.temperature = 0;
    r.maxTokens = static_cast<uint32_t>(steps);
    r.topLogits = 10;
    Steps out;
    cluster.generate(r, [&](const RingToken& t) {
        out.ids.push_back(t.token);
        std::map<int, float> top;
        for (auto& [id, logit] : t.top)
            top[id] = logit;
        out.top.push_back(std::move(top));
        return true;
    });
    return out;
}

} // namespace

int runVerify(const std::vector<std::string>& rawArgs)
{
    auto specs = placementFlagSpecs();
    for (const char* f : {"model", "prompt", "steps", "dtype", "threads", "context"})
        specs.push_back({f});
    CliArgs args(rawArgs, specs);
    if (!args.has("model"))
        throw Error("verify needs --model DIR");
    const std::string modelDir = args.get("model");
    const PlacementSource source = placementSources(rawArgs, false).front();
    const int steps = args.getInt("steps", 32);
    if (steps < 1 || steps > 4096)
        throw Error("--steps takes 1 to 4096 greedy steps");
    const ModelConfig config = ModelConfig::fromDirectory(modelDir);
    const Tokenizer tokenizer = Tokenizer::fromDirectory(modelDir);
    std::string dtype = args.get("dtype");
    if (dtype.empty() && source.kind == PlacementSource::Kind::PlanFile)
        dtype = Plan::fromJson(readTextFile(source.spec), source.spec).dtype;
    if (dtype.empty())
        dtype = defaultDtypeFor(modelDir);
    if (!isRunDtype(dtype))
        throw Error("--dtype must be bf16, q8, q4, native or f32");
    std::vector<int> prompt = tokenizer.encode(args.get("prompt", "Once upon a time"), true);
    if (prompt.empty())
        throw Error("the prompt is empty after tokenizing");
    const int64_t context = std::min<int64_t>(config.contextLimit(), args.getInt("context", static_cast<int>(std::max<size_t>(256, prompt.size() + steps + 8))));
    if (static_cast<int64_t>(prompt.size()) + steps > context)
        throw Error("the prompt (" + std::to_string(prompt.size()) + " tokens) and " + std::to_string(steps) + " steps do not fit a context of " +
                    std::to_string(context));

    const TempDir scratch("verify");
    const std::string& tmpl = scratch.path();
    auto say = [](const std::string& line) { std::fprintf(stderr, "together: %s\n", line.c_str()); };
    const PlacementContext pc = PlacementContext::fromArgs(args, config, dtype, context, tmpl, false);
    ChosenPlacement chosen = choosePlacement(source, pc);
    const bool force = args.has("force");

    say("running the placement (" + describePlan(chosen.plan) + ") for " + std::to_string(steps) + " greedy steps");
    const Steps got = generate(chosen.credentials, chosen.plan, modelDir, dtype, context, prompt, steps, force);

    // The reference: the whole model on one machine of the placement, the one that runs the most layers first.
    std::vector<std::pair<int64_t, PlanRank>> candidates;
    for (auto& st : chosen.plan.stages)
        for (auto& r : st.ranks) {
            auto it = std::find_if(candidates.begin(), candidates.end(), [&](auto& c) { return c.second.worker == r.worker; });
            if (it == candidates.end())
                candidates.push_back({st.lastLayer - st.firstLayer + 1, r});
            else
                it->first += st.lastLayer - st.firstLayer + 1;
        }
    std::stable_sort(candidates.begin(), candidates.end(), [](auto& a, auto& b) { return a.first > b.first; });
    std::optional<Steps> want;
    std::string reference, refused;
    for (auto& [layers, rank] : candidates) {
        Plan one;
        one.stages.push_back({0, config.numLayers - 1, {rank}});
        try {
            say("running the whole model on " + rank.worker + " for the reference");
            want = generate(chosen.credentials, one, modelDir, dtype, context, prompt, steps, false);
            reference = "the whole model on one machine (" + rank.worker + ")";
            break;
        } catch (const std::exception& e) {
            refused += std::string("\n  ") + rank.worker + ": " + e.what();
        }
    }
    if (!want) {
        // No machine holds it all: the same stages, each run by one machine of its group.
        bool anyTp = false;
        Plan stages = chosen.plan;
        for (auto& st : stages.stages) {
            anyTp = anyTp || st.ranks.size() > 1;
            st.ranks.resize(1);
        }
        if (!anyTp)
            throw Error("no machine of the placement can hold the whole model for a reference:" + refused +
                        "\nand the placement has no tensor-parallel stage to check on its own: its pipeline stages already run whole layers "
                        "on one machine each");
        say("no machine holds the whole model:" + refused + "\ntogether: comparing stage by stage: each stage's layers on one machine of its group");
        want = generate(chosen.credentials, stages, modelDir, dtype, context, prompt, steps, false);
        reference = "each stage on one machine (" + describePlan(stages) + ")";
    }

    // Ids step by step; the logits of the ids both top lists hold, on the steps before the first disagreement
    // (after it the two runs see different inputs).
    size_t agree = 0;
    const size_t n = std::min(got.ids.size(), want->ids.size());
    while (agree < n && got.ids[agree] == want->ids[agree])
        ++agree;
    double maxDiff = 0;
    std::string where;
    for (size_t i = 0; i < std::min(n, agree + 1); ++i)
        for (auto& [id, logit] : want->top[i]) {
            auto it = got.top[i].find(id);
            if (it != got.top[i].end() && std::fabs(it->second - logit) > maxDiff) {
                maxDiff = std::fabs(it->second - logit);
                where = "step " + std::to_string(i) + ", token " + std::to_string(id);
            }
        }
    const bool same = agree == n && got.ids.size() == want->ids.size();
    std::printf("placement: %s\nreference: %s\nmodel: %s, %s, %zu prompt tokens, %d greedy steps\n", describePlan(chosen.plan).c_str(), reference.c_str(),
                modelDir.c_str(), dtype.c_str(), prompt.size(), steps);
    if (same)
        std::printf("token ids: all %zu agree\n", n);
    else
        std::printf("token ids: the first %zu of %zu agree; step %zu: the placement chose %d, the reference %d\n", agree, n, agree,
                    agree < got.ids.size() ? got.ids[agree] : -1, agree < want->ids.size() ? want->ids[agree] : -1);
    std::printf("largest logit difference: %.3g (top-10 logits of %zu step(s)%s)\n", maxDiff, std::min(n, agree + 1),
                where.empty() ? "" : (", at " + where).c_str());
    std::printf("verdict: %s\n", same ? "the placement gives the same tokens" : "the placement gives different tokens");
    return same ? 0 : 1;
}

} // namespace together
