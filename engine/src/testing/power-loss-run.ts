import { EngineError } from "../errors.js";
import { createMemoryFile } from "../host/memory-file.js";
import { createImageBytes, openOn, qcow2Variant, qemuCheck, type Variant, vmdkVariant } from "./images.js";
import { type CrashMode, createPowerLossFile } from "./power-loss-file.js";
import { below, rng } from "./random.js";
import { makeWorkload, runWorkload, SectorOracle } from "./workload.js";

/**
 * One simulated power loss (reliability.md T2): a seeded workload on an image whose file buffers every
 * change since the last flush, power cut after a random number of writes/flushes, the crash keeping all,
 * none or a torn random subset of the pending changes; then "nothing lost": the image opens read-write
 * (a dirty lazy-refcount image is repaired on the way), our check and qemu-img check find no corruption
 * (leaks allowed), and every write acknowledged by a completed flush reads back.
 */

export const POWER_LOSS_VARIANTS: readonly Variant[] = [
  qcow2Variant("qcow2-v3", { size: 4 << 20, clusterSize: 4096, version: 3 }),
  qcow2Variant("qcow2-v2", { size: 4 << 20, clusterSize: 4096, version: 2 }),
  qcow2Variant("qcow2-v3-lazy", { size: 4 << 20, clusterSize: 4096, version: 3, lazy: true }),
  // 512-byte clusters with 64-bit refcounts: refcount blocks and table growth happen within a short workload.
  qcow2Variant("qcow2-v3-512", { size: 4 << 20, clusterSize: 512, version: 3, refcountBits: 64 }),
  vmdkVariant("vmdk-sparse", { size: 4 << 20, grainSize: 4096 }),
];

export interface IterationResult {
  variant: string;
  seed: number;
  mode: CrashMode;
  cutAfter: number;
  opsCompleted: number;
  problems: string[];
}

const created = new Map<string, Uint8Array>();
const callsPerRun = new Map<string, number>();

async function baseBytes(v: Variant): Promise<Uint8Array> {
  let bytes = created.get(v.name);
  if (!bytes) {
    bytes = await createImageBytes(v);
    created.set(v.name, bytes);
  }
  return bytes;
}

function workload(v: Variant, seed: number) {
  return makeWorkload(seed, {
    size: v.create.size,
    clusterSize: v.create.clusterSize ?? 65536,
    ops: 30,
    tableCoverage: v.tableCoverage,
    discard: true,
    zero: true,
    growBy: v.format === "qcow2" ? 1 << 20 : 0,
  });
}

/** Typical number of mutating calls of a whole workload, so power cuts spread over all of it. */
async function typicalCalls(v: Variant): Promise<number> {
  let calls = callsPerRun.get(v.name);
  if (calls === undefined) {
    const file = createPowerLossFile({ data: await baseBytes(v) });
    const img = await openOn(v, file);
    await runWorkload(img, workload(v, 1), new SectorOracle(v.create.size), { stopOnError: true });
    calls = Math.max(1, file.mutatingCalls);
    callsPerRun.set(v.name, calls);
  }
  return calls;
}

export async function powerLossIteration(
  v: Variant,
  seed: number,
  opts: { qemu: boolean },
): Promise<IterationResult> {
  const random = rng(seed ^ 0x5eed);
  const mode = (["keep", "drop", "torn"] as const)[seed % 3] ?? "torn";
  const cutAfter = below(random, Math.ceil((await typicalCalls(v)) * 1.1) + 1);
  const file = createPowerLossFile({ data: await baseBytes(v) });
  const img = await openOn(v, file);
  const oracle = new SectorOracle(v.create.size);
  file.cutPowerAfter(cutAfter);
  const run = await runWorkload(img, workload(v, seed), oracle, { stopOnError: true });
  const result: IterationResult = {
    variant: v.name,
    seed,
    mode,
    cutAfter,
    opsCompleted: run.completed,
    problems: [],
  };
  for (const e of run.errors) {
    if (!file.powerLost)
      result.problems.push(`op ${e.op} (${e.kind}) failed before the power cut: ${e.error.message}`);
  }
  const bytes = await file.crash({ mode, seed });

  const dirtyQcow2 = v.format === "qcow2" && ((bytes[79] ?? 0) & 1) === 1;
  if (opts.qemu && !dirtyQcow2) {
    const q = qemuCheck(bytes, v.format);
    if (q.code !== 0 && q.code !== 3)
      result.problems.push(`qemu-img check exit ${q.code}: ${q.output.slice(0, 800)}`);
  }
  const after = createMemoryFile({ data: bytes });
  try {
    const reopened = await openOn(v, after);
    const check = await reopened.check({ repair: "none" });
    if (check.corruptions > 0) {
      result.problems.push(
        `check: ${check.corruptions} corruptions: ${check.messages.slice(0, 5).join("; ")}`,
      );
    }
    result.problems.push(...(await oracle.verify(reopened)));
    await reopened.close();
  } catch (err) {
    if (!(err instanceof EngineError)) throw err;
    result.problems.push(`reopen/check/read failed: ${err.code} ${err.reason}: ${err.message}`);
  }
  if (opts.qemu && dirtyQcow2 && result.problems.length === 0) {
    const q = qemuCheck(after.contents(), v.format);
    if (q.code !== 0 && q.code !== 3) {
      result.problems.push(`qemu-img check after repair exit ${q.code}: ${q.output.slice(0, 800)}`);
    }
  }
  return result;
}
