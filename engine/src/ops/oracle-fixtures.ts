/**
 * Test support for the ops oracle tests: a sparse source whose data runs stress the copy pipeline, and
 * qemu-img map helpers. Not used by the engine.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from "node:fs";
import { qemuOk, rng } from "../formats/qcow2/oracle-support.js";
import type { FormatName } from "../types.js";

const KiB = 1024;
const MiB = 1024 * KiB;
export const SOURCE_SIZE = 64 * MiB;

/**
 * Data runs (cluster-aligned, so every format represents them exactly) chosen to stress the pipeline:
 * runs straddling 2 MiB chunk boundaries, a long dense run of many chunks, single clusters, and runs
 * separated by holes shorter than a chunk — so many chunks of different sizes are in flight together.
 */
export const RUNS: Array<[number, number]> = [
  [0, 64 * KiB],
  [192 * KiB, 1 * MiB],
  [2 * MiB - 128 * KiB, 384 * KiB],
  [3 * MiB, 64 * KiB],
  [3 * MiB + 192 * KiB, 64 * KiB],
  [5 * MiB + 64 * KiB, 13 * MiB + 192 * KiB],
  [20 * MiB, 1 * MiB],
  [22 * MiB, 1 * MiB],
  [24 * MiB - 64 * KiB, 4 * MiB + 128 * KiB],
  [40 * MiB, 64 * KiB],
  [SOURCE_SIZE - 1 * MiB - 64 * KiB, 1 * MiB + 64 * KiB],
];

export function writeRawSource(path: string): void {
  const rand = rng(8);
  const fd = openSync(path, "w");
  try {
    ftruncateSync(fd, SOURCE_SIZE);
    for (const [offset, length] of RUNS) {
      const data = Buffer.alloc(length);
      for (let k = 0; k < length; k += 4) data.writeUInt32LE((rand() * 0x1_0000_0000) >>> 0, k);
      // Non-zero at the edges too, so zero detection keeps every cluster of the run.
      data[0] = 1;
      data[length - 1] = 1;
      writeSync(fd, data, 0, length, offset);
    }
  } finally {
    closeSync(fd);
  }
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  data: boolean;
  offset?: number;
}

export function qemuMap(path: string, format: FormatName): MapEntry[] {
  return JSON.parse(qemuOk("qemu-img", ["map", "--output=json", "-f", format, path])) as MapEntry[];
}

/** Merged [start, length] of the guest ranges holding data. */
export function dataRanges(entries: MapEntry[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const e of entries) {
    if (!e.data) continue;
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === e.start) last[1] += e.length;
    else out.push([e.start, e.length]);
  }
  return out;
}
