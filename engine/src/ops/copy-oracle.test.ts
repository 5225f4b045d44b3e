import { mkdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../block-image.js";
import { qemuOk, requireQemu } from "../formats/qcow2/oracle-support.js";
import { driverFor } from "../formats/registry.js";
import { openHostFile } from "../host/node-file.js";
import type { FormatName } from "../types.js";
import { copyImage } from "./copy.js";
import { dataRanges, qemuMap, RUNS, SOURCE_SIZE, writeRawSource } from "./oracle-fixtures.js";

const SIZE = SOURCE_SIZE;
const dir = join("/tmp", `vdisk-copy-oracle-${process.pid}`);

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function open(path: string, format: FormatName, readOnly: boolean): Promise<BlockImage> {
  return driverFor(format).open(await openHostFile(path, { readOnly }), { readOnly });
}

async function copyFile(
  src: string,
  from: FormatName,
  dst: string,
  to: FormatName,
  maxInFlight: number,
  directWrites = false,
): Promise<{ progress: number[]; mostReading: number }> {
  const source = await open(src, from, true);
  const created = await openHostFile(dst, { readOnly: false, create: "truncate" });
  await driverFor(to).create(created, { size: source.virtualSize, prealloc: "off" });
  await created.close();
  const target = await driverFor(to).open(await openHostFile(dst, { readOnly: false, directWrites }), {
    readOnly: false,
  });
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

describe("copyImage into a target written with O_DIRECT (directWrites, as CloneVolume FULL does)", () => {
  const expected = RUNS.map(([o, l]) => [o, l]).sort((a, b) => a[0] - b[0]);
  for (const { from, to } of [
    { from: "qcow2", to: "raw" },
    { from: "raw", to: "qcow2" },
  ] as Array<{ from: FormatName; to: FormatName }>) {
    it(`${from} → ${to}: identical to qemu-img convert, and as sparse`, async () => {
      const rawSource = join(dir, `direct-source-${from}-${to}.raw`);
      writeRawSource(rawSource);
      let source = rawSource;
      if (from === "qcow2") {
        source = join(dir, `direct-source-${from}-${to}.qcow2`);
        qemuOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", rawSource, source]);
      }
      const target = join(dir, `direct-target-${from}-${to}.${to}`);
      await copyFile(source, from, target, to, 8, true);
      const peer = join(dir, `direct-peer-${from}-${to}.${to}`);
      qemuOk("qemu-img", ["convert", "-f", from, "-O", to, source, peer]);

      qemuOk("qemu-img", ["compare", "-f", to, "-F", to, peer, target]);
      if (to === "qcow2") qemuOk("qemu-img", ["check", "-f", "qcow2", target]);
      expect(dataRanges(qemuMap(target, to))).toEqual(expected);
      if (to === "raw") {
        // Holes stay holes: the file occupies what qemu-img's output does, give or take the file
        // system's extent-tree blocks (st_blocks counts them, and their number follows fragmentation).
        const allocated = statSync(target).blocks * 512;
        expect(Math.abs(allocated - statSync(peer).blocks * 512)).toBeLessThanOrEqual(64 * 1024);
        expect(allocated).toBeLessThan(SIZE / 2);
      }
    });
  }
});
