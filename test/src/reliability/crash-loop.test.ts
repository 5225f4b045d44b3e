import type { ChildProcess } from "node:child_process";
import { afterAll, describe, expect, it } from "vitest";
import { CRASH_FORMATS, type CrashFormat, runCrashLoop } from "./crash-loop/loop.js";

/**
 * Issue 7: the kill -9 crash loop (reliability.md T1) in CI — 50 kills per format, 200 in all, each kill
 * landing on every volume of its server at once (qcow2: three cluster sizes plus an overlay over a base).
 * After every kill "nothing lost" (§c) must hold: volumes READY with an allowed capacity, every sector
 * reads its acknowledged content or one in-flight write's, qemu-img check and CheckVolume find no
 * corruption, lazy-refcount images left dirty are repaired on reopen, no temp file, every job terminal.
 * Fixed seeds, so a failure names a reproducible schedule (kill timing still varies with the machine);
 * `npm run crash-loop` runs the same loop for as long as you like.
 */
const KILLS_PER_FORMAT = 50;
const SEEDS: Record<CrashFormat, number> = {
  raw: 7001,
  "qcow2-v2": 7002,
  "qcow2-v3": 7003,
  "qcow2-v3-lazy": 7004,
};

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

// Two loops at a time: restarts are CPU-bound while the workload and checks mostly wait, so two keep both
// cores busy; more would only stretch every restart.
let running = 0;
const waiting: (() => void)[] = [];
async function slot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= 2) await new Promise<void>((resolve) => waiting.push(resolve));
  running++;
  try {
    return await work();
  } finally {
    running--;
    waiting.shift()?.();
  }
}

describe.concurrent("kill -9 crash loop", () => {
  for (const format of CRASH_FORMATS) {
    it(`${format}: ${KILLS_PER_FORMAT} kills, nothing lost`, async () => {
      const report = await slot(() =>
        runCrashLoop({
          format,
          seed: SEEDS[format],
          iterations: KILLS_PER_FORMAT,
          track: (child) => children.push(child),
        }),
      );
      console.log(
        `crash loop ${format} seed ${report.seed}: ${report.kills} kills, ${report.ops} ops, ${report.jobs} jobs, ` +
          `${report.ambiguousOps} ops in flight at kills, ${report.dirtyReopens} dirty reopens, ${report.leaks} leaks; ` +
          `ms/iteration ${report.ms.iteration} (restart ${report.ms.restart}, workload ${report.ms.workload}, verify ${report.ms.verify})`,
      );
      expect(report.kills).toBe(KILLS_PER_FORMAT);
      expect(report.ops).toBeGreaterThan(KILLS_PER_FORMAT);
      // The kills must land on unfinished work, or the loop proves nothing about crashes.
      expect(report.ambiguousOps).toBeGreaterThan(KILLS_PER_FORMAT / 4);
      if (format === "qcow2-v3-lazy") expect(report.dirtyReopens).toBeGreaterThan(0);
    }, 900_000);
  }
});
