import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../../block-image.js";
import { discardAt, readAt, truncateImage, writeAt, writeZeroesAt } from "../../core/io.js";
import { isAllZero } from "../../core/zero-buffer.js";
import type { HostFile } from "../../host/host-file.js";
import { openHostFile } from "../../host/node-file.js";
import type { PreallocMode } from "../../types.js";
import { FULL_CHUNK } from "./preallocate.js";
import { rawDriver } from "./raw-driver.js";

const MiB = 1024 * 1024;
let dir: string;
let counter = 0;

beforeAll(async () => {
  await mkdir("/tmp/core-helper", { recursive: true });
  dir = await mkdtemp("/tmp/core-helper/raw-");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function newPath(): string {
  return join(dir, `img-${++counter}.raw`);
}

async function createRaw(
  size: number,
  prealloc: PreallocMode,
  extra: { preallocBytes?: number } = {},
): Promise<string> {
  const path = newPath();
  const file = await openHostFile(path, { readOnly: false, create: "new" });
  try {
    await rawDriver.create(file, { size, prealloc, ...extra });
  } finally {
    await file.close();
  }
  return path;
}

async function openRaw(path: string, readOnly = false): Promise<{ img: BlockImage; file: HostFile }> {
  const file = await openHostFile(path, { readOnly });
  return { img: await rawDriver.open(file, { readOnly }), file };
}

async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

describe("raw create", () => {
  it("off: sparse file of the requested size", async () => {
    const path = await createRaw(8 * MiB, "off");
    expect((await stat(path)).size).toBe(8 * MiB);
    expect(await allocated(path)).toBe(0);
  });

  it("falloc: allocated without writing, reads as zeros", async () => {
    const path = await createRaw(8 * MiB, "falloc");
    expect((await stat(path)).size).toBe(8 * MiB);
    expect(await allocated(path)).toBeGreaterThanOrEqual(8 * MiB);
    const { img } = await openRaw(path, true);
    expect(isAllZero(await readAt(img, 0, 8 * MiB))).toBe(true);
    await img.close();
  });

  it("full: zeros written, reporting monotonic progress", async () => {
    const path = newPath();
    const file = await openHostFile(path, { readOnly: false, create: "new" });
    const progress: number[] = [];
    await rawDriver.create(file, {
      size: 10 * MiB,
      prealloc: "full",
      onProgress: (done, total) => {
        expect(total).toBe(10 * MiB);
        progress.push(done);
      },
    });
    await file.close();
    expect((await stat(path)).size).toBe(10 * MiB);
    expect(await allocated(path)).toBeGreaterThanOrEqual(10 * MiB);
    expect(progress.at(-1)).toBe(10 * MiB);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
  });

  it("preallocBytes allocates only the prefix and leaves the rest thin", async () => {
    for (const mode of ["falloc", "full"] as const) {
      const path = await createRaw(16 * MiB, mode, { preallocBytes: 4 * MiB });
      expect((await stat(path)).size).toBe(16 * MiB);
      const used = await allocated(path);
      expect(used).toBeGreaterThanOrEqual(4 * MiB);
      expect(used).toBeLessThan(8 * MiB);
    }
  });

  it("rejects metadata preallocation and bad sizes", async () => {
    const file = await openHostFile(newPath(), { readOnly: false, create: "new" });
    await expect(rawDriver.create(file, { size: MiB, prealloc: "metadata" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: "metadata preallocation is not supported for raw",
    });
    await expect(rawDriver.create(file, { size: -1, prealloc: "off" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await file.close();
  });

  it("full create stops between chunks with CANCELLED", async () => {
    const path = newPath();
    const file = await openHostFile(path, { readOnly: false, create: "new" });
    const controller = new AbortController();
    const done = rawDriver.create(file, {
      size: 256 * MiB,
      prealloc: "full",
      signal: controller.signal,
      onProgress: (bytes) => {
        if (bytes >= 2 * FULL_CHUNK) controller.abort();
      },
    });
    await expect(done).rejects.toMatchObject({ code: "CANCELLED" });
    await file.close();
    // Only the chunks in flight when the signal fired were written.
    expect((await stat(path)).size).toBeLessThan(64 * MiB);
  });

  it("probe is always low confidence", () => {
    expect(rawDriver.probe(new Uint8Array(512))).toBe(1);
    expect(rawDriver.probe(Buffer.from("QFI\xfb"))).toBe(1);
  });
});

describe("raw image", () => {
  it("round-trips writes and reads, and reports its limits and facts", async () => {
    const { img } = await openRaw(await createRaw(4 * MiB, "off"));
    const data = Buffer.alloc(100_000, 0x5a);
    await writeAt(img, 12345, data);
    expect(Buffer.from(await readAt(img, 12345, data.length)).equals(data)).toBe(true);
    expect(img.limits).toEqual({
      requestAlignment: 1,
      maxTransfer: 32 * MiB,
      zeroAlignment: 4096,
      discardAlignment: 4096,
    });
    expect(img.details()).toEqual({});
    expect(await img.check({ repair: "none" })).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
    await expect(img.setBackingLink(undefined, undefined)).rejects.toMatchObject({ code: "UNSUPPORTED" });
    expect(await img.physicalBytes()).toBeGreaterThanOrEqual(100_000);
    await img.close();
  });

  it("blockStatus reports data and holes from SEEK_DATA, host offset = guest offset", async () => {
    const { img } = await openRaw(await createRaw(1 * MiB, "off"));
    await writeAt(img, 64 * 1024, Buffer.alloc(4096, 1));
    expect(await img.blockStatus(0, MiB)).toEqual({
      length: 65536,
      allocated: true,
      data: false,
      zero: true,
      hostOffset: 0,
    });
    expect(await img.blockStatus(65536, MiB - 65536)).toEqual({
      length: 4096,
      allocated: true,
      data: true,
      zero: false,
      hostOffset: 65536,
    });
    expect(await img.blockStatus(69632, 4096)).toMatchObject({
      length: MiB - 69632,
      data: false,
      zero: true,
      hostOffset: 69632,
    });
    await img.close();
  });

  it("writeZeroes keeps space without mayUnmap and frees it with mayUnmap", async () => {
    const path = await createRaw(4 * MiB, "off");
    const { img } = await openRaw(path);
    await writeAt(img, 0, Buffer.alloc(4 * MiB, 7));
    await img.flush();
    await writeZeroesAt(img, 0, 2 * MiB);
    expect(await allocated(path)).toBeGreaterThanOrEqual(4 * MiB);
    await writeZeroesAt(img, 2 * MiB, 2 * MiB, { mayUnmap: true });
    const used = await allocated(path);
    expect(used).toBeGreaterThanOrEqual(2 * MiB);
    expect(used).toBeLessThan(3 * MiB);
    expect(isAllZero(await readAt(img, 0, 4 * MiB))).toBe(true);
    await img.close();
  });

  it("writeZeroes on unaligned edges still zeroes exactly the range", async () => {
    const { img } = await openRaw(await createRaw(64 * 1024, "off"));
    await writeAt(img, 0, Buffer.alloc(64 * 1024, 9));
    await writeZeroesAt(img, 1000, 10_000, { mayUnmap: true });
    const back = Buffer.from(await readAt(img, 0, 64 * 1024));
    expect(back.subarray(0, 1000).every((b) => b === 9)).toBe(true);
    expect(isAllZero(back.subarray(1000, 11_000))).toBe(true);
    expect(back.subarray(11_000).every((b) => b === 9)).toBe(true);
    await img.close();
  });

  it("discard punches holes that read as zeros", async () => {
    const path = await createRaw(2 * MiB, "off");
    const { img } = await openRaw(path);
    await writeAt(img, 0, Buffer.alloc(2 * MiB, 3));
    await discardAt(img, MiB, MiB);
    expect(await allocated(path)).toBeLessThan(MiB + 64 * 1024);
    expect(isAllZero(await readAt(img, MiB, MiB))).toBe(true);
    expect(await img.blockStatus(MiB, MiB)).toMatchObject({ data: false, zero: true });
    await img.close();
  });

  it("truncate grows with each preallocation mode and shrinks with off", async () => {
    const path = await createRaw(MiB, "off");
    const { img } = await openRaw(path);
    await truncateImage(img, 2 * MiB, { prealloc: "off" });
    expect(await allocated(path)).toBe(0);
    await truncateImage(img, 4 * MiB, { prealloc: "falloc" });
    expect(await allocated(path)).toBeGreaterThanOrEqual(2 * MiB);
    await truncateImage(img, 6 * MiB, { prealloc: "full" });
    expect(await allocated(path)).toBeGreaterThanOrEqual(4 * MiB);
    expect(img.virtualSize).toBe(6 * MiB);
    expect((await stat(path)).size).toBe(6 * MiB);
    await expect(img.truncate(MiB, { prealloc: "falloc" })).rejects.toMatchObject({ code: "UNSUPPORTED" });
    await expect(truncateImage(img, 7 * MiB, { prealloc: "metadata" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await truncateImage(img, MiB, { prealloc: "off" });
    expect((await stat(path)).size).toBe(MiB);
    expect(img.virtualSize).toBe(MiB);
    await expect(readAt(img, MiB, 1)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await img.close();
  });

  it("read-only open refuses writes and rejects a backing", async () => {
    const path = await createRaw(MiB, "off");
    const { img } = await openRaw(path, true);
    expect(img.readOnly).toBe(true);
    await expect(writeAt(img, 0, Buffer.alloc(1))).rejects.toMatchObject({ code: "READ_ONLY" });
    const second = await openHostFile(path, { readOnly: true });
    await expect(rawDriver.open(second, { readOnly: true, backing: img })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await second.close();
    await img.close();
  });
});

describe("raw sizes follow QEMU's sector rounding", () => {
  it("create rounds up to 512 bytes and open reports the rounded virtual size", async () => {
    const path = await createRaw(1000, "off");
    expect((await stat(path)).size).toBe(1024);
    const file = await openHostFile(path, { readOnly: false });
    await file.truncate(3001);
    const img = await rawDriver.open(file, { readOnly: false });
    expect(img.virtualSize).toBe(3072);
    expect(isAllZero(await readAt(img, 2048, 1024))).toBe(true);
    await writeAt(img, 3071, Buffer.from([1]));
    expect((await stat(path)).size).toBe(3072);
    await img.close();
  });
});
