import { describe, expect, it } from "vitest";
import type { Extent } from "../types.js";
import { ExtentBuilder, extentsMergeable } from "./extent-builder.js";

function ext(start: number, length: number, over: Partial<Extent> = {}): Extent {
  return { start, length, depth: 0, present: true, zero: false, data: true, compressed: false, ...over };
}

function build(start: number, end: number, extents: Extent[]): Extent[] {
  const builder = new ExtentBuilder(start, end);
  const out: Extent[] = [];
  for (const e of extents) {
    builder.add(e);
    out.push(...builder.drain());
  }
  out.push(...builder.finish());
  return out;
}

describe("ExtentBuilder", () => {
  it("merges adjacent equal extents", () => {
    expect(build(0, 300, [ext(0, 100), ext(100, 100), ext(200, 100)])).toEqual([ext(0, 300)]);
  });

  it("keeps extents apart when any reported property differs", () => {
    const variants: Partial<Extent>[] = [
      { depth: 1 },
      { present: false },
      { zero: true },
      { data: false },
      { compressed: true },
      { offset: 100 },
    ];
    for (const v of variants) {
      expect(build(0, 200, [ext(0, 100), ext(100, 100, v)])).toHaveLength(2);
    }
  });

  it("merges host offsets only when they are contiguous", () => {
    expect(build(0, 200, [ext(0, 100, { offset: 1000 }), ext(100, 100, { offset: 1100 })])).toEqual([
      ext(0, 200, { offset: 1000 }),
    ]);
    expect(build(0, 200, [ext(0, 100, { offset: 1000 }), ext(100, 100, { offset: 5000 })])).toHaveLength(2);
  });

  it("clips to the range, shifting host offsets with the start", () => {
    expect(build(50, 250, [ext(0, 100, { offset: 1000 }), ext(100, 200, { offset: 1100 })])).toEqual([
      ext(50, 200, { offset: 1050 }),
    ]);
  });

  it("drops zero-length extents and extents past the end", () => {
    expect(build(0, 100, [ext(0, 0), ext(0, 100), ext(100, 0), ext(100, 50, { zero: true })])).toEqual([
      ext(0, 100),
    ]);
  });

  it("rejects gaps, overlaps and a late first extent", () => {
    const gap = new ExtentBuilder(0, 300);
    gap.add(ext(0, 100));
    expect(() => gap.add(ext(150, 100))).toThrow(/does not continue/);
    const overlap = new ExtentBuilder(0, 300);
    overlap.add(ext(0, 100));
    expect(() => overlap.add(ext(50, 100))).toThrow(/does not continue/);
    expect(() => new ExtentBuilder(10, 300).add(ext(20, 100))).toThrow(/after the range start/);
  });

  it("refuses to finish before the range is covered", () => {
    const builder = new ExtentBuilder(0, 300);
    builder.add(ext(0, 100));
    expect(() => builder.finish()).toThrow(/cover/);
  });

  it("holds back the last extent until it can no longer grow", () => {
    const builder = new ExtentBuilder(0, 400);
    builder.add(ext(0, 100));
    expect(builder.drain()).toEqual([]);
    builder.add(ext(100, 100, { zero: true, data: false }));
    expect(builder.drain()).toEqual([ext(0, 100)]);
    builder.add(ext(200, 200, { zero: true, data: false }));
    expect(builder.drain()).toEqual([]);
    expect(builder.finish()).toEqual([ext(100, 300, { zero: true, data: false })]);
  });

  it("output is always ascending, contiguous, non-empty and maximally merged", () => {
    // A deterministic pseudo-random stream of small extents with few distinct kinds.
    let seed = 12345;
    const next = (): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed;
    };
    for (let round = 0; round < 50; round++) {
      const input: Extent[] = [];
      let pos = 0;
      while (pos < 10000) {
        const length = next() % 700;
        const kind = next() % 3;
        input.push(ext(pos, length, { zero: kind === 1, data: kind !== 1, depth: kind === 2 ? 1 : 0 }));
        pos += length;
      }
      const start = next() % 3000;
      const end = start + (next() % (pos - start));
      const out = build(start, end, input);
      let cursor = start;
      for (let i = 0; i < out.length; i++) {
        const e = out[i] as Extent;
        expect(e.start).toBe(cursor);
        expect(e.length).toBeGreaterThan(0);
        if (i > 0) expect(extentsMergeable(out[i - 1] as Extent, e)).toBe(false);
        cursor += e.length;
      }
      expect(cursor).toBe(end);
    }
  });
});
