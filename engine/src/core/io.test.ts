import { describe, expect, it } from "vitest";
import { discardAt, flushImage, readAt, truncateImage, writeAt, writeZeroesAt } from "./io.js";
import { ClusterLayer } from "./testing/cluster-layer.js";
import { findZeroRuns, isAllZero } from "./zero-buffer.js";

const C = 4096;

function image(
  clusters = 64,
  opts: { zeroUnsupported?: boolean; maxTransfer?: number; readOnly?: boolean } = {},
) {
  return new ClusterLayer({
    clusterSize: C,
    clusters: new Array(clusters).fill("unallocated"),
    zeroUnsupported: opts.zeroUnsupported ?? false,
    readOnly: opts.readOnly ?? false,
    limits: { maxTransfer: opts.maxTransfer ?? 16 * C },
  });
}

function pattern(length: number, seed = 7): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((i * 31 + seed) % 251) + 1;
  return b;
}

describe("range validation", () => {
  it("rejects ranges past the end, negative and fractional values", async () => {
    const img = image(4);
    await expect(readAt(img, 4 * C - 1, 2)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await expect(writeAt(img, -1, new Uint8Array(1))).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await expect(writeZeroesAt(img, 1.5, 1)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await expect(discardAt(img, 0, 4 * C + 1)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await expect(readAt(img, 2 ** 60, 1)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    expect(img.calls).toEqual([]);
  });

  it("refuses requests unaligned to a coarser requestAlignment", async () => {
    const img = new ClusterLayer({
      clusterSize: C,
      clusters: ["data", "data"],
      limits: { requestAlignment: 512 },
    });
    await expect(readAt(img, 100, 512)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      reason: "UNALIGNED_REQUEST",
    });
    await expect(writeAt(img, 0, new Uint8Array(100))).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(await readAt(img, 512, 1024)).toHaveLength(1024);
  });

  it("refuses writes to a read-only image", async () => {
    const img = image(4, { readOnly: true });
    await expect(writeAt(img, 0, new Uint8Array(1))).rejects.toMatchObject({ code: "READ_ONLY" });
    await expect(writeZeroesAt(img, 0, 1)).rejects.toMatchObject({ code: "READ_ONLY" });
    await expect(discardAt(img, 0, 1)).rejects.toMatchObject({ code: "READ_ONLY" });
    await expect(truncateImage(img, C, { prealloc: "off" })).rejects.toMatchObject({ code: "READ_ONLY" });
    expect(await readAt(img, 0, 10)).toHaveLength(10);
  });
});

describe("readAt / writeAt", () => {
  it("round-trips and splits at maxTransfer boundaries", async () => {
    const img = image();
    const data = pattern(40 * C + 100);
    await writeAt(img, 100, data);
    expect(img.callsOf("write").map((c) => [c.offset, c.length])).toEqual([
      [100, 16 * C - 100],
      [16 * C, 16 * C],
      [32 * C, 8 * C + 200],
    ]);
    expect(Buffer.from(await readAt(img, 100, data.length)).equals(data)).toBe(true);
    const into = new Uint8Array(10);
    expect(await readAt(img, 100, into)).toBe(into);
    expect(Buffer.from(into)).toEqual(data.subarray(0, 10));
  });

  it("emulates FUA with a flush after the write", async () => {
    const img = image();
    await writeAt(img, 0, pattern(10), { fua: true });
    expect(img.calls.map((c) => c.op)).toEqual(["write", "flush"]);
  });

  it("checks the signal between pieces", async () => {
    const img = image();
    const controller = new AbortController();
    controller.abort();
    await expect(writeAt(img, 0, pattern(20 * C), { signal: controller.signal })).rejects.toMatchObject({
      code: "CANCELLED",
    });
    expect(img.callsOf("write")).toEqual([]);
  });

  it("zero detection turns whole zero blocks into few coalesced writeZeroes", async () => {
    const img = image();
    const data = Buffer.alloc(12 * C);
    pattern(C + 10).copy(data, 0); // clusters 0 and part of 1 data
    pattern(5).copy(data, 8 * C + 7); // cluster 8 data
    await writeAt(img, 0, data, { zeroDetection: "unmap" });
    expect(img.calls.map((c) => [c.op, c.offset / C, c.length / C, c.mayUnmap])).toEqual([
      ["write", 0, 2, undefined],
      ["writeZeroes", 2, 6, true],
      ["write", 8, 1, undefined],
      ["writeZeroes", 9, 3, true],
    ]);
    expect(Buffer.from(await readAt(img, 0, data.length)).equals(data)).toBe(true);
  });

  it("zero detection 'on' does not allow unmapping, and unaligned edges stay data", async () => {
    const img = image();
    await writeAt(img, 100, Buffer.alloc(3 * C), { zeroDetection: "on" });
    expect(img.calls.map((c) => [c.op, c.offset, c.length, c.mayUnmap])).toEqual([
      ["write", 100, C - 100, undefined],
      ["writeZeroes", C, 2 * C, false],
      ["write", 3 * C, 100, undefined],
    ]);
  });

  it("zero detection falls back to writing the (zero) data when the driver cannot zero", async () => {
    const img = image(64, { zeroUnsupported: true });
    await writeAt(img, 0, Buffer.alloc(4 * C), { zeroDetection: "on" });
    expect(img.calls.map((c) => c.op)).toEqual(["writeZeroes", "write"]);
    expect(img.clusters.slice(0, 4)).toEqual(["data", "data", "data", "data"]);
  });
});

describe("writeZeroesAt", () => {
  it("sends aligned middles natively and lets the driver refuse unaligned edges", async () => {
    const img = image();
    img.fill(0, 0xaa);
    img.fill(3, 0xbb);
    await writeZeroesAt(img, 100, 3 * C, { mayUnmap: true });
    expect(img.callsOf("writeZeroes").map((c) => [c.offset, c.length, c.mayUnmap])).toEqual([
      [100, C - 100, true],
      [C, 2 * C, true],
      [3 * C, 100, true],
    ]);
    // the unaligned edges were refused (UNSUPPORTED) and written as zero buffers instead
    expect(img.callsOf("write").map((c) => [c.offset, c.length])).toEqual([
      [100, C - 100],
      [3 * C, 100],
    ]);
    const back = Buffer.from(await readAt(img, 0, 4 * C));
    expect(back.subarray(0, 100).every((b) => b === 0xaa)).toBe(true);
    expect(isAllZero(back.subarray(100, 3 * C + 100))).toBe(true);
    expect(back.subarray(3 * C + 100).every((b) => b === 0xbb)).toBe(true);
  });

  it("falls back to bounded zero-buffer writes, or fails with noFallback", async () => {
    const img = image(64, { zeroUnsupported: true, maxTransfer: 64 * C });
    await writeZeroesAt(img, 0, 64 * C);
    expect(img.callsOf("write").every((c) => c.length <= 4 * 1024 * 1024)).toBe(true);
    expect(img.clusters.every((c) => c === "data")).toBe(true);
    await expect(writeZeroesAt(img, 0, C, { noFallback: true })).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
  });

  it("emulates FUA", async () => {
    const img = image();
    await writeZeroesAt(img, 0, C, { fua: true });
    expect(img.calls.map((c) => c.op)).toEqual(["writeZeroes", "flush"]);
  });
});

describe("discardAt, flushImage, truncateImage", () => {
  it("discard splits at alignment and is advisory", async () => {
    const img = image();
    img.fill(1, 1);
    await discardAt(img, 10, 2 * C);
    expect(img.callsOf("discard").map((c) => [c.offset, c.length])).toEqual([
      [10, C - 10],
      [C, C],
      [2 * C, 10],
    ]);
    expect(img.clusters[1]).toBe("zero");
  });

  it("flush skips read-only images; truncate validates and refuses shrinking with preallocation", async () => {
    const ro = image(4, { readOnly: true });
    await flushImage(ro);
    expect(ro.calls).toEqual([]);
    const img = image(4);
    await expect(truncateImage(img, 2 * C, { prealloc: "full" })).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
    await expect(truncateImage(img, -5, { prealloc: "off" })).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await truncateImage(img, 4 * C, { prealloc: "off" });
    expect(img.callsOf("truncate")).toEqual([]);
    await truncateImage(img, 2 * C, { prealloc: "off" });
    expect(img.virtualSize).toBe(2 * C);
  });
});

describe("zero detection helpers", () => {
  it("isAllZero checks every byte, including past the shared buffer size", () => {
    const big = Buffer.alloc(9 * 1024 * 1024);
    expect(isAllZero(big)).toBe(true);
    big[5 * 1024 * 1024 + 3] = 1;
    expect(isAllZero(big)).toBe(false);
    expect(isAllZero(new Uint8Array(0))).toBe(true);
  });

  it("findZeroRuns only reports whole aligned blocks as zero", () => {
    const data = Buffer.alloc(10);
    expect(findZeroRuns(3, data, 4)).toEqual([
      { start: 0, length: 1, zero: false },
      { start: 1, length: 8, zero: true },
      { start: 9, length: 1, zero: false },
    ]);
    expect(findZeroRuns(0, Buffer.alloc(3), 4)).toEqual([{ start: 0, length: 3, zero: false }]);
  });
});
