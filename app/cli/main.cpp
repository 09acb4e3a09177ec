// SPDX-License-Identifier: MIT
// together-cli: the headless front end. Links core only (no Qt, no libtorch). Each command is in its own file:
// run (run_command), bench (cluster_bench), predict, verify, the model-file commands (model_commands), workers and
// worker-log (app/common).
#include "base/cli_args.h"
#include "base/error.h"
#include "cli/cluster_bench.h"
#include "cli/model_commands.h"
#include "cli/predict_command.h"
#include "cli/run_command.h"
#include "cli/verify_command.h"
#include "common/workers_command.h"
#include "net/cluster_key.h"
#include "net/rpc.h"

#include <cstdio>
#include <functional>
#include <map>

using namespace together;

namespace {

const char* kUsage =
    "usage:\n"
    "  together-cli tokenize --model DIR --text TEXT [--no-special]\n"
    "      Prints the token ids, space-separated, on one line.\n"
    "  together-cli detokenize --model DIR --ids \"1 2 3\" [--skip-special]\n"
    "  together-cli chat-template --model DIR --messages FILE.json [--no-generation-prompt]\n"
    "      Prints the prompt the model's chat template renders for an OpenAI-style messages array.\n"
    "  together-cli workers [--key-file K] [--wait S] [--json] [--watch] [--probe] [--add HOST:PORT]... [--forget HOST:PORT]...\n"
    "                       [--discovery-port P] [--discovery-interfaces IF,IF] [--no-broadcast]\n"
    "      Lists the worker daemons on the LAN (UDP broadcast discovery, then an authenticated Hello to each) and\n"
    "      workers added by address (remembered), each with its state: ready, busy, refused, unreachable or gone\n"
    "      and why. Waits S seconds (default 2); --watch prints every change until S runs out or Ctrl-C. --probe\n"
    "      then measures every pair of ready workers' links (pipeline stream and all-reduce: latency, MB/s).\n"
    "  together-cli models [--model DIR]... [--hub DIR] [--dtype D] [--json]\n"
    "      The models in the Hugging Face cache (--hub, default $HF_HUB_CACHE or ~/.cache/huggingface/hub) and the\n"
    "      folders given: name, architecture, size, parameters, dtype, chat or base, and whether together can run\n"
    "      it or why not (unsupported architecture, quantized checkpoint, .bin weights only, no tokenizer.json).\n"
    "  together-cli worker-log HOST:PORT [--lines N] [--follow] [--key-file K]\n"
    "      A worker daemon's recent log (its own lines and its shards').\n"
    "  together-cli run --model DIR (--plan plan.json | --local tp=T,pp=P | --auto) --prompt TEXT [--chat] [--interactive]\n"
    "                   [--key-file F] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                   [--stop TEXT]... [--dtype bf16|q8|q4|native|f32] [--threads N] [--trace FILE] [--context N] [--failover]\n"
    "                   [--timeline FILE] [--metrics FILE] [--window N] [--force] [--predict] [--save-plan F]\n"
    "                   [--local-workers N] [--add HOST:PORT]... [--wait S] [--no-broadcast]\n"
    "      Runs the model across worker daemons, as a ring: each stage streams to the next and the last sends the\n"
    "      token straight back to the first. --local starts one daemon per rank on this machine (loopback, fresh\n"
    "      key) and stops them afterwards. --auto finds the workers (as `workers` does; or starts --local-workers N\n"
    "      here), measures them and their links, and runs the placement with the lowest predicted ms/token that fits\n"
    "      memory, printing it and why (--save-plan writes it as a plan file). --predict: the same survey for a\n"
    "      given placement, and its prediction against the measured ms/token. A placement that needs more memory\n"
    "      than the workers have free is refused with the numbers; --force launches it anyway (a worker still holds\n"
    "      to what it donates). --interactive reads one user message per line from stdin. --context: KV cache\n"
    "      positions (default the model's). --failover: when a worker dies or stalls, place the model on the\n"
    "      workers left and continue the answer. --timeline: a Chrome trace (Perfetto) of every rank's compute and\n"
    "      links. --metrics: per-link p50/p95 as JSON. --window: tokens the shards may run ahead (default 4).\n"
    "  together-cli bench [--model DIR]... [--local tp=T,pp=P | --plan F | --auto]... [--out PREFIX] [--tokens N]\n"
    "                     [--prompt-tokens N] [--dtype bf16|q8|q4|native|f32] [--threads N] [--context N] [--seed-table] [--force]\n"
    "                     [--key-file K] [--local-workers N] [--add HOST:PORT]... [--wait S] [--no-broadcast]\n"
    "      Runs each placement of each model in turn and writes PREFIX.md and PREFIX.csv (without --out, the\n"
    "      Markdown to stdout): a row per placement with TP, PP, machines, dtype, threads, prefill tok/s, decode\n"
    "      tok/s, time to first token, ms/token split into compute, all-reduce and links, scaling efficiency vs the\n"
    "      first row, the cost model's predicted ms/token and its error, and the largest shard's peak memory against\n"
    "      its estimate. --seed-table adds the original together-LLM table (columns models, rows TP sizes). Without\n"
    "      --model: TinyLlama-1.1B's shape with random weights; without placements: TP1, TP2 and PP2 on local\n"
    "      workers. `bench-cluster` is the old name.\n"
    "  together-cli predict --model DIR (--plan plan.json | --auto) --machines FILE [--dtype bf16|q8|q4|native|f32] [--context N]\n"
    "      The cost model: a placement's predicted ms/token split into compute, all-reduces and links, and the same\n"
    "      with every link a named profile (loopback, 10 GbE, 2.5 GbE, 1 GbE, Wi-Fi 5); --auto finds the placement with\n"
    "      the lowest prediction that fits memory and says why. FILE holds each worker's measured speeds (see README).\n"
    "  together-cli verify --model DIR (--local tp=T,pp=P | --plan F | --auto) [--steps N] [--prompt TEXT] [--dtype D]\n"
    "      Runs the placement and the whole model on one of its machines for N greedy steps (default 32) and says\n"
    "      whether the token ids agree and the largest logit difference; exits 1 when they differ. When no machine\n"
    "      holds the whole model, each tensor-parallel stage is compared with its layers on one machine.\n"
    "  together-cli keygen [--out FILE | --save]\n"
    "      Makes a new cluster key and prints it (14 groups of 4 letters and digits, typeable). --out writes it to\n"
    "      FILE (mode 0600); --save to this user's key file, which `run`, `workers` and `together-worker serve`\n"
    "      read when no --key-file is given. A worker asks for the key on its terminal the first time.\n"
    "  together-cli make-model --out DIR [--shape NAME] [--hidden N] [--intermediate N] [--layers N] [--heads N]\n"
    "                          [--kv-heads N] [--head-dim N] [--vocab N] [--arch NAME] [--dtype f32|bf16] [--tie]\n"
    "                          [--seed S] [--logit-scale X] [--max-pos N] [--format safetensors|gguf]\n"
    "                          [--type F32|F16|BF16|Q8_0|Q4_0|Q4_K]\n"
    "      Writes a random-weight model as real Hugging Face files (for tests and benchmarks): a named shape (default,\n"
    "      tiny, small, large-margin, accuracy, layer-overhead, tinyllama-1.1b, llama3-8b; default: default), with\n"
    "      any of its numbers replaced by the flags. --format gguf writes one GGUF file to --out instead, its\n"
    "      matrices in --type (default F16; rows that are not whole blocks fall back to Q8_0 or F16, as llama.cpp's do).\n";

// keygen: a new cluster key, printed, and kept in a file when asked.
int runKeygen(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"out"}, {"save", false}});
    if (a.has("out") && a.has("save"))
        throw Error("give --out FILE or --save, not both");
    const ClusterKey key = ClusterKey::generate();
    const std::string file = a.has("save") ? defaultKeyFile() : a.get("out");
    if (!file.empty())
        key.writeFile(file);
    std::printf("%s\n", key.text().c_str());
    std::fprintf(stderr,
                 "%s\nOn each worker machine, run `together-worker serve` and type this key when asked (it is stored "
                 "there, mode 0600),\nor copy the key file and run `together-worker serve --key-file FILE`. Key fingerprint: %s.\n",
                 file.empty() ? "This key is not saved: run again with --save (or --out FILE) to keep one."
                              : ("Wrote the key to " + file + " (mode 0600).").c_str(),
                 key.fingerprint().c_str());
    return 0;
}

using Command = std::function<int(const std::vector<std::string>&)>;

const std::map<std::string, Command>& commands()
{
    static const std::map<std::string, Command> all = {
        {"tokenize", runTokenize},
        {"detokenize", runDetokenize},
        {"chat-template", runChatTemplate},
        {"run", runCluster},
        {"predict", runPredict},
        {"verify", runVerify},
        {"bench", runBench},
        {"bench-cluster", runBench},
        {"keygen", runKeygen},
        {"models", runModels},
        {"workers", runWorkers},
        {"worker-log", runWorkerLog},
        {"make-model", runMakeModel},
    };
    return all;
}

} // namespace

int main(int argc, char** argv)
{
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::fputs(kUsage, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    const std::string cmd = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    routeGrpcLog({}); // failures reach the user as messages naming the worker, not as gRPC's own log lines
    const auto it = commands().find(cmd);
    if (it == commands().end()) {
        std::fprintf(stderr, "together-cli: unknown command '%s'\n%s", cmd.c_str(), kUsage);
        return 2;
    }
    try {
        return it->second(rest);
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "\ntogether-cli: error: %s\n", e.what());
        return runInterrupted() ? 130 : 1;
    }
}
