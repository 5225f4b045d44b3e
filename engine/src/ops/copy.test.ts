import { describe, expect, it } from "vitest";
import { mapExtents } from "../core/allocation-map.js";
import { readAt, writeAt } from "../core/io.js";
import { EngineError } from "../errors.js";
import { rawDriver } from "../formats/raw/index.js";
import { createMemoryFile } from "../host/memory-file.js";
import { copyImage } from "./copy.js";

const MiB = 1 << 20;

async function newRaw(size: number) {
  const file = createMemoryFile();
  await rawDriver.create(file, { size, prealloc: "off" });
  return rawDriver.open(file, { readOnly: false });
}

describe("copyImage", () => {
  it("copies content and keeps sparseness: no data where the source had none, zero blocks skipped", async () => {
    const src = await newRaw(16 * MiB);
    const payload = new Uint8Array(MiB).fill(0xab);
    await writeAt(src, 3 * MiB, payload);
    // Data containing a zero block in the middle: the zero block must not be written to the target.
    const mixed = new Uint8Array(3 * 64 * 1024).fill(0x11);
    mixed.fill(0, 64 * 1024, 128 * 1024);
    await writeAt(src, 10 * MiB, mixed);

    const dst = await newRaw(16 * MiB);
    const progress: number[] = [];
    const result = await copyImage(src, dst, { onProgress: (done) => progress.push(done) });

    // Compare natively: a toEqual diff of two 16 MiB arrays would exhaust memory.
    expect(Buffer.from(await readAt(dst, 0, 16 * MiB)).equals(await readAt(src, 0, 16 * MiB))).toBe(true);
    expect(result.writtenBytes).toBe(MiB + 2 * 64 * 1024);
    const dataExtents = [];
    for await (const e of mapExtents(dst)) if (e.data) dataExtents.push([e.start, e.length]);
    expect(dataExtents).toEqual([
      [3 * MiB, MiB],
      [10 * MiB, 64 * 1024],
      [10 * MiB + 128 * 1024, 64 * 1024],
    ]);
    expect(progress.at(-1)).toBe(16 * MiB);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
  });

  it("stops with CANCELLED when the signal fires", async () => {
    const src = await newRaw(64 * MiB);
    await writeAt(src, 0, new Uint8Array(64 * MiB).fill(1));
    const dst = await newRaw(64 * MiB);
    const abort = new AbortController();
    const copying = copyImage(src, dst, {
      signal: abort.signal,
      onProgress: (done) => {
        if (done >= 8 * MiB) abort.abort();
      },
    });
    await expect(copying).rejects.toMatchObject({ code: "CANCELLED" });
  });

  it("lets every chunk in flight settle before it reports the cancellation", async () => {
    const src = await newRaw(64 * MiB);
    await writeAt(src, 0, new Uint8Array(64 * MiB).fill(7));
    const dst = await newRaw(64 * MiB);
    let writing = 0;
    let mostWriting = 0;
    const write = dst.write.bind(dst);
    dst.write = async (offset, data, opts) => {
      mostWriting = Math.max(mostWriting, ++writing);
      try {
        await new Promise((resolve) => setTimeout(resolve, 5));
        await write(offset, data, opts);
      } finally {
        writing--;
      }
    };
    const abort = new AbortController();
    const copying = copyImage(src, dst, {
      signal: abort.signal,
      maxInFlight: 4,
      onProgress: (done) => {
        if (done >= 4 * MiB) abort.abort();
      },
    });
    await expect(copying).rejects.toMatchObject({ code: "CANCELLED" });
    expect(writing).toBe(0);
    expect(mostWriting).toBeGreaterThan(1);
  });

  it("fails with the first error and starts no write after it", async () => {
    const src = await newRaw(32 * MiB);
    await writeAt(src, 0, new Uint8Array(32 * MiB).fill(3));
    const read = src.read.bind(src);
    src.read = async (offset, into, opts) => {
      if (offset === 8 * MiB) throw new EngineError("IO", "injected read failure");
      await read(offset, into, opts);
    };
    const dst = await newRaw(32 * MiB);
    const written: number[] = [];
    const write = dst.write.bind(dst);
    dst.write = async (offset, data, opts) => {
      written.push(offset);
      await write(offset, data, opts);
    };
    await expect(copyImage(src, dst, { maxInFlight: 4 })).rejects.toMatchObject({ code: "IO" });
    // In-order commits: nothing at or past the failed chunk reaches the target.
    expect(written.every((offset) => offset < 8 * MiB)).toBe(true);
  });

  it("fails (rather than crashing the process) when the progress callback throws", async () => {
    const src = await newRaw(16 * MiB);
    await writeAt(src, 0, new Uint8Array(16 * MiB).fill(9));
    const copying = copyImage(src, await newRaw(16 * MiB), {
      onProgress: (done) => {
        if (done > 0) throw new Error("observer failed");
      },
    });
    await expect(copying).rejects.toMatchObject({ message: "observer failed" });
  });

  it("refuses a target smaller than the source", async () => {
    await expect(copyImage(await newRaw(2 * MiB), await newRaw(MiB))).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
  });
});
