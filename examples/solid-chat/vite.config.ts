import { resolve } from "node:path";
import { defineConfig } from "vite";
import solid from "vite-plugin-solid";

export default defineConfig({
  plugins: [solid()],
  // one copy of solid-js, even though @roomcast/solid is linked from ../../clients/solid
  resolve: { dedupe: ["solid-js"] },
  server: { port: 5173, host: "127.0.0.1" },
  preview: { port: 4173, host: "127.0.0.1" },
  build: {
    rollupOptions: {
      input: {
        main: resolve(import.meta.dirname, "index.html"),
        primitives: resolve(import.meta.dirname, "primitives.html"),
      },
    },
  },
});
