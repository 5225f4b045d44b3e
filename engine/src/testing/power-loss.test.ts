import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { removeScratch, requireQemuImg } from "./images.js";
import { POWER_LOSS_VARIANTS, powerLossIteration } from "./power-loss-run.js";

/** reliability.md T2: 300 simulated power losses across qcow2 v2/v3/lazy refcounts and vmdk monolithicSparse. */

const ITERATIONS_PER_VARIANT = 60;

beforeAll(() => requireQemuImg());
afterAll(() => removeScratch());

describe("simulated power loss (keep / drop / torn pending writes)", () => {
  for (const v of POWER_LOSS_VARIANTS) {
    it(`${v.name}: nothing acknowledged is lost, no corruption`, async () => {
      const failures: string[] = [];
      for (let i = 0; i < ITERATIONS_PER_VARIANT; i++) {
        // qemu-img check on every third case keeps the test fast; our check runs on all of them.
        const r = await powerLossIteration(v, 1000 + i, { qemu: i % 3 === 0 });
        if (r.problems.length > 0) {
          failures.push(`seed ${r.seed} mode ${r.mode} cut after ${r.cutAfter}: ${r.problems.join(" | ")}`);
        }
      }
      expect(failures).toEqual([]);
    }, 60_000);
  }
});
