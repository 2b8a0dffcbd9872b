import { solidStart } from "@solidjs/start/config";
import { nitro } from "nitro/vite";
import { defineConfig } from "vite";

// SolidStart v2: the app is a Vite plugin; Nitro makes the production server
// (`vite build` → .output/server/index.mjs, started with `node .output/server/index.mjs`,
// listening on PORT / HOST).
export default defineConfig({
  plugins: [solidStart(), nitro()],
  // one copy of solid-js, though @roomcast/solid is linked from ../../clients/solid
  resolve: { dedupe: ["solid-js"] },
  nitro: { preset: "node_server" },
});
