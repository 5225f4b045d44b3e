import { describe, expect, it } from "vitest";
import { findNonZeroRuns, isAllZero } from "./zero-runs.js";

describe("zero detection", () => {
  it("recognises all-zero buffers of any size, including ones larger than the shared zero buffer", () => {
    expect(isAllZero(new Uint8Array(0))).toBe(true);
    expect(isAllZero(new Uint8Array(4096))).toBe(true);
    expect(isAllZero(new Uint8Array(5 << 20))).toBe(true);
  });

  it("finds a single non-zero byte anywhere", () => {
    for (const at of [0, 1, 2047, 2048, 4095, 3 << 20]) {
      const b = new Uint8Array(Math.max(4096, at + 1));
      b[at] = 1;
      expect(isAllZero(b), `byte at ${at}`).toBe(false);
    }
  });

  it("splits data into runs of non-zero blocks", () => {
    const g = 1024;
    const b = new Uint8Array(8 * g);
    b[0] = 1; // block 0
    b[g + 5] = 1; // block 1
    b[4 * g + 100] = 1; // block 4
    b[8 * g - 1] = 1; // block 7
    expect(findNonZeroRuns(b, g)).toEqual([
      [0, 2 * g],
      [4 * g, 5 * g],
      [7 * g, 8 * g],
    ]);
    expect(findNonZeroRuns(new Uint8Array(3 * g), g)).toEqual([]);
  });

  it("treats a trailing partial block as a block", () => {
    const b = new Uint8Array(2500);
    b[2400] = 9;
    expect(findNonZeroRuns(b, 1024)).toEqual([[2048, 2500]]);
  });
});
