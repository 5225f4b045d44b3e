import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EngineError } from "../errors.js";
import { createMemoryFile } from "./memory-file.js";
import { openHostFile } from "./node-file.js";

const KiB = 1024;
const MiB = 1024 * KiB;

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}

function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length);
  const mismatch = a.equals(expected) ? -1 : a.findIndex((v, i) => v !== expected[i]);
  expect(mismatch, "first differing byte").toBe(-1);
}

async function caught(p: Promise<unknown>): Promise<EngineError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EngineError);
  return err as EngineError;
}

describe("memory file: contents", () => {
  it("round-trips, reads short at end of file and zero-fills readFull", async () => {
    const f = createMemoryFile();
    await f.write(100_000, pattern(150_000, 1));
    expect(await f.size()).toBe(250_000);
    const back = new Uint8Array(150_000);
    expect(await f.read(100_000, back)).toBe(150_000);
    expectBytes(back, pattern(150_000, 1));
    const head = new Uint8Array(10).fill(7);
    await f.readFull(0, head);
    expect(head.every((b) => b === 0)).toBe(true);
    const tail = new Uint8Array(100).fill(7);
    expect(await f.read(249_950, tail)).toBe(50);
    await f.readFull(249_950, tail);
    expect(tail.subarray(50).every((b) => b === 0)).toBe(true);
  });

  it("starts from initial data and writev appends buffers back to back", async () => {
    const f = createMemoryFile({ data: pattern(1000, 2) });
    await f.writev(990, [pattern(20, 3), new Uint8Array(0), pattern(70_000, 4)]);
    const expected = new Uint8Array(990 + 70_020);
    expected.set(pattern(1000, 2));
    expected.set(pattern(20, 3), 990);
    expected.set(pattern(70_000, 4), 1010);
    expectBytes(f.contents(), expected);
  });

  it("truncate drops data beyond the new end; growing again reads zeros", async () => {
    const f = createMemoryFile({ data: pattern(200 * KiB, 5) });
    await f.allocate(MiB, 64 * KiB, true);
    await f.truncate(70_000);
    expect(await f.allocatedBytes()).toBe(128 * KiB);
    await f.truncate(300 * KiB);
    const expected = new Uint8Array(300 * KiB);
    expected.set(pattern(70_000, 5));
    expectBytes(f.contents(), expected);
  });

  it("fallocate modes: allocate, punch hole, zero range", async () => {
    const f = createMemoryFile();
    await f.allocate(0, MiB);
    expect(await f.size()).toBe(MiB);
    expect(await f.allocatedBytes()).toBe(MiB);
    await f.allocate(2 * MiB, 64 * KiB, true);
    expect(await f.size()).toBe(MiB);
    expect(await f.allocatedBytes()).toBe(MiB + 64 * KiB);

    await f.write(0, pattern(MiB, 6));
    await f.punchHole(100 * KiB, 200 * KiB); // frees the 2 whole chunks inside (128K..256K), zeroes the edges
    expect(await f.allocatedBytes()).toBe(MiB + 64 * KiB - 2 * 64 * KiB);
    await f.zeroRange(500 * KiB, 10 * KiB, true);
    const expected = pattern(MiB, 6);
    expected.fill(0, 100 * KiB, 300 * KiB);
    expected.fill(0, 500 * KiB, 510 * KiB);
    expectBytes(f.contents(), expected);
    await f.zeroRange(MiB, 128 * KiB);
    expect(await f.size()).toBe(MiB + 128 * KiB);
  });

  it("seekData / seekHole follow allocated chunks", async () => {
    const f = createMemoryFile();
    await f.truncate(8 * MiB);
    await f.write(MiB, pattern(64 * KiB, 1));
    await f.write(5 * MiB, pattern(100 * KiB, 2));
    expect(await f.seekData(0)).toBe(MiB);
    expect(await f.seekHole(0)).toBe(0);
    expect(await f.seekHole(MiB + 5)).toBe(MiB + 64 * KiB);
    expect(await f.seekData(MiB + 64 * KiB)).toBe(5 * MiB);
    expect(await f.seekHole(5 * MiB)).toBe(5 * MiB + 128 * KiB); // chunk granularity
    expect(await f.seekData(5 * MiB + 128 * KiB)).toBeNull();
    expect(await f.seekHole(9 * MiB)).toBe(9 * MiB);
    expect(await f.seekData(8 * MiB)).toBeNull();
  });

  it("reports every capability by default; missing ones fail with UNSUPPORTED and seek reports all data", async () => {
    expect(createMemoryFile().capabilities).toEqual({
      allocate: true,
      punchHole: true,
      zeroRange: true,
      seekData: true,
      ofdLocks: true,
    });
    const f = createMemoryFile({
      data: new Uint8Array(10),
      capabilities: { punchHole: false, seekData: false },
    });
    expect((await caught(f.punchHole(0, 4096))).reason).toBe("HOST_PUNCH_HOLE_UNSUPPORTED");
    expect(await f.seekData(3)).toBe(3);
    expect(await f.seekHole(3)).toBe(10);
    await f.lockImage("exclusive");
    await f.unlockImage();
  });

  it("read-only memory files refuse changes; closed files refuse everything", async () => {
    const ro = createMemoryFile({ readOnly: true, data: new Uint8Array(5) });
    expect((await caught(ro.write(0, new Uint8Array(1)))).code).toBe("READ_ONLY");
    expect((await caught(ro.zeroRange(0, 1))).code).toBe("READ_ONLY");
    await ro.close();
    expect((await caught(ro.read(0, new Uint8Array(1)))).code).toBe("IO");
  });
});

describe("memory file: fault injection", () => {
  it("fails the nth matching write once with EIO, leaving the file unchanged", async () => {
    const f = createMemoryFile();
    f.injectFault({ op: "write", nth: 2, error: "EIO" });
    await f.write(0, pattern(10, 1));
    const err = await caught(f.write(10, pattern(10, 2)));
    expect(err.code).toBe("IO");
    expect(err.reason).toBe("HOST_EIO");
    expect(await f.size()).toBe(10);
    await f.write(10, pattern(10, 2)); // one-shot: the retry works
    expect(f.stats).toMatchObject({ writes: 3, faultsFired: 1, bytesWritten: 20 });
  });

  it("persistent ENOSPC fails the nth and every later matching call; `when` narrows the range", async () => {
    const f = createMemoryFile();
    f.injectFault({
      op: "write",
      error: "ENOSPC",
      persistent: true,
      when: (offset, length) => offset + length > MiB,
    });
    await f.write(0, pattern(100, 1));
    for (let i = 0; i < 3; i++) expect((await caught(f.write(MiB + i, pattern(1, 1)))).code).toBe("NO_SPACE");
    expect((await caught(f.truncate(2 * MiB))).code).toBe("NO_SPACE");
    await f.write(4096, pattern(100, 1));
    f.clearFaults();
    await f.write(MiB, pattern(1, 1));
    expect(f.stats.faultsFired).toBe(4);
  });

  it("read faults and 'any' faults", async () => {
    const f = createMemoryFile({ data: pattern(100, 1) });
    f.injectFault({ op: "read", error: "EIO" });
    expect((await caught(f.readFull(0, new Uint8Array(10)))).code).toBe("IO");
    await f.readFull(0, new Uint8Array(10));
    f.injectFault({ op: "any", nth: 3, error: "EIO" });
    await f.read(0, new Uint8Array(1));
    await f.write(0, new Uint8Array(1));
    expect((await caught(f.flush())).code).toBe("FSYNC_FAILED");
    expect(f.stats).toMatchObject({ reads: 3, writes: 1, flushes: 1, faultsFired: 2 });
  });

  it("a `point` fault matches only writes the caller named so (and dotted refinements); stats count points", async () => {
    const f = createMemoryFile();
    f.injectFault({ op: "any", point: "l1_grow", error: "ENOSPC", persistent: true });
    await f.write(0, pattern(10, 1));
    await f.write(0, pattern(10, 1), { point: "l2_update" });
    await f.write(0, pattern(10, 1), { point: "l1_growth" });
    expect((await caught(f.write(0, pattern(10, 1), { point: "l1_grow" }))).code).toBe("NO_SPACE");
    expect((await caught(f.write(0, pattern(10, 1), { point: "l1_grow.write_table" }))).code).toBe(
      "NO_SPACE",
    );
    await f.flush();
    f.clearFaults();
    f.injectFault({ op: "flush", point: "flush", error: "EIO" });
    expect((await caught(f.flush())).code).toBe("FSYNC_FAILED");
    expect(f.stats.points).toMatchObject({
      l2_update: 1,
      l1_growth: 1,
      l1_grow: 1,
      "l1_grow.write_table": 1,
      flush: 2,
    });
  });

  it("a flush fault is permanent, like a real fsync failure", async () => {
    const f = createMemoryFile();
    await f.write(0, pattern(10, 1));
    f.injectFault({ op: "flush", error: "EIO" });
    const err = await caught(f.flush());
    expect(err.code).toBe("FSYNC_FAILED");
    expect(err.metadata.errno).toBe("EIO");
    expect((await caught(f.flush())).code).toBe("FSYNC_FAILED");
    expect((await caught(f.write(0, new Uint8Array(1)))).code).toBe("FSYNC_FAILED");
    const back = new Uint8Array(10);
    await f.readFull(0, back);
    expectBytes(back, pattern(10, 1));
  });

  it("a FUA write flushes, so flush faults reach it", async () => {
    const f = createMemoryFile();
    f.injectFault({ op: "flush", error: "EIO" });
    await f.write(0, pattern(10, 1));
    expect((await caught(f.write(10, pattern(10, 2), { fua: true }))).code).toBe("FSYNC_FAILED");
    expect(f.stats.flushes).toBe(1);
    const back = new Uint8Array(10);
    await f.readFull(0, back);
    expectBytes(back, pattern(10, 1));
  });
});

describe("memory file matches the real file", () => {
  it("same contents after the same random operations", async () => {
    const dir = await mkdtemp(join(tmpdir(), "vdisk-parity-"));
    const real = await openHostFile(join(dir, "p.img"), { readOnly: false, create: "new" });
    const mem = createMemoryFile();
    try {
      let seed = 12345;
      const rand = (n: number): number => {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        return seed % n;
      };
      for (let step = 0; step < 200; step++) {
        const offset = rand(2 * MiB);
        const length = 1 + rand(200 * KiB);
        const op = rand(10);
        const extra = rand(3) * 1000;
        for (const f of [real, mem]) {
          if (op < 5) await f.write(offset, pattern(length, step));
          else if (op === 5) await f.writev(offset, [pattern(length, step), pattern(extra, step + 1)]);
          else if (op === 6) await f.punchHole(offset, length);
          else if (op === 7 && real.capabilities.zeroRange) await f.zeroRange(offset, length, step % 2 === 0);
          else if (op === 8) await f.truncate(offset);
          else await f.allocate(offset, length, step % 2 === 0);
        }
        expect(await mem.size()).toBe(await real.size());
      }
      const size = await real.size();
      const back = new Uint8Array(size);
      await real.readFull(0, back);
      expectBytes(mem.contents(), back);
    } finally {
      await real.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
