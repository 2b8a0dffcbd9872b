import { defineConfig } from "vitest/config";

// solid-js's "browser" build is the reactive one; its node build is for server rendering and
// never runs effects. Tests run in node, so ask for the browser build explicitly.
const conditions = ["browser", "development", "module", "import", "default"];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: conditions } },
  test: {
    include: ["test/**/*.test.ts"],
    server: { deps: { inline: [/solid-js/] } },
  },
});
