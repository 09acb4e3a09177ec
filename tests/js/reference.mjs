// SPDX-License-Identifier: MIT
// Prints, as JSON, what Hugging Face's JS implementations make of a corpus: token ids (with and without
// special tokens), decodings, and rendered chat prompts. The C++ tests compare against this output.
// usage: node reference.mjs CACHE_DIR MODEL_DIR CORPUS.json
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [cache, modelDir, corpusFile] = process.argv.slice(2);
const load = async (pkg, file) => import(pathToFileURL(path.join(cache, pkg, "package", file)).href);
const { Tokenizer } = await load("huggingface-tokenizers", "dist/tokenizers.mjs");
const { Template } = await load("huggingface-jinja", "dist/index.js");

const tokenizerJson = JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer_config.json"), "utf8"));
const tok = new Tokenizer(tokenizerJson, tokenizerConfig);
const corpus = JSON.parse(fs.readFileSync(corpusFile, "utf8"));

const tokenOf = (t) => (t == null ? "" : typeof t === "string" ? t : t.content ?? "");
const out = { texts: [], chats: [] };
for (const text of corpus.texts) {
  const withSpecial = tok.encode(text).ids;
  const plain = tok.encode(text, { add_special_tokens: false }).ids;
  const decoded = plain.length ? tok.decode(plain, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : "";
  out.texts.push({ text, ids: withSpecial, ids_plain: plain, decoded });
}
if (tokenizerConfig.chat_template) {
  const template = new Template(tokenizerConfig.chat_template);
  for (const messages of corpus.chats) {
    const rendered = template.render({
      messages,
      add_generation_prompt: true,
      bos_token: tokenOf(tokenizerConfig.bos_token),
      eos_token: tokenOf(tokenizerConfig.eos_token),
    });
    const ids = tok.encode(rendered, { add_special_tokens: false }).ids;
    out.chats.push({ messages, rendered, ids });
  }
}
process.stdout.write(JSON.stringify(out));
