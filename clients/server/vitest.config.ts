import { defineConfig } from "vitest/config";

// Unit tests (test/*.test.ts) run in node against local http servers; the integration test
// (test/gateway.test.ts) starts a real roomcast node and redis-server and can take a while.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 20_000,
    hookTimeout: 60_000,
  },
});
