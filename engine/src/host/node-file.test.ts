import { existsSync } from "node:fs";
import { mkdtemp, open, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EngineError } from "../errors.js";
import type { HostFile } from "./host-file.js";
import { readCachedSync } from "./libc.js";
import { openHostFile } from "./node-file.js";

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
const opened: HostFile[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "vdisk-host-"));
});

afterEach(async () => {
  for (const f of opened.splice(0)) await f.close().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

async function openNew(name = "a.img"): Promise<HostFile> {
  const f = await openHostFile(join(dir, name), { readOnly: false, create: "new" });
  opened.push(f);
  return f;
}

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** toEqual walks typed arrays element by element (seconds for a few MiB); compare natively instead. */
function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length);
  const mismatch = a.equals(expected) ? -1 : a.findIndex((v, i) => v !== expected[i]);
  expect(mismatch, "first differing byte").toBe(-1);
}

async function expectEngineError(p: Promise<unknown>, code: string, reason?: string): Promise<EngineError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EngineError);
  const e = err as EngineError;
  expect(e.code).toBe(code);
  if (reason !== undefined) expect(e.reason).toBe(reason);
  return e;
}

describe("openHostFile", () => {
  it("create 'new' refuses an existing file, missing files are NOT_FOUND", async () => {
    await openNew();
    await expectEngineError(
      openHostFile(join(dir, "a.img"), { readOnly: false, create: "new" }),
      "ALREADY_EXISTS",
    );
    await expectEngineError(openHostFile(join(dir, "missing.img"), { readOnly: true }), "NOT_FOUND");
  });

  it("create 'truncate' empties an existing file", async () => {
    await writeFile(join(dir, "t.img"), pattern(5000, 1));
    const f = await openHostFile(join(dir, "t.img"), { readOnly: false, create: "truncate" });
    opened.push(f);
    expect(await f.size()).toBe(0);
  });

  it("reports the capabilities of a local Linux file system", async () => {
    const f = await openNew();
    // The test machine's tmpdir is ext4/xfs/btrfs/tmpfs: all have these.
    expect(f.capabilities.allocate).toBe(true);
    expect(f.capabilities.punchHole).toBe(true);
    expect(f.capabilities.seekData).toBe(true);
    expect(f.capabilities.ofdLocks).toBe(true);
    expect(typeof f.capabilities.zeroRange).toBe("boolean");
  });

  it("read-only files refuse every kind of modification", async () => {
    await writeFile(join(dir, "ro.img"), pattern(4096, 2));
    const f = await openHostFile(join(dir, "ro.img"), { readOnly: true });
    opened.push(f);
    expect(f.readOnly).toBe(true);
    await expectEngineError(f.write(0, new Uint8Array(1)), "READ_ONLY");
    await expectEngineError(f.writev(0, [new Uint8Array(1)]), "READ_ONLY");
    await expectEngineError(f.truncate(0), "READ_ONLY");
    await expectEngineError(f.punchHole(0, 4096), "READ_ONLY");
    const back = new Uint8Array(4096);
    expect(await f.read(0, back)).toBe(4096);
    expectBytes(back, pattern(4096, 2));
  });
});

describe("positioned I/O", () => {
  it("round-trips data at arbitrary offsets", async () => {
    const f = await openNew();
    const data = pattern(100_000, 7);
    await f.write(12_345, data);
    expect(await f.size()).toBe(112_345);
    const back = new Uint8Array(data.length);
    expect(await f.read(12_345, back)).toBe(data.length);
    expectBytes(back, data);
  });

  it("read returns a short count only at end of file; readFull zero-fills past it", async () => {
    const f = await openNew();
    await f.write(0, pattern(1000, 3));
    const buf = new Uint8Array(600).fill(0xee);
    expect(await f.read(700, buf)).toBe(300);
    expectBytes(buf.subarray(0, 300), pattern(1000, 3).subarray(700));
    expect(await f.read(5000, new Uint8Array(10))).toBe(0);

    const full = new Uint8Array(600).fill(0xee);
    await f.readFull(700, full);
    expectBytes(full.subarray(0, 300), pattern(1000, 3).subarray(700));
    expect(full.subarray(300).every((b) => b === 0)).toBe(true);
  });

  it("writev writes buffers back to back, including empty ones", async () => {
    const f = await openNew();
    const parts = [pattern(10, 1), new Uint8Array(0), pattern(70_000, 2), pattern(3, 3)];
    await f.writev(4096, parts);
    const expected = new Uint8Array(70_013);
    expected.set(parts[0] as Uint8Array, 0);
    expected.set(parts[2] as Uint8Array, 10);
    expected.set(parts[3] as Uint8Array, 70_010);
    const back = new Uint8Array(expected.length);
    await f.readFull(4096, back);
    expectBytes(back, expected);
    expect(await f.size()).toBe(4096 + 70_013);
  });

  it("writev handles more buffers than IOV_MAX", async () => {
    const f = await openNew();
    const parts = Array.from({ length: 2500 }, (_, i) => new Uint8Array(7).fill(i & 0xff));
    await f.writev(1, parts);
    const back = new Uint8Array(2500 * 7);
    await f.readFull(1, back);
    for (let i = 0; i < 2500; i++) expect(back[i * 7 + 6]).toBe(i & 0xff);
  });

  it("truncate shrinks and grows; the grown tail reads as zeros", async () => {
    const f = await openNew();
    await f.write(0, pattern(8192, 4));
    await f.truncate(100);
    expect(await f.size()).toBe(100);
    await f.truncate(3 * MiB);
    expect(await f.size()).toBe(3 * MiB);
    const tail = new Uint8Array(4096).fill(1);
    await f.readFull(100, tail);
    expect(tail.every((b) => b === 0)).toBe(true);
    expect(await f.allocatedBytes()).toBeLessThan(64 * KiB);
  });

  it("rejects negative, fractional and beyond-2^53 ranges", async () => {
    const f = await openNew();
    await expectEngineError(f.read(-1, new Uint8Array(1)), "INVALID_ARGUMENT");
    await expectEngineError(f.write(0.5, new Uint8Array(1)), "INVALID_ARGUMENT");
    await expectEngineError(f.write(Number.MAX_SAFE_INTEGER, new Uint8Array(2)), "OUT_OF_RANGE");
  });

  it("honours an aborted signal", async () => {
    const f = await openNew();
    const ac = new AbortController();
    ac.abort();
    await expectEngineError(f.write(0, new Uint8Array(10), { signal: ac.signal }), "CANCELLED");
  });
});

describe("fallocate", () => {
  it("mode 0 extends the file and allocates; KEEP_SIZE allocates without extending", async () => {
    const f = await openNew();
    await f.allocate(0, 2 * MiB);
    expect(await f.size()).toBe(2 * MiB);
    expect(await f.allocatedBytes()).toBeGreaterThanOrEqual(2 * MiB);
    const back = new Uint8Array(MiB).fill(9);
    await f.readFull(MiB, back);
    expect(back.every((b) => b === 0)).toBe(true);

    await f.allocate(4 * MiB, MiB, true);
    expect(await f.size()).toBe(2 * MiB);
    expect(await f.allocatedBytes()).toBeGreaterThanOrEqual(3 * MiB);
  });

  it("punchHole deallocates and reads zeros; size is kept", async () => {
    const f = await openNew();
    await f.write(0, pattern(2 * MiB, 5));
    await f.flush();
    const before = await f.allocatedBytes();
    await f.punchHole(512 * KiB, MiB);
    expect(await f.size()).toBe(2 * MiB);
    expect(await f.allocatedBytes()).toBe(before - MiB);
    const back = new Uint8Array(2 * MiB);
    await f.readFull(0, back);
    const expected = pattern(2 * MiB, 5);
    expected.fill(0, 512 * KiB, 512 * KiB + MiB);
    expectBytes(back, expected);
  });

  it("zeroRange reads zeros and keeps the range allocated; without KEEP_SIZE it extends", async () => {
    const f = await openNew();
    if (!f.capabilities.zeroRange) {
      await expectEngineError(f.zeroRange(0, 4096), "UNSUPPORTED", "HOST_ZERO_RANGE_UNSUPPORTED");
      return;
    }
    await f.write(0, pattern(MiB, 6));
    await f.flush();
    const before = await f.allocatedBytes();
    await f.zeroRange(64 * KiB, 128 * KiB, true);
    expect(await f.allocatedBytes()).toBe(before);
    const back = new Uint8Array(MiB);
    await f.readFull(0, back);
    const expected = pattern(MiB, 6);
    expected.fill(0, 64 * KiB, 192 * KiB);
    expectBytes(back, expected);

    await f.zeroRange(MiB, MiB);
    expect(await f.size()).toBe(2 * MiB);
  });

  it("maps errno from the FFI call (EFBIG beyond the file system's maximum size → NO_SPACE)", async () => {
    const f = await openNew();
    const err = await expectEngineError(f.allocate(2 ** 52, 4096), "NO_SPACE");
    expect(err.reason).toBe("HOST_EFBIG");
  });
});

describe("SEEK_DATA / SEEK_HOLE", () => {
  it("finds exact data and hole boundaries in a sparse file", async () => {
    const f = await openNew();
    await f.truncate(8 * MiB);
    await f.write(MiB, pattern(64 * KiB, 1));
    await f.write(5 * MiB, pattern(128 * KiB, 2));
    expect(await f.seekData(0)).toBe(MiB);
    expect(await f.seekHole(0)).toBe(0);
    expect(await f.seekHole(MiB)).toBe(MiB + 64 * KiB);
    expect(await f.seekData(MiB + 64 * KiB)).toBe(5 * MiB);
    expect(await f.seekData(MiB + 10)).toBe(MiB + 10);
    expect(await f.seekHole(5 * MiB)).toBe(5 * MiB + 128 * KiB);
    expect(await f.seekData(5 * MiB + 128 * KiB)).toBeNull();
    expect(await f.seekHole(5 * MiB + 128 * KiB)).toBe(5 * MiB + 128 * KiB);
    // At and past end of file: no data, and the position itself is a hole.
    expect(await f.seekData(8 * MiB)).toBeNull();
    expect(await f.seekHole(9 * MiB)).toBe(9 * MiB);
  });

  it("end of file counts as a hole for a fully written file", async () => {
    const f = await openNew();
    await f.write(0, pattern(3 * 4096, 3));
    expect(await f.seekData(0)).toBe(0);
    expect(await f.seekHole(0)).toBe(3 * 4096);
  });
});

describe("flush and fsync failure", () => {
  it("flush succeeds on a healthy file and the data is on disk", async () => {
    const f = await openNew();
    await f.write(0, pattern(4096, 8), { fua: true });
    await f.flush();
    expect((await stat(join(dir, "a.img"))).size).toBe(4096);
  });

  it("an fsync failure is permanent for the file", async () => {
    let failNext = true;
    const f = await openHostFile(join(dir, "s.img"), {
      readOnly: false,
      create: "new",
      datasync: async () => {
        if (failNext) {
          failNext = false;
          throw Object.assign(new Error("fdatasync: EIO"), { code: "EIO" });
        }
      },
    });
    opened.push(f);
    await f.write(0, pattern(4096, 9));
    const first = await expectEngineError(f.flush(), "FSYNC_FAILED", "HOST_FSYNC_FAILED");
    expect(first.metadata.errno).toBe("EIO");
    // The underlying call would now succeed, but the lost pages stay lost: keep failing.
    await expectEngineError(f.flush(), "FSYNC_FAILED");
    await expectEngineError(f.write(0, new Uint8Array(1)), "FSYNC_FAILED");
    await expectEngineError(f.writev(0, [new Uint8Array(1)]), "FSYNC_FAILED");
    await expectEngineError(f.allocate(0, 4096), "FSYNC_FAILED");
    // Reads still work, so what is on disk can be inspected.
    const back = new Uint8Array(4096);
    await f.readFull(0, back);
    expectBytes(back, pattern(4096, 9));
  });
});

describe("write-behind", () => {
  /** A file whose fdatasync calls are recorded and finish only when released, so tests see them running. */
  async function openWithHeldSyncs(writeBehindBytes: number | undefined) {
    const syncs: Array<{ release: (error?: Error) => void }> = [];
    const f = await openHostFile(join(dir, "wb.img"), {
      readOnly: false,
      create: "new",
      ...(writeBehindBytes === undefined ? {} : { writeBehindBytes }),
      datasync: () =>
        new Promise<void>((resolve, reject) => {
          syncs.push({ release: (error) => (error ? reject(error) : resolve()) });
        }),
    });
    opened.push(f);
    return { f, syncs };
  }
  const settle = () => new Promise((resolve) => setImmediate(resolve));

  it("starts one background fdatasync per step of buffered writes, never two at once", async () => {
    const { f, syncs } = await openWithHeldSyncs(256 * KiB);
    await f.write(0, pattern(128 * KiB, 1));
    expect(syncs).toHaveLength(0);
    await f.writev(128 * KiB, [pattern(64 * KiB, 2), pattern(64 * KiB, 3)]);
    expect(syncs).toHaveLength(1);
    // While it runs, more steps of writes start nothing.
    await f.write(256 * KiB, pattern(512 * KiB, 4));
    expect(syncs).toHaveLength(1);
    syncs[0]?.release();
    await settle();
    await f.write(768 * KiB, pattern(256 * KiB, 5));
    expect(syncs).toHaveLength(2);
    // flush waits for the background one, then syncs itself (data written since it started needs it).
    const flushed = f.flush();
    await settle();
    expect(syncs).toHaveLength(2);
    syncs[1]?.release();
    await settle();
    expect(syncs).toHaveLength(3);
    syncs[2]?.release();
    await flushed;
    const back = new Uint8Array(1024 * KiB);
    await f.readFull(0, back);
    expectBytes(back.subarray(768 * KiB), pattern(256 * KiB, 5));
  });

  it("is off unless asked for", async () => {
    const { f, syncs } = await openWithHeldSyncs(undefined);
    await f.write(0, pattern(4 * MiB, 6));
    expect(syncs).toHaveLength(0);
  });

  it("a failed background fdatasync fails the next flush, and the file stays failed", async () => {
    const { f, syncs } = await openWithHeldSyncs(64 * KiB);
    await f.write(0, pattern(64 * KiB, 7));
    expect(syncs).toHaveLength(1);
    syncs[0]?.release(Object.assign(new Error("fdatasync: EIO"), { code: "EIO" }));
    await settle();
    // The kernel reported the error to that call only: a second fdatasync would succeed over lost pages.
    const error = await expectEngineError(f.flush(), "FSYNC_FAILED", "HOST_FSYNC_FAILED");
    expect(error.metadata.errno).toBe("EIO");
    expect(syncs).toHaveLength(1);
    await expectEngineError(f.write(0, new Uint8Array(1)), "FSYNC_FAILED");
  });

  it("close waits for a background fdatasync under way", async () => {
    const { f, syncs } = await openWithHeldSyncs(64 * KiB);
    await f.write(0, pattern(64 * KiB, 8));
    let closed = false;
    const closing = f.close().then(() => {
      closed = true;
    });
    await settle();
    expect(closed).toBe(false);
    syncs[0]?.release();
    await closing;
    expect(closed).toBe(true);
  });
});

describe("capability probe agrees with the file system", () => {
  // tmpfs has no FALLOC_FL_ZERO_RANGE: there the probe must report it missing and the call must refuse.
  const dirs = [tmpdir(), "/dev/shm"].filter((d) => existsSync(d));
  it.each(dirs)("in %s, reported capabilities work and missing ones fail with UNSUPPORTED", async (base) => {
    const own = await mkdtemp(join(base, "vdisk-caps-"));
    try {
      const f = await openHostFile(join(own, "c.img"), { readOnly: false, create: "new" });
      opened.push(f);
      await f.write(0, pattern(256 * KiB, 1));
      const calls = {
        allocate: () => f.allocate(0, 64 * KiB, true),
        punchHole: () => f.punchHole(64 * KiB, 64 * KiB),
        zeroRange: () => f.zeroRange(128 * KiB, 64 * KiB, true),
      };
      for (const [capability, call] of Object.entries(calls)) {
        const supported = f.capabilities[capability as keyof typeof calls];
        if (supported) await call();
        else await expectEngineError(call(), "UNSUPPORTED");
      }
      if (base === "/dev/shm") expect(f.capabilities.zeroRange).toBe(false);
    } finally {
      await rm(own, { recursive: true, force: true });
    }
  });
});

describe("fillZeros", () => {
  it("writes real zeros over an unaligned range, leaving the bytes around it, and extends the file", async () => {
    const f = await openNew();
    const before = pattern(20 * MiB, 7);
    await f.write(0, before);
    const start = 1000;
    const length = 17 * MiB + 123;
    expect(f.fillZeros).toBeDefined();
    await f.fillZeros?.(start, length);
    const back = new Uint8Array(20 * MiB);
    await f.readFull(0, back);
    const expected = Uint8Array.from(before);
    expected.fill(0, start, start + length);
    expectBytes(back, expected);
    // Past the end: the file grows, and the new blocks are allocated (not a hole).
    await f.fillZeros?.(24 * MiB, 8 * MiB);
    await f.flush();
    expect(await f.size()).toBe(32 * MiB);
    expect(await f.seekData(24 * MiB)).toBe(24 * MiB);
    expect(await f.seekHole(24 * MiB)).toBe(32 * MiB);
  });
});

describe("directWrites", () => {
  async function openDirect(name: string): Promise<HostFile> {
    const f = await openHostFile(join(dir, name), { readOnly: false, create: "new", directWrites: true });
    opened.push(f);
    return f;
  }

  /** Whether [offset, offset + length) of the file is in the page cache (preadv2 RWF_NOWAIT succeeds). */
  async function cached(name: string, offset: number, length: number): Promise<boolean> {
    const handle = await open(join(dir, name), "r");
    try {
      const result = readCachedSync(handle.fd, new Uint8Array(length), offset);
      // Without RWF_NOWAIT reads the page cache cannot be observed: fail rather than pass vacuously.
      expect(result, "preadv2(RWF_NOWAIT) support").not.toBe("unsupported");
      return result === length;
    } finally {
      await handle.close();
    }
  }

  it("writes unaligned ranges from unaligned memory exactly, alongside buffered and concurrent writes", async () => {
    const f = await openDirect("d.img");
    const reference = new Uint8Array(12 * MiB);
    const writes: Array<[number, Uint8Array]> = [
      [1000, pattern(3 * MiB + 77, 1).subarray(5)], // unaligned offset, length and memory
      [4 * MiB, pattern(2 * MiB, 2)], // aligned everything
      [6 * MiB + 4096, pattern(100, 3)], // small: buffered
      [6 * MiB + 8192, pattern(MiB, 4)], // aligned, right after a buffered page
      [8 * MiB - 10, pattern(4 * MiB + 10, 5)], // ends at end of file
    ];
    await Promise.all(writes.map(([offset, data]) => f.write(offset, data)));
    for (const [offset, data] of writes) reference.set(data, offset);
    const back = new Uint8Array(reference.length);
    await f.readFull(0, back);
    expectBytes(back, reference);
    expect(await f.size()).toBe(12 * MiB);
    await f.flush();
  });

  it("keeps the aligned body of large writes out of the page cache, and small writes in it", async () => {
    const f = await openDirect("c.img");
    await f.write(0, pattern(4 * MiB, 6));
    await f.write(4 * MiB, pattern(4096, 7));
    expect(await cached("c.img", 0, 4 * MiB)).toBe(false);
    expect(await cached("c.img", 4 * MiB, 4096)).toBe(true);
  });

  it("is off unless asked for: the same write stays in the page cache", async () => {
    const f = await openNew("b.img");
    await f.write(0, pattern(4 * MiB, 8));
    expect(await cached("b.img", 0, 4 * MiB)).toBe(true);
  });
});
