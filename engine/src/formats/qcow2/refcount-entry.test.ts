import { describe, expect, it } from "vitest";
import { getRefcountEntry, maxRefcount, setRefcountEntry } from "./refcount-entry.js";

describe("refcount packing", () => {
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    it(`stores ${bits}-bit refcounts independently`, () => {
      const block = new Uint8Array(512);
      const entries = (512 * 8) / bits;
      const max = Math.min(maxRefcount(bits), 2 ** 40);
      const value = (i: number) => (i * 2654435761) % (max + 1);
      for (let i = 0; i < entries; i++) setRefcountEntry(block, i, bits, value(i));
      for (let i = 0; i < entries; i++) expect(getRefcountEntry(block, i, bits)).toBe(value(i));
      setRefcountEntry(block, 1, bits, 0);
      expect(getRefcountEntry(block, 0, bits)).toBe(value(0));
      expect(getRefcountEntry(block, 2, bits)).toBe(value(2));
      expect(() => setRefcountEntry(block, 0, bits, maxRefcount(bits) + 1)).toThrow(RangeError);
    });
  }

  it("packs sub-byte widths least-significant bits first, wider ones big-endian", () => {
    const b1 = new Uint8Array(2);
    setRefcountEntry(b1, 0, 1, 1);
    setRefcountEntry(b1, 9, 1, 1);
    expect([...b1]).toEqual([0x01, 0x02]);
    const b4 = new Uint8Array(1);
    setRefcountEntry(b4, 1, 4, 0xa);
    expect(b4[0]).toBe(0xa0);
    const b16 = new Uint8Array(4);
    setRefcountEntry(b16, 1, 16, 0x0102);
    expect([...b16]).toEqual([0, 0, 1, 2]);
  });
});
