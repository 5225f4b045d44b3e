import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { flushImage } from "../core/index.js";
import type { EngineErrorCode } from "../errors.js";
import { createMemoryFile } from "../host/memory-file.js";
import {
  createImageBytes,
  openOn,
  qcow2Variant,
  qemuCheck,
  removeScratch,
  requireQemuImg,
  type Variant,
} from "./images.js";
import { makeWorkload, type Op, runWorkload, SectorOracle } from "./workload.js";

/**
 * reliability.md T4 (iotest 026): every named qcow2 write point × {EIO, ENOSPC} × {once, persistent}.
 * The operation that hits the fault fails with the mapped code; the image left behind (reopened from the
 * memory file's bytes) has at most leaks — by our check and by qemu-img check — and every acknowledged
 * byte reads back. Persistent faults are then cleared and the image flushed and verified the same way.
 */

const QCOW2_POINTS = [
  "data_write",
  "cow_write",
  "l2_alloc",
  "l2_update",
  "l1_update",
  "refblock_alloc",
  "refblock_update",
  "reftable_update",
  "reftable_grow",
  "l1_grow",
  "header_update",
  "flush",
] as const;

// 512-byte clusters and 64-bit refcounts make every structure small: one refcount block covers 32 KiB
// and the first refcount table 2 MiB, so a short workload reaches table growth too.
const v3 = qcow2Variant("v3", { size: 8 << 20, clusterSize: 512, version: 3, refcountBits: 64 });
const v2 = qcow2Variant("v2", { size: 8 << 20, clusterSize: 512, version: 2 });
const lazy = qcow2Variant("v3-lazy", {
  size: 8 << 20,
  clusterSize: 512,
  version: 3,
  lazy: true,
  refcountBits: 64,
});
// Copy-on-write needs writes smaller than a cluster (the workload writes whole 512-byte sectors).
const cowVariants: Record<string, Variant> = {
  v3: qcow2Variant("v3-4k", { size: 8 << 20, clusterSize: 4096, version: 3 }),
  v2: qcow2Variant("v2-4k", { size: 8 << 20, clusterSize: 4096, version: 2 }),
  "v3-lazy": qcow2Variant("v3-lazy-4k", { size: 8 << 20, clusterSize: 4096, version: 3, lazy: true }),
};

function workloadFor(v: Variant, seed: number, point: string): Op[] {
  const ops = makeWorkload(seed, {
    size: v.create.size,
    clusterSize: v.create.clusterSize ?? 65536,
    ops: 40,
    tableCoverage: v.tableCoverage,
    discard: true,
    zero: true,
    growBy: 1 << 20,
  });
  // One large write early on creates refcount blocks; for table growth it must push the host file past
  // what the first refcount table covers (2 MiB with 64-bit refcounts, 8 MiB for v2's 16-bit ones).
  const growth = point === "reftable_grow";
  const bulk =
    !growth || v.create.clusterSize !== 512
      ? 256 << 10
      : v.create.qcow2?.compat === "0.10"
        ? 9 << 20
        : 5 << 19;
  ops.splice(
    3,
    0,
    { kind: "write", offset: 0, length: Math.min(bulk, v.create.size), tag: 201 },
    { kind: "flush" },
    // Changes entries of an L2 table already on disk (an update, not an allocation).
    { kind: "discard", offset: 4096, length: 4096 },
  );
  return ops;
}

const created = new Map<string, Uint8Array>();
const pointHits = new Map<string, Record<string, number>>();

async function baseBytes(v: Variant): Promise<Uint8Array> {
  let bytes = created.get(v.name);
  if (!bytes) {
    bytes = await createImageBytes(v);
    created.set(v.name, bytes);
  }
  return bytes;
}

/** How often the fault-free workload reaches each write point (faults then land mid-workload). */
async function hitsFor(v: Variant, seed: number, point: string): Promise<Record<string, number>> {
  const key = `${v.name}/${seed}/${point === "reftable_grow"}`;
  let hits = pointHits.get(key);
  if (!hits) {
    const file = createMemoryFile({ data: await baseBytes(v) });
    const img = await openOn(v, file);
    const run = await runWorkload(img, workloadFor(v, seed, point), new SectorOracle(v.create.size), {
      stopOnError: true,
    });
    expect(run.errors).toEqual([]);
    hits = { ...file.stats.points }; // before close: the faulty run does not close before its checks
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
  base: Variant,
  point: string,
  error: "EIO" | "ENOSPC",
  persistent: boolean,
  seed: number,
) {
  const v = point === "cow_write" ? (cowVariants[base.name] ?? base) : base;
  const hits = hitsOf(await hitsFor(v, seed, point), point);
  expect(hits, `workload never reaches write point ${point}`).toBeGreaterThan(0);
  const nth = 1 + ((seed * 7919 + point.length * 31) % hits);
  const file = createMemoryFile({ data: await baseBytes(v) });
  const img = await openOn(v, file);
  const oracle = new SectorOracle(v.create.size);
  file.injectFault({ op: "any", point, nth, error, persistent });
  const run = await runWorkload(img, workloadFor(v, seed, point), oracle, { stopOnError: false });

  expect(file.stats.faultsFired).toBeGreaterThan(0);
  expect(run.errors.length).toBeGreaterThan(0);
  // A failed fdatasync is FSYNC_FAILED whatever the errno (the handle is dead: reliability.md b.14).
  const expected = point === "flush" ? "FSYNC_FAILED" : EXPECTED[error];
  expect(run.errors[0]?.error.code, run.errors[0]?.error.message).toBe(expected);

  if (persistent) file.clearFaults();
  try {
    await flushImage(img);
    oracle.flushed(img.virtualSize);
  } catch {
    // A dead handle (failed fsync) or an image that stopped writing: what is on disk must still be sound.
  }
  try {
    await img.close();
  } catch {
    // same
  }

  const bytes = file.contents();
  const dirty = ((bytes[79] ?? 0) & 1) === 1; // incompatible_features bit 0 (low byte of the BE field at 72)
  if (!dirty) {
    const q = qemuCheck(bytes, "qcow2");
    expect([0, 3], q.output).toContain(q.code);
  }
  const reopenedFile = createMemoryFile({ data: bytes });
  const reopened = await openOn(v, reopenedFile); // a dirty lazy-refcount image is repaired here
  const check = await reopened.check({ repair: "none" });
  expect(check.corruptions, check.messages.join("\n")).toBe(0);
  expect(await oracle.verify(reopened)).toEqual([]);
  await reopened.close();
  if (dirty) {
    const q = qemuCheck(reopenedFile.contents(), "qcow2");
    expect([0, 3], q.output).toContain(q.code);
  }
}

beforeAll(() => requireQemuImg());
afterAll(() => removeScratch());

describe("qcow2 fault matrix (named write points × EIO/ENOSPC × once/persistent)", () => {
  for (const point of QCOW2_POINTS) {
    it(`v3: ${point}`, async () => {
      let seed = 11;
      for (const error of ["EIO", "ENOSPC"] as const)
        for (const persistent of [false, true]) await runCase(v3, point, error, persistent, seed++);
    });
  }
  for (const point of QCOW2_POINTS) {
    if (point === "header_update") continue; // v2 without lazy refcounts only rewrites the size on grow: covered in v3
    it(`v2: ${point}`, async () => {
      await runCase(v2, point, "EIO", false, 5);
      await runCase(v2, point, "ENOSPC", true, 6);
    });
  }
  for (const point of QCOW2_POINTS) {
    it(`v3 lazy refcounts: ${point}`, async () => {
      await runCase(lazy, point, "ENOSPC", false, 7);
      await runCase(lazy, point, "EIO", true, 8);
    });
  }
});
