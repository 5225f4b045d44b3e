import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { flushImage } from "../core/index.js";
import type { EngineErrorCode } from "../errors.js";
import { createMemoryFile } from "../host/memory-file.js";
import {
  createImageBytes,
  openOn,
  qemuCheck,
  removeScratch,
  requireQemuImg,
  type Variant,
  vmdkVariant,
} from "./images.js";
import { makeWorkload, type Op, runWorkload, SectorOracle } from "./workload.js";

/**
 * reliability.md T4 for monolithicSparse vmdk: every named write point × {EIO, ENOSPC} × {once,
 * persistent}. The operation that hits the fault fails with the mapped code; the workload goes on (a
 * once-fault clears itself, a persistent one keeps failing until cleared), so stale in-memory tables
 * would show; the image left behind passes our check and `qemu-img check`, and every acknowledged byte
 * reads back, both through the image that saw the fault and after reopening its bytes.
 */

const VMDK_POINTS = [
  "descriptor_update",
  "grain_write",
  "grain_write.in_place",
  "gt_update",
  "gt_update.redundant",
  "flush.grain_barrier",
  "flush",
] as const;

// Small grains (4 KiB) make partial-grain writes, in-place rewrites and several grain tables (2 MiB each) cheap.
const small = vmdkVariant("vmdk-4k", { size: 8 << 20, grainSize: 4096 });
const standard = vmdkVariant("vmdk-64k", { size: 8 << 20, grainSize: 65536 });

function workloadFor(v: Variant, seed: number): Op[] {
  const ops = makeWorkload(seed, {
    size: v.create.size,
    clusterSize: v.create.clusterSize ?? 65536,
    ops: 40,
    tableCoverage: v.tableCoverage,
    discard: true,
    zero: true,
    growBy: 0, // vmdk images cannot be resized
  });
  // Allocated grains early on, so later writes and zero writes land on them (in place, zeroed-grain entries).
  ops.splice(2, 0, { kind: "write", offset: 0, length: 256 << 10, tag: 201 }, { kind: "flush" });
  return ops;
}

const created = new Map<string, Uint8Array>();
async function baseBytes(v: Variant): Promise<Uint8Array> {
  let bytes = created.get(v.name);
  if (!bytes) {
    bytes = await createImageBytes(v);
    created.set(v.name, bytes);
  }
  return bytes;
}

const pointHits = new Map<string, Record<string, number>>();
/** How often the fault-free workload reaches each write point, so the fault lands mid-workload. */
async function hitsFor(v: Variant, seed: number): Promise<Record<string, number>> {
  const key = `${v.name}/${seed}`;
  let hits = pointHits.get(key);
  if (!hits) {
    const file = createMemoryFile({ data: await baseBytes(v) });
    const img = await openOn(v, file);
    const run = await runWorkload(img, workloadFor(v, seed), new SectorOracle(v.create.size), {
      stopOnError: true,
    });
    expect(run.errors.map((e) => e.error.message)).toEqual([]);
    hits = { ...file.stats.points };
    await img.close();
    pointHits.set(key, hits);
  }
  return hits;
}

function hitsOf(hits: Record<string, number>, point: string): number {
  let n = 0;
  for (const [name, count] of Object.entries(hits))
    if (name === point || name.startsWith(`${point}.`)) n += count;
  return n;
}

const EXPECTED: Record<"EIO" | "ENOSPC", EngineErrorCode> = { EIO: "IO", ENOSPC: "NO_SPACE" };

async function runCase(
  v: Variant,
  point: string,
  error: "EIO" | "ENOSPC",
  persistent: boolean,
  seed: number,
) {
  const hits = hitsOf(await hitsFor(v, seed), point);
  expect(hits, `workload never reaches write point ${point}`).toBeGreaterThan(0);
  const nth = 1 + ((seed * 7919 + point.length * 31) % hits);
  const file = createMemoryFile({ data: await baseBytes(v) });
  const img = await openOn(v, file);
  const oracle = new SectorOracle(v.create.size);
  file.injectFault({ op: "any", point, nth, error, persistent });
  const run = await runWorkload(img, workloadFor(v, seed), oracle, { stopOnError: false });

  const where = `${v.name} ${point} ${error} ${persistent ? "persistent" : "once"} (nth ${nth})`;
  expect(file.stats.faultsFired, where).toBeGreaterThan(0);
  expect(run.errors.length, where).toBeGreaterThan(0);
  // A failed fdatasync is FSYNC_FAILED whatever the errno (the handle is dead: reliability.md b.14).
  const expected = point.startsWith("flush") ? "FSYNC_FAILED" : EXPECTED[error];
  expect(run.errors[0]?.error.code, `${where}: ${run.errors[0]?.error.message}`).toBe(expected);

  if (persistent) file.clearFaults();
  const handleAlive = !point.startsWith("flush");
  if (handleAlive) {
    // Once the fault is gone the same image serves again, and its view agrees with the oracle.
    await flushImage(img);
    oracle.flushed(img.virtualSize);
    expect(await oracle.verify(img), where).toEqual([]);
  }
  await img.close().catch(() => {}); // a dead handle can't flush on close; what is on disk must still be sound

  const bytes = file.contents();
  const q = qemuCheck(bytes, "vmdk");
  expect([0, 3], `${where}\n${q.output}`).toContain(q.code);
  const reopened = await openOn(v, createMemoryFile({ data: bytes }));
  const check = await reopened.check({ repair: "none" });
  expect(check.corruptions, `${where}\n${check.messages.join("\n")}`).toBe(0);
  expect(await oracle.verify(reopened), where).toEqual([]);
  await reopened.close();
}

beforeAll(() => requireQemuImg());
afterAll(() => removeScratch());

describe("vmdk fault matrix (named write points × EIO/ENOSPC × once/persistent)", () => {
  for (const point of VMDK_POINTS) {
    it(`4 KiB grains: ${point}`, async () => {
      let seed = 21;
      for (const error of ["EIO", "ENOSPC"] as const)
        for (const persistent of [false, true]) await runCase(small, point, error, persistent, seed++);
    });
    it(`64 KiB grains: ${point}`, async () => {
      await runCase(standard, point, "EIO", true, 31);
      await runCase(standard, point, "ENOSPC", false, 32);
    });
  }
});
