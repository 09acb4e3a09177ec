// SPDX-License-Identifier: MIT
// llama.cpp (through node-llama-cpp, CPU build) on a GGUF file, for tests/test_llama_cpp.cpp.
//   node llama-reference.mjs CACHE_DIR greedy FILE IDS_JSON N   -> {"ids": [...]}: N greedy tokens after the ids
//   node llama-reference.mjs CACHE_DIR forced FILE IDS_JSON FROM -> {"steps": [{"top", "margin", "logp"}]}: the ids
//       fed one by one; after each from index FROM on, the next token's most probable id, the log-probability gap
//       to the second, and its log-probability (from the whole vocabulary's probabilities)
//   node llama-reference.mjs CACHE_DIR tokenize FILE TEXTS_JSON  -> {"ids": [[...], ...]} with BOS as the file says
import {createRequire} from "node:module";
import {readFileSync} from "node:fs";

const [cache, mode, file, arg, extra] = process.argv.slice(2);
const require = createRequire(cache + "/package.json");
const {getLlama} = await import(require.resolve("node-llama-cpp"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: file, vocabOnly: mode === "tokenize"});
const input = JSON.parse(readFileSync(arg, "utf8"));
// A pipe's writes are asynchronous: exit only once the output is out.
const done = (value) => process.stdout.write(JSON.stringify(value) + "\n", () => process.exit(0));

async function run() {
    if (mode === "tokenize")
        return {ids: input.map(t => Array.from(model.tokenize(t, false)))};
    const context = await model.createContext({contextSize: Math.min(model.trainContextSize, 1024), threads: 1, batchSize: 512});
    const seq = context.getSequence();
    if (mode === "greedy") {
        const out = [];
        for await (const t of seq.evaluate(input, {temperature: 0, yieldEogToken: true})) {
            out.push(t);
            if (out.length >= Number(extra))
                break;
        }
        return {ids: out};
    }
    const from = Number(extra);
    const items = input.map((t, i) => i >= from ? [t, {generateNext: {probabilities: true, options: {temperature: 0}}}] : t);
    const results = await seq.controlledEvaluate(items);
    const steps = [];
    for (let i = from; i < input.length; ++i) {
        const sorted = [...results[i].next.probabilities.entries()]; // most probable first
        const [top, p] = sorted[0];
        const second = sorted.length > 1 && sorted[1][1] > 0 ? Math.log(sorted[1][1]) : -1e30;
        steps.push({top, margin: Math.log(p) - second, logp: Math.log(p)});
    }
    return {steps};
}
done(await run());
