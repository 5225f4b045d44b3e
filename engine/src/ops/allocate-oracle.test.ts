import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openImage, qemuOk, requireQemu } from "../formats/qcow2/oracle-support.js";
import { allocateRange, flattenImage } from "./allocate.js";
import { dataRanges, qemuMap, RUNS, SOURCE_SIZE, writeRawSource } from "./oracle-fixtures.js";

const dir = join("/tmp", `vdisk-allocate-oracle-${process.pid}`);

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A qemu-made qcow2 base holding RUNS, and an empty qemu-made overlay on it. */
function makeChain(name: string): { base: string; overlay: string } {
  const raw = join(dir, `${name}.raw`);
  const base = join(dir, `${name}-base.qcow2`);
  const overlay = join(dir, `${name}-overlay.qcow2`);
  writeRawSource(raw);
  qemuOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, base]);
  qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay]);
  return { base, overlay };
}

function isMonotonic(values: number[]): boolean {
  return values.every((v, i) => i === 0 || v >= values[i - 1]);
}

describe("allocate with many chunks in flight (qemu-img oracle)", () => {
  const expected = RUNS.map(([o, l]) => [o, l]).sort((a, b) => a[0] - b[0]);

  it("flatten copies up exactly the base's data, keeps its holes, and drops the backing link", async () => {
    const { base, overlay } = makeChain("flatten");
    const backing = await openImage(base, true);
    const top = await openImage(overlay, false, backing);
    const progress: number[] = [];
    try {
      const result = await flattenImage(top, { onProgress: (done) => progress.push(done) });
      expect(result.copiedBytes).toBe(RUNS.reduce((sum, [, length]) => sum + length, 0));
    } finally {
      await top.close();
      await backing.close();
    }
    qemuOk("qemu-img", ["check", "-f", "qcow2", overlay]);
    qemuOk("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", base, overlay]);
    const map = qemuMap(overlay, "qcow2");
    expect(dataRanges(map)).toEqual(expected);
    expect(map.every((e) => !e.data || e.depth === 0)).toBe(true);
    expect(qemuOk("qemu-img", ["info", "--output=json", overlay])).not.toContain("backing-filename");
    expect(progress.at(-1)).toBe(SOURCE_SIZE);
    expect(isMonotonic(progress)).toBe(true);
  });

  it("full allocation makes every cluster the overlay's own without changing content", async () => {
    const { base, overlay } = makeChain("full");
    const backing = await openImage(base, true);
    const top = await openImage(overlay, false, backing);
    try {
      await allocateRange(top, { offset: 0, length: SOURCE_SIZE, mode: "full" });
    } finally {
      await top.close();
      await backing.close();
    }
    qemuOk("qemu-img", ["check", "-f", "qcow2", overlay]);
    qemuOk("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", base, overlay]);
    const map = qemuMap(overlay, "qcow2");
    expect(map.every((e) => e.depth === 0)).toBe(true);
    expect(dataRanges(map)).toEqual(expected);
  });
});
