import { closeSync, ftruncateSync, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../block-image.js";
import type { FormatName } from "../types.js";
import { driverFor } from "../formats/registry.js";
import { qemuOk, requireQemu, rng } from "../formats/qcow2/oracle-support.js";
import { openHostFile } from "../host/node-file.js";
import { copyImage } from "./copy.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;
const dir = join("/tmp", `vdisk-copy-oracle-${process.pid}`);

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Data runs (cluster-aligned, so every format represents them exactly) chosen to stress the pipeline:
 * runs straddling 2 MiB chunk boundaries, a long dense run of many chunks, single clusters, and runs
 * separated by holes shorter than a chunk — so many chunks of different sizes are in flight together.
 */
const RUNS: Array<[number, number]> = [
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
  [SIZE - 1 * MiB - 64 * KiB, 1 * MiB + 64 * KiB],
];

function writeRawSource(path: string): void {
  const rand = rng(8);
  const fd = openSync(path, "w");
  try {
    ftruncateSync(fd, SIZE);
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

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  offset?: number;
}

function qemuMap(path: string, format: FormatName): MapEntry[] {
  return JSON.parse(qemuOk("qemu-img", ["map", "--output=json", "-f", format, path])) as MapEntry[];
}

/** Merged [start, length] of the guest ranges holding data. */
function dataRanges(entries: MapEntry[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const e of entries) {
    if (!e.data) continue;
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === e.start) last[1] += e.length;
    else out.push([e.start, e.length]);
  }
  return out;
}

async function open(path: string, format: FormatName, readOnly: boolean): Promise<BlockImage> {
  return driverFor(format).open(await openHostFile(path, { readOnly }), { readOnly });
}

async function copyFile(
  src: string,
  from: FormatName,
  dst: string,
  to: FormatName,
  maxInFlight: number,
): Promise<{ progress: number[]; mostReading: number }> {
  const source = await open(src, from, true);
  const created = await openHostFile(dst, { readOnly: false, create: "truncate" });
  await driverFor(to).create(created, { size: source.virtualSize, prealloc: "off" });
  await created.close();
  const target = await open(dst, to, false);
  const progress: number[] = [];
  // Count overlapping source reads: the point of the test is that chunks really are in flight together.
  let reading = 0;
  let mostReading = 0;
  const read = source.read.bind(source);
  source.read = async (offset, into, opts) => {
    mostReading = Math.max(mostReading, ++reading);
    try {
      await read(offset, into, opts);
    } finally {
      reading--;
    }
  };
  try {
    await copyImage(source, target, { maxInFlight, onProgress: (done) => progress.push(done) });
  } finally {
    await target.close();
    await source.close();
  }
  return { progress, mostReading };
}

describe("copyImage with many chunks in flight (qemu-img oracle)", () => {
  const expected = RUNS.map(([o, l]) => [o, l]).sort((a, b) => a[0] - b[0]);

  const cases: Array<{ from: FormatName; to: FormatName }> = [
    { from: "raw", to: "qcow2" },
    { from: "qcow2", to: "raw" },
    { from: "qcow2", to: "qcow2" },
  ];
  for (const { from, to } of cases) {
    it(`${from} → ${to}: an exact copy with the source's sparseness`, async () => {
      const rawSource = join(dir, `source-${from}-${to}.raw`);
      writeRawSource(rawSource);
      let source = rawSource;
      if (from === "qcow2") {
        source = join(dir, `source-${from}-${to}.qcow2`);
        qemuOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", rawSource, source]);
      }
      expect(dataRanges(qemuMap(source, from))).toEqual(expected);

      const target = join(dir, `target-${from}-${to}.${to}`);
      const { progress, mostReading } = await copyFile(source, from, target, to, 16);
      expect(mostReading).toBeGreaterThan(1);

      qemuOk("qemu-img", ["compare", "-f", from, "-F", to, source, target]);
      if (to === "qcow2") qemuOk("qemu-img", ["check", "-f", "qcow2", target]);
      const map = qemuMap(target, to);
      expect(dataRanges(map)).toEqual(expected);
      if (to === "qcow2") {
        // Writes reach the target in guest order, so its clusters are laid out sequentially.
        const hostOffsets = map.filter((e) => e.data).map((e) => e.offset ?? -1);
        expect(hostOffsets).toEqual([...hostOffsets].sort((a, b) => a - b));
      }
      expect(progress.at(-1)).toBe(SIZE);
      expect(progress).toEqual([...progress].sort((a, b) => a - b));
    });
  }
});
