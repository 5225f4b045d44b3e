import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EngineError } from "../../errors.js";
import { encodeCompressedEntry } from "./l2-entry.js";
import { openImage, qemu, qemuOk, requireQemu } from "./oracle-support.js";

const dir = join("/tmp", `vdisk-qcow2-corrupt-${process.pid}`);
const CS = 65536;

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let counter = 0;
/** A small qemu-made image with data in cluster 0 of the guest (one L2 table, one data cluster). */
function baseImage(
  options = "cluster_size=65536",
  io = ["write -P 0x11 0 65536", "write -P 0x12 1M 4096"],
): string {
  const path = join(dir, `img-${counter++}.qcow2`);
  qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, path, "8M"]);
  if (io.length > 0) qemuOk("qemu-io", ["-f", "qcow2", ...io.flatMap((c) => ["-c", c]), path]);
  return path;
}

function readU64(path: string, at: number): number {
  const b = Buffer.alloc(8);
  const fd = openSync(path, "r");
  readSync(fd, b, 0, 8, at);
  closeSync(fd);
  return Number(b.readBigUInt64BE(0));
}

function poke(path: string, at: number, bytes: number[] | Buffer): void {
  const fd = openSync(path, "r+");
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
  writeSync(fd, b, 0, b.length, at);
  closeSync(fd);
}

function u32(v: number): number[] {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return [...b];
}
function u64(v: bigint): number[] {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return [...b];
}

/** Offsets of the first L2 table and its first entry's data cluster. */
function tables(path: string): { l1: number; l2: number; reftable: number; refblock: number } {
  const l1 = readU64(path, 40);
  const l2 = readU64(path, l1) & 0x00ff_ffff_ffff_fe00;
  const reftable = readU64(path, 48);
  return { l1, l2, reftable, refblock: readU64(path, reftable) };
}

async function failure(run: () => Promise<unknown>): Promise<{ code: string; reason: string; ms: number }> {
  const started = performance.now();
  const heapBefore = process.memoryUsage().heapUsed;
  try {
    await run();
  } catch (err) {
    const ms = performance.now() - started;
    expect(err).toBeInstanceOf(EngineError);
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(256 * 1024 * 1024);
    return { code: (err as EngineError).code, reason: (err as EngineError).reason, ms };
  }
  throw new Error("expected a typed failure");
}

async function openFails(path: string, readOnly = true) {
  return failure(async () => {
    const img = await openImage(path, readOnly);
    await img.close();
  });
}

async function readFails(path: string, offset = 0, length = 65536) {
  const img = await openImage(path, true);
  try {
    return await failure(() => img.read(offset, Buffer.alloc(length)));
  } finally {
    await img.close();
  }
}

describe("hostile qcow2 images fail with typed errors in bounded time", () => {
  // Row B: header fields.
  it.each([
    ["B bad magic", 0, u32(0x51464900), "CORRUPT", "QCOW2_BAD_MAGIC"],
    ["B1 version 1", 4, u32(1), "UNSUPPORTED", "QCOW2_UNSUPPORTED_VERSION"],
    ["B2 cluster_bits 30", 20, u32(30), "UNSUPPORTED", "QCOW2_BAD_CLUSTER_BITS"],
    ["B2 cluster_bits 3", 20, u32(3), "CORRUPT", "QCOW2_BAD_CLUSTER_BITS"],
    ["B3 header_length 200000", 100, u32(200000), "CORRUPT", "QCOW2_BAD_HEADER_LENGTH"],
    ["B4 unknown incompatible bit", 72, u64(1n << 40n), "UNSUPPORTED", "QCOW2_UNKNOWN_INCOMPATIBLE_FEATURE"],
    ["B7 external data file bit", 72, u64(4n), "UNSUPPORTED", "QCOW2_EXTERNAL_DATA_FILE"],
    ["B9 refcount_order 9", 96, u32(9), "CORRUPT", "QCOW2_BAD_REFCOUNT_ORDER"],
    ["B10 AES encryption", 32, u32(1), "UNSUPPORTED", "QCOW2_ENCRYPTED"],
    ["B12 virtual size 2^62", 24, u64(1n << 62n), "UNSUPPORTED", "QCOW2_IMAGE_TOO_BIG"],
    ["B13 l1_size too small", 36, u32(0), "CORRUPT", "QCOW2_L1_TOO_SMALL"],
    ["B14 huge l1_size", 36, u32(0x7fff_ffff), "UNSUPPORTED", "QCOW2_L1_TOO_LARGE"],
    ["B14 L1 offset unaligned", 40, u64(0x30008n), "CORRUPT", "QCOW2_TABLE_OFFSET_INVALID"],
    ["B14 L1 offset beyond the file", 40, u64(1n << 50n), "CORRUPT", "QCOW2_TABLE_OFFSET_INVALID"],
    ["B15 no refcount table", 56, u32(0), "CORRUPT", "QCOW2_NO_REFCOUNT_TABLE"],
    ["B16 refcount table too large", 56, u32(0x100000), "UNSUPPORTED", "QCOW2_REFTABLE_TOO_LARGE"],
    ["B16 refcount table unaligned", 48, u64(0x10200n), "CORRUPT", "QCOW2_TABLE_OFFSET_INVALID"],
    ["B17 too many snapshots", 60, u32(1_000_000), "UNSUPPORTED", "QCOW2_TOO_MANY_SNAPSHOTS"],
    ["B11 backing name too long", 8, [...u64(512n), ...u32(5000)], "CORRUPT", "QCOW2_BACKING_NAME_TOO_LONG"],
  ] as const)("%s", async (_name, at, bytes, code, reason) => {
    const path = baseImage();
    poke(path, at, [...bytes]);
    const f = await openFails(path);
    expect([f.code, f.reason]).toEqual([code, reason]);
    expect(f.ms).toBeLessThan(2000);
  });

  it("B5 corrupt bit: read-only open works, read-write open is refused", async () => {
    const path = baseImage();
    poke(path, 72, u64(2n));
    const ro = await openImage(path, true);
    expect(ro.details().qcow2?.corrupt).toBe(true);
    await ro.close();
    expect(await openFails(path, false)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_CORRUPT" });
  });

  it("B truncated file", async () => {
    const path = join(dir, "short.qcow2");
    writeFileSync(path, readFileSync(baseImage()).subarray(0, 40));
    expect(await openFails(path)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_TRUNCATED" });
  });

  // Row C: header extensions (v3 header is 112 bytes; extensions start there).
  it.each([
    [
      "C1 extension larger than the area",
      [...u32(0xabcdef), ...u32(0x10000)],
      "CORRUPT",
      "QCOW2_HEADER_EXTENSION_TOO_LARGE",
    ],
    [
      "C2 backing format of 16 bytes",
      [...u32(0xe2792aca), ...u32(16)],
      "CORRUPT",
      "QCOW2_BACKING_FORMAT_TOO_LONG",
    ],
    [
      "C3 external data file name",
      [...u32(0x44415441), ...u32(11), ...Buffer.from("/etc/shadow")],
      "UNSUPPORTED",
      "QCOW2_EXTERNAL_DATA_FILE",
    ],
    [
      "C4 repeated extension",
      [...u32(0x77), ...u32(0), ...u32(0x77), ...u32(0)],
      "CORRUPT",
      "QCOW2_DUPLICATE_HEADER_EXTENSION",
    ],
    ["C5 crypto header without LUKS", [...u32(0x0537be77), ...u32(16)], "UNSUPPORTED", "QCOW2_ENCRYPTED"],
    [
      "C6 bitmaps extension with bad size",
      [...u32(0x23852875), ...u32(8)],
      "CORRUPT",
      "QCOW2_BAD_BITMAPS_EXTENSION",
    ],
  ] as const)("%s", async (_name, bytes, code, reason) => {
    const path = baseImage();
    poke(path, 112, [...bytes]);
    expect(await openFails(path)).toMatchObject({ code, reason });
  });

  // Row D: tables and entries, found when used.
  it("D1 L1 entry with an unaligned L2 offset", async () => {
    const path = baseImage();
    const { l1, l2 } = tables(path);
    poke(path, l1, u64(BigInt(l2 + 512) | (1n << 63n)));
    expect(await readFails(path)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_L2_OFFSET_UNALIGNED" });
  });

  it("D1 L1 entry with reserved bits", async () => {
    const path = baseImage();
    const { l1, l2 } = tables(path);
    poke(path, l1, u64(BigInt(l2) | (1n << 60n)));
    expect(await readFails(path)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_L1_ENTRY_INVALID" });
  });

  it("D2 L2 entry with an unaligned host offset / reserved bits / offset ≥ 2^56", async () => {
    for (const [entry, reason] of [
      [(1n << 63n) | 0x50200n, "QCOW2_CLUSTER_OFFSET_UNALIGNED"],
      [(1n << 63n) | 0x50000n | 0x4n, "QCOW2_L2_ENTRY_INVALID"],
      [(1n << 63n) | (1n << 57n), "QCOW2_L2_ENTRY_INVALID"],
    ] as const) {
      const path = baseImage();
      poke(path, tables(path).l2, u64(entry));
      expect(await readFails(path)).toMatchObject({ code: "CORRUPT", reason });
    }
  });

  it("D2 a bad entry inside a host-contiguous run is refused by read and block status", async () => {
    const path = baseImage("cluster_size=65536", ["write -P 0x11 0 256k"]);
    const { l2 } = tables(path);
    const first = BigInt(readU64(path, l2));
    // Entry 2 continues the run's host offsets but carries a reserved bit.
    poke(path, l2 + 16, u64(first + 2n * BigInt(CS) + 0x4n));
    expect(await readFails(path, 0, 4 * CS)).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_L2_ENTRY_INVALID",
    });
    const img = await openImage(path, true);
    try {
      expect(await failure(() => img.blockStatus(0, 4 * CS))).toMatchObject({
        code: "CORRUPT",
        reason: "QCOW2_L2_ENTRY_INVALID",
      });
      expect(await img.blockStatus(0, 2 * CS)).toMatchObject({ length: 2 * CS, allocated: true, data: true });
    } finally {
      await img.close();
    }
  });

  it("D3 data cluster and L2 table beyond the end of the file", async () => {
    const path = baseImage();
    poke(path, tables(path).l2, u64((1n << 63n) | (1n << 40n)));
    expect(await readFails(path)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_CLUSTER_OUT_OF_RANGE" });
    const path2 = baseImage();
    poke(path2, tables(path2).l1, u64((1n << 63n) | (1n << 40n)));
    expect(await readFails(path2)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_L2_OUT_OF_RANGE" });
  });

  it("D4 write into metadata is refused and marks the image corrupt", async () => {
    const path = baseImage();
    const { l2, l1 } = tables(path);
    poke(path, l2, u64((1n << 63n) | BigInt(l1))); // guest cluster 0 "is" the L1 table
    const img = await openImage(path, false);
    expect(await failure(() => img.write(0, Buffer.alloc(512, 1)))).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_WRITE_OVERLAPS_METADATA",
    });
    expect(await failure(() => img.write(4 << 20, Buffer.alloc(512, 1)))).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_CORRUPT",
    });
    await img.close();
    const info = JSON.parse(qemuOk("qemu-img", ["info", "--output=json", path])) as {
      "format-specific": { data: { corrupt: boolean } };
    };
    expect(info["format-specific"].data.corrupt).toBe(true);
    expect(await openFails(path, false)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_CORRUPT" });
  });

  it("D6 zero flag in a v2 image", async () => {
    const path = baseImage("compat=0.10");
    poke(path, tables(path).l2, u64(1n));
    expect(await readFails(path)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_ZERO_IN_V2" });
  });

  it("D7 compressed descriptor out of range, D8 garbage compressed data", async () => {
    const path = baseImage();
    const e = encodeCompressedEntry(16, 1 << 40, 2);
    poke(path, tables(path).l2, [...u32(e.hi), ...u32(e.lo)]);
    expect(await readFails(path)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_COMPRESSED_OUT_OF_RANGE" });
    const path2 = baseImage();
    const { l2 } = tables(path2);
    const g = encodeCompressedEntry(16, l2 + CS, 3); // points at the guest data cluster: not a deflate stream of 64 KiB
    poke(path2, l2, [...u32(g.hi), ...u32(g.lo)]);
    expect(await readFails(path2)).toMatchObject({ code: "CORRUPT", reason: "QCOW2_BAD_COMPRESSED_CLUSTER" });
  });

  it("D9 refcount block pointing outside the file", async () => {
    const path = baseImage();
    poke(path, tables(path).reftable, u64(1n << 40n));
    const img = await openImage(path, false);
    expect(await failure(() => img.write(6 << 20, Buffer.alloc(4096, 3)))).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_REFBLOCK_OUT_OF_RANGE",
    });
    await img.close();
    const path2 = baseImage();
    poke(path2, tables(path2).reftable, u64(0x10100n));
    const img2 = await openImage(path2, false);
    expect(await failure(() => img2.write(6 << 20, Buffer.alloc(4096, 3)))).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_REFBLOCK_UNALIGNED",
    });
    await img2.close();
  });

  it("D10/D11 refcounts below references are corruption, above are leaks; repair fixes both", async () => {
    const path = baseImage("cluster_size=65536", [
      "write -P 0x11 0 65536",
      "write -P 0x13 4M 65536",
      "discard 4M 65536",
    ]);
    const { refblock, l2 } = tables(path);
    const dataCluster = (readU64(path, l2) & 0x00ff_ffff_ffff_fe00) / CS;
    const freeCluster = statSync(path).size / CS - 1; // freed by the discard, still inside the file
    poke(path, refblock + dataCluster * 2, [0, 0]);
    poke(path, refblock + freeCluster * 2, [0, 1]);
    const qemuReport = JSON.parse(qemu("qemu-img", ["check", "--output=json", path]).stdout) as Record<
      string,
      number
    >;
    const img = await openImage(path, false);
    const found = await img.check({ repair: "none" });
    expect(found.corruptions).toBeGreaterThan(0);
    expect(found.leaks).toBe(1);
    expect({ corruptions: found.corruptions, leaks: found.leaks }).toEqual({
      corruptions: qemuReport.corruptions,
      leaks: qemuReport.leaks,
    });
    const fixed = await img.check({ repair: "all" });
    expect(fixed.corruptions).toBe(0);
    expect(fixed.leaks).toBe(0);
    await img.close();
    expect(qemuOk("qemu-img", ["check", path])).toMatch(/No errors were found/);
  });

  it("leaks alone are repaired in place by a leaks-only repair, as qemu-img check -r leaks does", async () => {
    const path = baseImage("cluster_size=4096", [
      "write -P 0x11 0 65536",
      "write -P 0x13 1M 65536",
      "discard 1M 65536",
    ]);
    const { refblock } = tables(path);
    const last = statSync(path).size / 4096 - 1;
    poke(path, refblock + last * 2, [0, 2]);
    poke(path, refblock + (last - 1) * 2, [0, 1]);
    const qemuReport = JSON.parse(qemu("qemu-img", ["check", "--output=json", path]).stdout) as Record<
      string,
      number
    >;
    expect(qemuReport.leaks).toBe(2);
    const img = await openImage(path, false);
    const fixed = await img.check({ repair: "leaks" });
    expect(fixed).toMatchObject({ leaks: 0, leaksFixed: 2, corruptions: 0 });
    await img.close();
    expect(qemuOk("qemu-img", ["check", path])).toMatch(/No errors were found/);
  });

  // Row E: snapshots.
  it("E1/E3 snapshot with too much extra data, snapshot L1 too large", async () => {
    for (const [at, bytes, reason] of [
      [36, u32(5000), "QCOW2_SNAPSHOT_EXTRA_DATA"],
      [8, u32(0x1000_0000), "QCOW2_SNAPSHOT_L1_INVALID"],
    ] as const) {
      const path = baseImage();
      qemuOk("qemu-img", ["snapshot", "-c", "snap", path]);
      const table = readU64(path, 64);
      poke(path, table + at, [...bytes]);
      expect(await openFails(path)).toMatchObject({ code: "CORRUPT", reason });
    }
  });
});
