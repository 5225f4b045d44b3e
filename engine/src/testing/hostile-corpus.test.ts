import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../block-image.js";
import { mapExtents, readAt } from "../core/index.js";
import { EngineError } from "../errors.js";
import { qcow2Driver } from "../formats/qcow2/index.js";
import { vmdkDriver } from "../formats/vmdk/index.js";
import { createMemoryFile } from "../host/memory-file.js";
import { requireQemuImg } from "./images.js";

/**
 * Hostile-input corpus, reliability.md §a rows B–F at the engine level: the catalogue cases the driver
 * test files (qcow2/corrupt-images.test.ts: 38 cases over B1–B17, C1–C6, D1–D11, E1/E3;
 * vmdk/hostile.test.ts: 32 cases over F1–F10) do not already cover. Each case names the expected
 * code/reason and runs within a time and memory bound, on a memory HostFile only.
 */

let dir = "";
let counter = 0;
beforeAll(() => {
  requireQemuImg();
  dir = mkdtempSync(join(tmpdir(), "vdisk-hostile-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function qemuImage(
  format: "qcow2" | "vmdk",
  options: string,
  io: string[] = ["write -P 0x11 0 64k"],
  size = "8M",
): Buffer {
  const path = join(dir, `img-${counter++}.${format}`);
  execFileSync("qemu-img", ["create", "-q", "-f", format, "-o", options, path, size]);
  if (io.length > 0)
    execFileSync("qemu-io", ["-f", format, ...io.flatMap((c) => ["-c", c]), path], { stdio: "ignore" });
  return readFileSync(path);
}

const u32 = (b: Buffer, at: number, v: number) => b.writeUInt32BE(v >>> 0, at);
const u64 = (b: Buffer, at: number, v: bigint) => b.writeBigUInt64BE(v, at);
const r64 = (b: Buffer, at: number) => Number(b.readBigUInt64BE(at));

const TIME_BOUND_MS = 3000;
const HEAP_BOUND = 256 * 1024 * 1024;

/** Runs `work` and returns its EngineError (failing on success, on other errors, or on time/memory overrun). */
async function rejects(work: () => Promise<unknown>): Promise<EngineError> {
  const started = performance.now();
  const heap = process.memoryUsage().heapUsed;
  try {
    await work();
  } catch (err) {
    expect(performance.now() - started).toBeLessThan(TIME_BOUND_MS);
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(HEAP_BOUND);
    if (!(err instanceof EngineError)) throw err;
    return err;
  }
  throw new Error("expected a typed EngineError");
}

async function bounded<T>(work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const heap = process.memoryUsage().heapUsed;
  const result = await work();
  expect(performance.now() - started).toBeLessThan(TIME_BOUND_MS);
  expect(process.memoryUsage().heapUsed - heap).toBeLessThan(HEAP_BOUND);
  return result;
}

function openQcow2(bytes: Uint8Array, readOnly = true): Promise<BlockImage> {
  return qcow2Driver.open(createMemoryFile({ data: bytes, readOnly }), { readOnly });
}

async function readWhole(img: BlockImage): Promise<void> {
  for (let at = 0; at < img.virtualSize; at += 1 << 20)
    await readAt(img, at, Math.min(1 << 20, img.virtualSize - at));
}

describe("qcow2 header fields (row B, remaining cases)", () => {
  it.each([
    ["B3 v3 header_length 96 (< 104)", 96, "CORRUPT", "QCOW2_BAD_HEADER_LENGTH"],
    ["B3 v3 header_length 108 (not a multiple of 8)", 108, "CORRUPT", "QCOW2_BAD_HEADER_LENGTH"],
  ] as const)("%s", async (_name, length, code, reason) => {
    const b = qemuImage("qcow2", "cluster_size=4096");
    u32(b, 100, length);
    expect(await rejects(() => openQcow2(b))).toMatchObject({ code, reason });
  });

  it.each([
    ["B8 compression type zstd without the incompatible bit", 0n, 1, "QCOW2_COMPRESSION_TYPE_MISMATCH"],
    ["B8 incompatible compression bit with type zlib", 8n, 0, "QCOW2_COMPRESSION_TYPE_MISMATCH"],
    ["B8 unknown compression type 7", 8n, 7, "QCOW2_UNKNOWN_COMPRESSION_TYPE"],
  ] as const)("%s", async (_name, incompatible, type, reason) => {
    const b = qemuImage("qcow2", "cluster_size=4096");
    u64(b, 72, incompatible);
    b[104] = type;
    const err = await rejects(() => openQcow2(b));
    expect(["CORRUPT", "UNSUPPORTED"]).toContain(err.code);
    expect(err.reason).toBe(reason);
  });

  it("B6 dirty bit: read-only open reads, read-write open repairs before use", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096,lazy_refcounts=on", ["write -P 0x11 0 64k"]);
    u64(b, 72, 1n);
    const ro = await bounded(() => openQcow2(b));
    expect(ro.details().qcow2?.dirty).toBe(true);
    expect(Buffer.from(await readAt(ro, 0, 4096)).every((x) => x === 0x11)).toBe(true);
    await ro.close();
    const rw = await bounded(() => openQcow2(b, false));
    expect(rw.details().qcow2?.dirty).toBe(false);
    expect((await rw.check({ repair: "none" })).corruptions).toBe(0);
    await rw.close();
  });

  it("B12 virtual size 0 opens as an empty image", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096", []);
    u64(b, 24, 0n);
    const img = await bounded(() => openQcow2(b));
    expect(img.virtualSize).toBe(0);
    const extents = [];
    for await (const e of mapExtents(img)) extents.push(e);
    expect(extents).toEqual([]);
    await img.close();
  });

  it("B17 snapshot table offset unaligned", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096", []);
    u32(b, 60, 1);
    u64(b, 64, 4096n + 8n);
    expect(await rejects(() => openQcow2(b))).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_TABLE_OFFSET_INVALID",
    });
  });

  it("B17 snapshot table beyond the end of the file", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096", []);
    u32(b, 60, 3);
    u64(b, 64, 1n << 40n);
    expect(await rejects(() => openQcow2(b))).toMatchObject({ code: "CORRUPT" });
  });
});

describe("qcow2 header extensions (row C, remaining cases)", () => {
  it("C7 feature-name table of unterminated names is bounded display text only", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096", ["write -P 0x11 0 4k"]);
    // Replace the extension area with one feature-name table of 60 entries, none NUL-terminated.
    const table = Buffer.alloc(60 * 48, 0x41);
    for (let i = 0; i < 60; i++) {
      table[i * 48] = 1; // compatible
      table[i * 48 + 1] = i % 64;
    }
    // qemu-img's v3 header is 112 bytes (compression type + padding); extensions follow.
    u32(b, 112, 0x6803f857);
    u32(b, 116, table.length);
    table.copy(b, 120);
    u32(b, 120 + table.length, 0); // end of extensions
    u32(b, 124 + table.length, 0);
    const img = await bounded(() => openQcow2(b));
    expect(Buffer.from(await readAt(img, 0, 4096)).every((x) => x === 0x11)).toBe(true);
    await img.close();
  });

  it.each([
    ["C1 extension running one byte past cluster 0", 4096 - 120 + 1],
    ["C1 extension length 2^32-1", 0xffffffff],
  ] as const)("%s", async (_name, length) => {
    const b = qemuImage("qcow2", "cluster_size=4096", []);
    u32(b, 112, 0x1234_5678);
    u32(b, 116, length);
    expect(await rejects(() => openQcow2(b))).toMatchObject({
      code: "CORRUPT",
      reason: "QCOW2_HEADER_EXTENSION_TOO_LARGE",
    });
  });
});

describe("qcow2 tables and entries (row D, remaining cases)", () => {
  it("D5 L2 entry with host offset 0 and the COPIED flag", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096");
    const l2 = r64(b, r64(b, 40)) & 0x00ff_ffff_ffff_fe00;
    u64(b, l2, 1n << 63n);
    const img = await openQcow2(b);
    const err = await rejects(() => readAt(img, 0, 4096));
    expect(err.code).toBe("CORRUPT");
  });

  it("D12 extended L2 subcluster both allocated and reading as zero", async () => {
    const b = qemuImage("qcow2", "cluster_size=16384,extended_l2=on", ["write -P 0x11 0 16k"]);
    const l2 = r64(b, r64(b, 40)) & 0x00ff_ffff_ffff_fe00;
    // The entry's 64-bit subcluster bitmap: bits 32–63 "reads as zero", bits 0–31 "allocated".
    b.writeUInt32BE(0x0000_0001, l2 + 8); // subcluster 0 reads as zero...
    b.writeUInt32BE(0x0000_0001, l2 + 12); // ...and is allocated
    const img = await openQcow2(b);
    const err = await rejects(() => readAt(img, 0, 2048));
    expect(err.code).toBe("CORRUPT");
  });

  it("D13 every L1 entry points at the same L2 table: map and check stay bounded and report it", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096", ["write -P 0x11 0 4k"], "256M");
    const l1 = r64(b, 40);
    const l1Size = b.readUInt32BE(36);
    const first = b.readBigUInt64BE(l1);
    for (let i = 1; i < l1Size; i++) b.writeBigUInt64BE(first, l1 + i * 8);
    const img = await bounded(() => openQcow2(b));
    const extents = await bounded(async () => {
      const out = [];
      for await (const e of mapExtents(img)) out.push(e);
      return out;
    });
    expect(extents.length).toBeGreaterThan(1);
    const check = await bounded(() => img.check({ repair: "none" }));
    expect(check.corruptions).toBeGreaterThan(0);
    await img.close();
  });

  it("D3 reads never extend the file: a table entry far past EOF fails the read", async () => {
    const b = qemuImage("qcow2", "cluster_size=4096");
    const l2 = r64(b, r64(b, 40)) & 0x00ff_ffff_ffff_fe00;
    u64(b, l2, (1n << 63n) | (1n << 45n));
    const file = createMemoryFile({ data: b, readOnly: true });
    const img = await qcow2Driver.open(file, { readOnly: true });
    const err = await rejects(() => readWhole(img));
    expect(err.code).toBe("CORRUPT");
    expect(await file.size()).toBe(b.length);
  });
});

describe("qcow2 snapshots (row E, remaining cases)", () => {
  it("E2 snapshot names running past the table", async () => {
    const path = join(dir, `snap-${counter++}.qcow2`);
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M"]);
    execFileSync("qemu-img", ["snapshot", "-c", "s", path]);
    const b = readFileSync(path);
    const table = r64(b, 64);
    b.writeUInt16BE(0xffff, table + 14); // name size
    expect(await rejects(() => openQcow2(b))).toMatchObject({ code: "CORRUPT" });
  });

  it("E2 more snapshots claimed than the table holds", async () => {
    const path = join(dir, `snap-${counter++}.qcow2`);
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M"]);
    execFileSync("qemu-img", ["snapshot", "-c", "s", path]);
    const b = readFileSync(path);
    u32(b, 60, 60000);
    expect(await rejects(() => openQcow2(b))).toMatchObject({ code: "CORRUPT" });
  });
});

describe("vmdk (row F, remaining cases)", () => {
  it("F4 capacity 0 with an embedded descriptor (descriptor indirection)", async () => {
    const b = qemuImage("vmdk", "subformat=monolithicSparse", []);
    b.writeBigUInt64LE(0n, 12);
    const err = await rejects(() =>
      vmdkDriver.open(createMemoryFile({ data: b, readOnly: true }), { readOnly: true }),
    );
    expect(err).toMatchObject({ code: "UNSUPPORTED", reason: "VMDK_DESCRIPTOR_FILE" });
  });

  it("F10 grain directory entry pointing far past EOF fails reads, never extends the file", async () => {
    const b = qemuImage("vmdk", "subformat=monolithicSparse", []);
    const gd = Number(b.readBigUInt64LE(56)) * 512;
    b.writeUInt32LE(0x7fff_fff0, gd);
    const file = createMemoryFile({ data: b, readOnly: true });
    const err = await rejects(async () => {
      const img = await vmdkDriver.open(file, { readOnly: true });
      await readWhole(img);
    });
    expect(err.code).toBe("CORRUPT");
    expect(await file.size()).toBe(b.length);
  });
});
