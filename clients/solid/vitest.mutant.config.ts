// vitest config for test/mutants.mjs: the same tests, with src/client.ts replaced by the file
// named in ROOMCAST_MUTANT (a copy of it with one safeguard taken out).
import { mergeConfig, type Plugin } from "vitest/config";
import base from "./vitest.config";

const mutant = process.env.ROOMCAST_MUTANT;

const swap: Plugin = {
  name: "roomcast-mutant",
  enforce: "pre",
  async resolveId(source, importer, options) {
    if (!mutant || !/(^|\/)client(\.js|\.ts)?$/.test(source)) return null;
    const resolved = await this.resolve(source, importer, { ...options, skipSelf: true });
    return resolved && resolved.id.endsWith("/src/client.ts") ? mutant : null;
  },
};

export default mergeConfig(base, { plugins: [swap] });
