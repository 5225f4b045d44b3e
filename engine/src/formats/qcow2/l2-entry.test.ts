import { describe, expect, it } from "vitest";
import { EngineError } from "../../errors.js";
import {
  classifyL1Entry,
  classifyL2Entry,
  type EntryContext,
  encodeCompressedEntry,
  encodeStandardEntry,
} from "./l2-entry.js";

const v3: EntryContext = { version: 3, clusterBits: 16, extendedL2: false };
const v2: EntryContext = { version: 2, clusterBits: 16, extendedL2: false };
const ext: EntryContext = { version: 3, clusterBits: 16, extendedL2: true };
const COPIED = 0x8000_0000;

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof EngineError) return `${err.code}/${err.reason}`;
    throw err;
  }
  return "ok";
}

describe("qcow2 L2 entry classification", () => {
  it.each([
    ["unallocated", v3, 0, 0, "unallocated", 0],
    ["zero-plain", v3, 0, 1, "zero-plain", 0],
    ["zero-alloc", v3, COPIED, 0x30000 | 1, "zero-alloc", 0x30000],
    ["normal", v3, COPIED, 0x50000, "normal", 0x50000],
    ["normal shared (no COPIED)", v3, 0, 0x50000, "normal", 0x50000],
    ["normal above 4 GiB", v2, COPIED | 0x12, 0x10000, "normal", 0x12_0001_0000],
  ] as const)("%s", (_n, ctx, hi, lo, type, host) => {
    const e = classifyL2Entry(ctx, hi, lo);
    expect(e.type).toBe(type);
    expect(e.hostOffset).toBe(host);
  });

  it.each([
    ["reserved low bits", v3, COPIED, 0x50000 | 0x2, "CORRUPT/QCOW2_L2_ENTRY_INVALID"],
    ["reserved high bits", v3, COPIED | 0x0100_0000, 0x50000, "CORRUPT/QCOW2_L2_ENTRY_INVALID"],
    ["unaligned host offset", v3, COPIED, 0x50200, "CORRUPT/QCOW2_CLUSTER_OFFSET_UNALIGNED"],
    ["zero flag in v2", v2, 0, 1, "CORRUPT/QCOW2_ZERO_IN_V2"],
    ["COPIED with offset 0", v3, COPIED, 0, "CORRUPT/QCOW2_L2_ENTRY_INVALID"],
    ["compressed with COPIED", v3, COPIED | 0x4000_0000, 0x1000, "CORRUPT/QCOW2_L2_ENTRY_INVALID"],
  ] as const)("rejects %s", (_n, ctx, hi, lo, expected) => {
    expect(reason(() => classifyL2Entry(ctx, hi, lo))).toBe(expected);
  });

  it("decodes compressed descriptors", () => {
    const { hi, lo } = encodeCompressedEntry(16, 0x123456, 3);
    const e = classifyL2Entry(v3, hi, lo);
    expect(e.type).toBe("compressed");
    expect(e.compressed).toEqual({ offset: 0x123456, length: 4 * 512 - (0x123456 % 512) });
  });

  it("classifies extended L2 subclusters", () => {
    const host = encodeStandardEntry(0x40000, false, true);
    const alloc = 0b0101;
    const zero = 0b1010;
    expect(classifyL2Entry(ext, host.hi, host.lo, alloc, zero, 0).type).toBe("normal");
    expect(classifyL2Entry(ext, host.hi, host.lo, alloc, zero, 1).type).toBe("zero-alloc");
    expect(classifyL2Entry(ext, host.hi, host.lo, alloc, zero, 4).type).toBe("unallocated-alloc");
    expect(classifyL2Entry(ext, 0, 0, 0, 0xffff_ffff, 31).type).toBe("zero-plain");
    expect(classifyL2Entry(ext, 0, 0, 0, 0, 3).type).toBe("unallocated");
    expect(reason(() => classifyL2Entry(ext, host.hi, host.lo, 1, 1, 0))).toBe(
      "CORRUPT/QCOW2_L2_BITMAP_INVALID",
    );
    expect(reason(() => classifyL2Entry(ext, 0, 0, 1, 0, 5))).toBe("CORRUPT/QCOW2_L2_BITMAP_INVALID");
    expect(reason(() => classifyL2Entry(ext, host.hi, host.lo | 1, 0, 0, 0))).toBe(
      "CORRUPT/QCOW2_L2_ENTRY_INVALID",
    );
    const c = encodeCompressedEntry(16, 0x20000, 0);
    expect(reason(() => classifyL2Entry(ext, c.hi, c.lo, 1, 0, 0))).toBe("CORRUPT/QCOW2_L2_ENTRY_INVALID");
  });

  it("classifies L1 entries", () => {
    expect(classifyL1Entry(COPIED, 0x20000, 65536, 0)).toEqual({ l2Offset: 0x20000, copied: true });
    expect(reason(() => classifyL1Entry(0, 0x20200, 65536, 3))).toBe("CORRUPT/QCOW2_L2_OFFSET_UNALIGNED");
    expect(reason(() => classifyL1Entry(0x0100_0000, 0x20000, 65536, 3))).toBe(
      "CORRUPT/QCOW2_L1_ENTRY_INVALID",
    );
    expect(reason(() => classifyL1Entry(0, 0x20001, 65536, 3))).toBe("CORRUPT/QCOW2_L1_ENTRY_INVALID");
  });

  it("encodes what it classifies", () => {
    for (const [host, zero, copied] of [
      [0x10000, false, true],
      [0x7_0000_0000, true, true],
      [0, true, false],
    ] as const) {
      const { hi, lo } = encodeStandardEntry(host, zero, copied);
      const e = classifyL2Entry(v3, hi, lo);
      expect(e.hostOffset).toBe(host);
      expect(e.copied).toBe(copied);
      expect(e.type.startsWith("zero")).toBe(zero);
    }
  });
});
