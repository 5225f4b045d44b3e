import { open } from "node:fs/promises";
import { beforeAll, describe, expect, it } from "vitest";
import { buildSeeds, fuzz, mutate, type Seed, withoutFileOpens } from "./fuzz.js";
import { requireQemuImg } from "./images.js";

/** reliability.md T7: 20 000 seeded mutation cases over qcow2 (v2, v3, extended L2, compressed, snapshot, overlay) and vmdk. */

let seeds: Seed[] = [];
beforeAll(() => {
  requireQemuImg();
  seeds = buildSeeds();
});

describe("mutation fuzzer", () => {
  it("mutations are reproducible from the case seed and never touch the seed image", () => {
    const seed = seeds[0];
    if (seed === undefined) throw new Error("no seeds");
    const before = Buffer.from(seed.bytes);
    const a = mutate(seed, 42);
    const b = mutate(seed, 42);
    expect(a.mutations).toEqual(b.mutations);
    expect(Buffer.from(a.bytes).equals(Buffer.from(b.bytes))).toBe(true);
    expect(Buffer.from(seed.bytes).equals(before)).toBe(true);
  });

  it("the no-file-open guard catches opens through named imports too", async () => {
    const seen = await withoutFileOpens(async (opened) => {
      await expect(open("/etc/hostname")).rejects.toThrow(/opened a file/);
      return [...opened];
    });
    expect(seen).toEqual(["/etc/hostname"]);
    await (await open("/etc/hostname")).close(); // restored afterwards
  });

  it("20 000 cases: only EngineErrors, each case within its budget, bounded memory, no file opened", async () => {
    const report = await fuzz(seeds, { cases: 20_000, baseSeed: 20_260_000 });
    expect(
      report.findings.map((f) => `${f.seed} case ${f.caseSeed} [${f.mutations.join("; ")}]: ${f.problem}`),
    ).toEqual([]);
    expect(report.cases).toBe(20_000);
    // Most mutants must still open, or the cases would only exercise header validation.
    expect(report.opened).toBeGreaterThan(report.cases / 3);
  }, 120_000);
});
