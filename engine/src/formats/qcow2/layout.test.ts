import { describe, expect, it } from "vitest";
import {
  clusterStart,
  compressedOffsetBits,
  l1EntriesFor,
  l1IndexOf,
  l2IndexOf,
  makeLayout,
  refcountIndexOf,
} from "./layout.js";

describe("qcow2 layout", () => {
  it("computes table geometry for every cluster size and refcount width", () => {
    for (let bits = 9; bits <= 21; bits++) {
      for (let order = 0; order <= 6; order++) {
        const l = makeLayout(bits, order, false);
        expect(l.clusterSize).toBe(2 ** bits);
        expect(l.l2Entries).toBe(2 ** bits / 8);
        expect(l.refcountsPerBlock).toBe((2 ** bits * 8) / 2 ** order);
        expect(l.l2Coverage).toBe(l.l2Entries * l.clusterSize);
      }
    }
    const ext = makeLayout(16, 4, true);
    expect(ext.l2Entries).toBe(4096);
    expect(ext.subclusterSize).toBe(2048);
  });

  it("maps guest offsets to L1/L2 indices", () => {
    const l = makeLayout(16, 4, false); // 8192 entries per L2, 512 MiB per table
    expect(l1IndexOf(l, 0)).toBe(0);
    expect(l1IndexOf(l, 512 * 2 ** 20 - 1)).toBe(0);
    expect(l1IndexOf(l, 512 * 2 ** 20)).toBe(1);
    expect(l2IndexOf(l, 65536 * 8191 + 5)).toBe(8191);
    expect(l2IndexOf(l, 65536 * 8192)).toBe(0);
    expect(clusterStart(l, 65536 * 3 + 17)).toBe(65536 * 3);
    expect(l1EntriesFor(l, 2 ** 40)).toBe(2048);
    expect(l1EntriesFor(l, 0)).toBe(0);
    expect(l1EntriesFor(makeLayout(9, 4, false), 2 ** 30)).toBe(32768);
    expect(l1IndexOf(l, 2 ** 52)).toBe(2 ** 52 / (512 * 2 ** 20)); // no 32-bit truncation
  });

  it("locates refcounts", () => {
    const l = makeLayout(9, 4, false); // 256 refcounts per 512-byte block
    expect(refcountIndexOf(l, 512 * 255)).toEqual({ tableIndex: 0, blockIndex: 255 });
    expect(refcountIndexOf(l, 512 * 256)).toEqual({ tableIndex: 1, blockIndex: 0 });
    const one = makeLayout(16, 0, false);
    expect(one.refcountsPerBlock).toBe(524288);
  });

  it("splits compressed descriptors as the spec says", () => {
    expect(compressedOffsetBits(16)).toBe(54);
    expect(compressedOffsetBits(9)).toBe(61);
    expect(compressedOffsetBits(21)).toBe(49);
  });
});
