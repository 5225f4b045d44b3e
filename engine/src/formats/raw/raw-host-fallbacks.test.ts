import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { discardAt, readAt, writeAt, writeZeroesAt } from "../../core/io.js";
import { isAllZero } from "../../core/zero-buffer.js";
import type { HostCapabilities } from "../../host/host-file.js";
import { createMemoryFile, type MemoryFile } from "../../host/memory-file.js";
import { openHostFile } from "../../host/node-file.js";
import { FALLOC_CHUNK, FALLOC_MIN_STEPS } from "./preallocate.js";
import { rawDriver } from "./raw-driver.js";

/** How the raw driver behaves on hosts that lack fallocate modes or SEEK_DATA, and when the host fails. */
const MiB = 1024 * 1024;

async function memoryRaw(
  size: number,
  capabilities: Partial<HostCapabilities>,
): Promise<{ file: MemoryFile; img: Awaited<ReturnType<typeof rawDriver.open>> }> {
  const file = createMemoryFile({ capabilities });
  await rawDriver.create(file, { size, prealloc: "off" });
  return { file, img: await rawDriver.open(file, { readOnly: false }) };
}

describe("raw on limited hosts", () => {
  it("without zero-range or punch-hole, the core writes zero buffers instead", async () => {
    const { file, img } = await memoryRaw(4 * MiB, { zeroRange: false, punchHole: false });
    await writeAt(img, 0, Buffer.alloc(4 * MiB, 1));
    const before = file.stats.bytesWritten;
    await writeZeroesAt(img, MiB, 2 * MiB, { mayUnmap: true });
    expect(file.stats.bytesWritten - before).toBe(2 * MiB);
    expect(isAllZero(await readAt(img, MiB, 2 * MiB))).toBe(true);
    await expect(writeZeroesAt(img, 0, MiB, { noFallback: true })).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
  });

  it("without zero-range, keeps the range allocated by punching and re-allocating", async () => {
    const { file, img } = await memoryRaw(MiB, { zeroRange: false });
    await writeAt(img, 0, Buffer.alloc(MiB, 1));
    const before = file.stats.bytesWritten;
    await writeZeroesAt(img, 0, MiB);
    expect(file.stats.bytesWritten).toBe(before);
    expect(isAllZero(await readAt(img, 0, MiB))).toBe(true);
  });

  it("discard without punch-hole is a no-op, not an error", async () => {
    const { img } = await memoryRaw(MiB, { punchHole: false });
    await writeAt(img, 0, Buffer.alloc(MiB, 2));
    await discardAt(img, 0, MiB);
    expect(Buffer.from(await readAt(img, 0, 16)).every((b) => b === 2)).toBe(true);
  });

  it("without SEEK_DATA every byte is reported as data", async () => {
    const { img } = await memoryRaw(MiB, { seekData: false });
    expect(await img.blockStatus(4096, MiB - 4096)).toEqual({
      length: MiB - 4096,
      allocated: true,
      data: true,
      zero: false,
      hostOffset: 4096,
    });
  });

  it("falloc create without fallocate fails with UNSUPPORTED", async () => {
    const file = createMemoryFile({ capabilities: { allocate: false } });
    await expect(rawDriver.create(file, { size: MiB, prealloc: "falloc" })).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
  });

  it("ENOSPC during a full create surfaces as NO_SPACE and stops the writers", async () => {
    const file = createMemoryFile();
    file.injectFault({ op: "write", nth: 2, error: "ENOSPC", persistent: true });
    await expect(rawDriver.create(file, { size: 64 * MiB, prealloc: "full" })).rejects.toMatchObject({
      code: "NO_SPACE",
    });
    expect(file.stats.writes).toBeLessThan(8);
  });
});

describe("falloc create cancellation", () => {
  let dir: string;
  beforeAll(async () => {
    await mkdir("/tmp/core-helper", { recursive: true });
    dir = await mkdtemp("/tmp/core-helper/falloc-");
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("stops between fallocate chunks with CANCELLED", async () => {
    const path = join(dir, "cancel.raw");
    const file = await openHostFile(path, { readOnly: false, create: "new" });
    const controller = new AbortController();
    const seen: number[] = [];
    const creation = rawDriver.create(file, {
      size: 4 * FALLOC_CHUNK,
      prealloc: "falloc",
      signal: controller.signal,
      onProgress: (done) => {
        seen.push(done);
        if (done > 0) controller.abort();
      },
    });
    await expect(creation).rejects.toMatchObject({ code: "CANCELLED" });
    await file.close();
    // 1 GiB in FALLOC_MIN_STEPS chunks: cancelled after the first one.
    const chunk = (4 * FALLOC_CHUNK) / FALLOC_MIN_STEPS;
    expect(seen).toEqual([0, chunk]);
    expect((await stat(path)).size).toBe(chunk);
  });
});
