import { defineConfig } from "vitest/config";

// One runner for the whole workspace: unit tests beside the code in each package, end-to-end and
// oracle tests in test/. The JSON report feeds the "N passed, M failed" line printed by .ci/run.
export default defineConfig({
  test: {
    projects: ["engine", "server", "sdk", "cli", "test"],
    reporters: ["default", ["json", { outputFile: ".vitest-report.json" }]],
  },
});
